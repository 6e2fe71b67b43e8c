/**
 * Garbage collection of a repository, both formats: mark every object that any manifest
 * in the repository references (committed, damaged, being pruned, in flight, failed: all
 * of them, so nothing a backup may still need is lost): a format-1 manifest its chunk
 * objects (`chunks/<xx>/<id>`), a format-2 manifest the packs it lists (`packs/<xx>/<id>`).
 * Then sweep the objects under `chunks/` and `packs/` that no manifest references and
 * that are older than the grace period, skipping those still under Object Lock retention
 * (reported, never attempted): the default retention tells from the object's time, and
 * for the rest HEAD reads the retain-until, which lock extension (gc/extend-locks.ts) may
 * have moved past the default. A pack goes only when no manifest references any chunk in
 * it: packs are never rewritten, so chunks no manifest needs in packs that stay are only
 * reported (`reclaimableInPacks`). Damaged chunks moved to `quarantine/` are counted apart
 * (`report.quarantine`) and never deleted.
 *
 * The index (`index/`, which movers read to deduplicate and readers to find other copies
 * of a chunk) must never list a deleted pack: before a batch's packs are deleted, every
 * index object listing one of them is replaced by a new one without them (or deleted
 * when nothing is left). A pack whose index object cannot be replaced (Object Lock, a
 * refused delete) is not deleted.
 *
 * One collection of a repository runs at a time: it takes the repository's lease in the
 * catalog (gc-lease.ts, a conditional write like a backup slot) under its gcId, keeps it
 * while deferred and gives it back when it ends; another one meanwhile fails with
 * `Gc.Busy`, which the workflow retries. A dry run takes no lease (it deletes nothing).
 *
 * Safety beside running backups:
 * - Nothing is deleted while a backup runs: the sweep checks the catalog before each
 *   batch and, finding a running backup, stops and reports itself deferred; the workflow
 *   waits and collects again from a fresh mark. (Marking runs beside backups.) A backup
 *   counts as running while its run holds its policy's run lease (run-lease.ts): a record
 *   a dead run left `running` holds nothing up once the reconcile (or the lease's expiry)
 *   freed the lease.
 * - A `failed` backup's manifests are garbage: never marked (a torn one is never opened),
 *   deleted after the grace period, once the sweep ran.
 * - A running backup's new packs (and chunk objects) are younger than the grace period
 *   (set it above the longest backup, 48 h by default; the Backup workflow times out after
 *   24 h), and its manifest, written last, is marked once it exists.
 * - Before each batch of deletions the manifests written since the last look are read and
 *   what they reference is spared: a backup that reused an old unreferenced pack (found in
 *   the index) and wrote its manifest meanwhile keeps it.
 * - After the sweep, manifests written during it are checked against what was deleted;
 *   a hit is reported as a late reference naming the backup (its Verify fails, or a deep
 *   verification names it), never passed over silently.
 *
 * Then, unless the sweep was deferred, packs a manifest references that no index object
 * lists (a replication stopped between copying a pack and indexing it, and a re-run found
 * it there) are listed again from their trailers (repository/maintenance/index-map.ts `indexPacks`,
 * `report.index.reindexed`), and the index is consolidated (repository/maintenance/consolidate.ts): when more
 * than 64 small index objects are there, they are merged into objects of at most 65,536
 * entries listing only packs that still exist; each merged object is stored before the
 * objects it replaces are deleted, and only objects this run read (listed at the start)
 * are merged, never one a mover wrote since. Movers' IndexCache lists again when an
 * object it knew disappears, so it finds the merged one (`report.consolidation`).
 *
 * The phases: gc-candidates.ts (the mark, the candidates), gc-sweep.ts (the sweep, or a dry
 * run's report), gc-index.ts (re-indexing, consolidation); what they share, gc-run.ts.
 */
import type { z } from 'zod';
import type { GcReport } from '../../contracts/gc-report.ts';
import { noMarks } from '../../repository/maintenance/mark.ts';
import { liveRunningBackups } from '../backup/run-lease.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { countQuarantine, failedBackupObjects, listCandidates, markAndReadIndex } from './gc-candidates.ts';
import { maintainIndex } from './gc-index.ts';
import { catalogGcLease, holdingLease } from './gc-lease.ts';
import { gcInput } from './gc-request.ts';
import { GcRun, type GcDeps } from './gc-run.ts';
import { deleteFailedBackups, reportDryRun, sweep } from './gc-sweep.ts';

/**
 * Collects garbage holding the repository's lease (not on a dry run; see gc-lease.ts):
 * `Gc.Busy` when another collection has it.
 */
export async function collectGarbage(input: z.output<typeof gcInput>, deps: GcDeps): Promise<GcReport> {
  const lease = input.request.dryRun ? undefined : deps.lease;
  if (!lease) return collect(input, deps);
  return holdingLease(lease, input.gcId, input.request.bucket, deps.now().getTime(), () => collect(input, deps));
}

/** Mark, list the candidates, sweep (or report what a dry run would), the failed backups' manifests, the index, late references. */
async function collect(input: z.output<typeof gcInput>, deps: GcDeps): Promise<GcReport> {
  const run = await GcRun.start(input, deps);
  const { report } = run;
  await markAndReadIndex(run);
  const { candidates, unindexed } = await listCandidates(run);
  const failedObjects = await failedBackupObjects(run);
  await countQuarantine(run);

  if (report.dryRun) {
    reportDryRun(run, candidates, failedObjects, unindexed);
    run.noteFirstExpiry();
    report.seconds = run.seconds();
    return report;
  }

  const deleted = new Set<string>();
  const late = (manifest: string, key: string) => {
    if (deleted.has(key) && report.lateReferences.length < 100) report.lateReferences.push({ manifest, object: key });
  };
  await sweep(run, candidates, late, deleted);
  run.noteFirstExpiry();
  await deleteFailedBackups(run, failedObjects);
  await maintainIndex(run, unindexed, deleted);

  // Late references: manifests that appeared during the sweep and need an object it removed.
  report.manifests += await run.markNew(noMarks(), late);
  report.seconds = run.seconds();
  const status = report.deferred ? 'deferred' : report.lateReferences.length ? 'late-references' : 'succeeded';
  await deps.recovery?.putRecord('GC', input.gcId, { status, deferrals: report.deferrals, report });
  return report;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('CollectGarbage', gcInput, async (input, { context }) => {
      const { bucket, endpoint } = input.request;
      return collectGarbage(input, {
        admin: c.admin(bucket, endpoint),
        repository: await c.repository(bucket, endpoint),
        locks: c.locks(bucket, endpoint),
        recovery: c.recovery,
        running: () => liveRunningBackups(c.catalog, Date.now()),
        backupStatuses: () => c.catalog.backupStatuses(),
        now: () => new Date(),
        remainingMs: () => context.getRemainingTimeInMillis(),
        lease: catalogGcLease(c.catalog, bucket, endpoint),
      });
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
