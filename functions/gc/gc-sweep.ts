/**
 * The sweep, in batches, only while no backup runs: each batch first spares what manifests
 * written meanwhile reference, then takes its packs out of the index, then deletes. Then
 * the failed backups' manifests. A dry run reports what the sweep would do instead.
 */
import type { ListedObject } from '../../repository/admin.ts';
import { packIdOfKey } from '../../repository/format.ts';
import { planConsolidation } from '../../repository/maintenance/consolidate.ts';
import { indexWithout, removeFromIndex } from '../../repository/maintenance/index-map.ts';
import { isMarked } from '../../repository/maintenance/mark.ts';
import type { GcRun } from './gc-run.ts';
import { consolidationSettings } from './gc-index.ts';

/**
 * Deletes the candidates, batch by batch; stops, deferred, when a backup runs. A manifest
 * read from the second batch on may already need an object an earlier batch deleted: a
 * late reference (`late`). Adds the keys deleted to `deleted`.
 */
export async function sweep(run: GcRun, candidates: ListedObject[], late: (manifest: string, key: string) => void, deleted: Set<string>): Promise<void> {
  const { deps, report, marks } = run;
  const batchSize = deps.batchSize ?? 1000;
  for (let i = 0; i < candidates.length; i += batchSize) {
    const busy = (await deps.running?.()) ?? [];
    if (busy.length > 0) {
      report.deferred = { backups: busy.slice(0, 20) };
      report.deferrals++;
      break;
    }
    report.manifests += await run.markNew(marks, late);
    let batch = candidates.slice(i, i + batchSize).filter((o) => {
      if (!isMarked(marks, o.key)) return true;
      run.countsOf(o.key).spared++;
      return false;
    });
    // An index object this run rewrote earlier is under retention now (Object Lock): its packs wait.
    batch = batch.filter((o) => {
      const until = run.indexLock(packIdOfKey(o.key) ?? '');
      if (until === undefined) return true;
      run.lock(o, until);
      return false;
    });
    const packs = new Set(batch.map((o) => packIdOfKey(o.key)).filter((p) => p !== undefined));
    if (packs.size > 0) {
      const kept = await unindex(run, packs);
      if (kept.size > 0) batch = batch.filter((o) => !kept.has(packIdOfKey(o.key) ?? ''));
    }
    if (batch.length === 0) continue;
    const out = await deps.admin.delete(batch.map((o) => o.key));
    const sizes = new Map(batch.map((o) => [o.key, o.size]));
    for (const k of out.deleted) {
      deleted.add(k);
      run.countsOf(k).deleted++;
      report.bytesFreed += sizes.get(k) ?? 0;
    }
    report.failed.push(...out.failed);
  }
}

/** Takes the packs out of every index object listing them; returns those that must stay (an index object could not be replaced). */
async function unindex(run: GcRun, packs: Set<string>): Promise<Set<string>> {
  const out = await removeFromIndex(run.deps, run.index, packs);
  run.report.index.rewritten += out.rewritten;
  run.report.index.dropped += out.dropped;
  run.report.failed.push(...out.failed);
  run.wrote(out.written);
  return out.kept;
}

/** Failed backups' manifests go once the sweep ran: its packs, not marked for them, went first. */
export async function deleteFailedBackups(run: GcRun, failedObjects: ListedObject[]): Promise<void> {
  if (run.report.deferred || failedObjects.length === 0) return;
  const out = await run.deps.admin.delete(failedObjects.map((o) => o.key));
  run.report.failedBackups.deleted = out.deleted.length;
  run.report.failed.push(...out.failed);
}

/** A dry run: what the sweep, the re-indexing and consolidation would do, in the report; nothing is deleted or written. */
export function reportDryRun(run: GcRun, candidates: ListedObject[], failedObjects: ListedObject[], unindexed: ListedObject[]): void {
  const { report } = run;
  const going = new Set(candidates.map((o) => packIdOfKey(o.key)).filter((p) => p !== undefined));
  // The index as the sweep would leave it, for what consolidation would do.
  const { after, rewritten, dropped } = indexWithout(run.index, going, run.started);
  report.index.rewritten = rewritten.length;
  report.index.dropped = dropped;
  for (const id of rewritten) run.writtenIndexes.add(id);
  const plan = planConsolidation(
    after,
    consolidationSettings(run),
    (e) => run.mergeable(e),
    (p) => run.storedPacks.has(p) && !going.has(p),
  );
  const merged = plan.groups.reduce((n, g) => n + g.sources.length, 0);
  const written = plan.groups.filter((g) => g.packs.size > 0).length;
  report.consolidation = {
    objectsBefore: after.objects.size,
    objectsAfter: after.objects.size - merged + written,
    candidates: plan.candidates,
    merged,
    written,
    entries: plan.groups.reduce((n, g) => n + g.entries, 0),
    entriesDropped: plan.groups.reduce((n, g) => n + g.dropped, 0),
    stopped: null,
  };
  for (const o of candidates) run.countsOf(o.key).deleted++;
  report.failedBackups.deleted = failedObjects.length;
  report.bytesFreed = candidates.reduce((n, o) => n + o.size, 0);
  report.index.reindexed = unindexed.length;
}
