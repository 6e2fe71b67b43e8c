/**
 * The index after the sweep: referenced packs no index object lists are listed again
 * (from their trailers), then consolidation merges many small index objects into few,
 * each merged object stored before its sources go. Both stop in time for the invocation.
 */
import type { ListedObject } from '../../repository/admin.ts';
import { objectKeys } from '../../repository/format.ts';
import { CONSOLIDATION, consolidateIndex, planConsolidation, type ConsolidationSettings } from '../../repository/maintenance/consolidate.ts';
import { indexPacks } from '../../repository/maintenance/index-map.ts';
import type { GcRun } from './gc-run.ts';

/** Re-indexing reads no further pack, and consolidation starts no group of index objects, once the invocation has less time left than this. */
const INDEX_WORK_MARGIN_MS = 120_000;

export const consolidationSettings = (run: GcRun): ConsolidationSettings => run.deps.consolidation ?? CONSOLIDATION;

/** Re-indexes the unindexed packs and consolidates the index, unless the sweep was deferred; `deleted` are the keys the sweep deleted. */
export async function maintainIndex(run: GcRun, unindexed: ListedObject[], deleted: ReadonlySet<string>): Promise<void> {
  const { deps, report, index } = run;
  const inTime = () => (deps.remainingMs?.() ?? Infinity) > INDEX_WORK_MARGIN_MS;
  if (!report.deferred && unindexed.length > 0) {
    const out = await indexPacks(deps, index, unindexed, inTime);
    report.index.reindexed = out.indexed;
    report.failed.push(...out.failed);
    run.wrote(out.written);
  }
  report.consolidation.objectsBefore = report.consolidation.objectsAfter = index.objects.size;
  if (report.deferred) return;
  const plan = planConsolidation(
    index,
    consolidationSettings(run),
    (e) => run.mergeable(e),
    (p) => run.storedPacks.has(p) && !deleted.has(objectKeys.pack(p)),
  );
  report.consolidation.candidates = plan.candidates;
  const out = await consolidateIndex(deps, index, plan, inTime);
  Object.assign(report.consolidation, {
    objectsAfter: index.objects.size,
    merged: out.merged,
    written: out.written,
    entries: out.entries,
    entriesDropped: out.dropped,
    stopped: out.stopped,
  });
  report.failed.push(...out.failed);
}
