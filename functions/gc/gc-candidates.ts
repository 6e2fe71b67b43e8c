/**
 * The mark and what it leaves to sweep: every object a manifest references is marked, the
 * index is read, and the objects under `chunks/` and `packs/` that are unreferenced, older
 * than the grace period and not under retention become candidates, ordered so that each
 * index object is rewritten once. Also the failed backups' manifests, and the quarantine
 * counted (never deleted).
 */
import { mapLimit } from '../../core/concurrency.ts';
import type { ListedObject } from '../../repository/admin.ts';
import { packIdOfKey } from '../../repository/format.ts';
import { ChunkIdSet } from '../../repository/maintenance/chunk-id-set.ts';
import { loadIndex } from '../../repository/maintenance/index-map.ts';
import { isMarked } from '../../repository/maintenance/mark.ts';
import { QUARANTINE_PREFIX } from '../../repository/quarantine.ts';
import type { GcRun } from './gc-run.ts';

/** HEADs in flight when reading candidates' retention. */
const RETENTION_READS = 16;

/** Marks what every manifest references, then reads the index (a pack a manifest names was indexed before the manifest was written). */
export async function markAndReadIndex(run: GcRun): Promise<void> {
  const { report, marks } = run;
  const packedChunks = new ChunkIdSet();
  marks.packedChunks = packedChunks;
  report.manifests = await run.markNew(marks);
  delete marks.packedChunks; // only the statistic below needs them
  const { index, reclaimable } = await loadIndex(run.deps, marks.packs, packedChunks);
  run.index = index;
  report.index.objects = index.objects.size;
  report.reclaimableInPacks = reclaimable;
  packedChunks.clear();
}

/**
 * Candidates: unreferenced, older than the grace period, not locked (nor, for a pack, listed
 * by a locked index object). Also the packs a manifest references that no index object lists.
 */
export async function listCandidates(run: GcRun): Promise<{ candidates: ListedObject[]; unindexed: ListedObject[] }> {
  const { index, marks } = run;
  const now = run.started.getTime();
  const candidates: ListedObject[] = [];
  const unindexed: ListedObject[] = [];
  for (const prefix of ['chunks/', 'packs/']) {
    for await (const o of run.deps.admin.list(prefix)) {
      const c = run.countsOf(o.key);
      c.total++;
      const pack = packIdOfKey(o.key);
      const indexed = pack !== undefined && index.byPack.has(pack); // nothing is taken out of the index before the sweep
      if (indexed) run.storedPacks.add(pack);
      if (isMarked(marks, o.key)) {
        c.referenced++;
        if (pack !== undefined && !indexed) unindexed.push(o);
        continue;
      }
      if (o.lastModified.getTime() > run.graceEdge) {
        c.protectedByGrace++;
        continue;
      }
      const until = Math.max(run.lockedUntil(o.lastModified), run.indexLock(packIdOfKey(o.key) ?? '') ?? -Infinity);
      if (until > now) {
        run.lock(o, until);
        continue;
      }
      candidates.push(o);
    }
  }
  return { candidates: byIndexObject(run, await unlocked(run, candidates)), unindexed };
}

/** A retention extended past the default (gc/extend-locks.ts) shows only in the object's own retain-until: never try to delete before it. */
export async function unlocked(run: GcRun, objects: ListedObject[]): Promise<ListedObject[]> {
  const locks = run.deps.locks;
  if (!run.request.objectLockDays || !locks || objects.length === 0) return objects;
  const retained = await mapLimit(objects, RETENTION_READS, (o) => locks.retention(o.key));
  return objects.filter((o, i) => {
    const until = retained[i]?.until.getTime() ?? -Infinity;
    if (until <= run.started.getTime()) return true;
    run.lock(o, until);
    return false;
  });
}

/** Packs listed by one index object next to each other: each index object is rewritten once, not once per batch. */
function byIndexObject(run: GcRun, candidates: ListedObject[]): ListedObject[] {
  const firstIndex = (o: ListedObject) =>
    run.index
      .listing(packIdOfKey(o.key) ?? '')
      .map((e) => e.indexId)
      .sort()[0] ?? '';
  const order = new Map(candidates.map((o) => [o.key, firstIndex(o)]));
  return candidates.sort((a, b) => {
    const x = order.get(a.key)!;
    const y = order.get(b.key)!;
    return x < y ? -1 : x > y ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
  });
}

/**
 * The objects under `manifests/<backupId>/` of backups recorded `failed`, older than the
 * grace period (the rest are counted as protected) and not under retention.
 */
export async function failedBackupObjects(run: GcRun): Promise<ListedObject[]> {
  const { report } = run;
  const out: ListedObject[] = [];
  for await (const o of run.deps.admin.list('manifests/')) {
    const backupId = /^manifests\/([^/]+)\//.exec(o.key)?.[1];
    if (!backupId || run.statuses.get(backupId) !== 'failed') continue;
    report.failedBackups.objects++;
    if (o.lastModified.getTime() > run.graceEdge) report.failedBackups.protectedByGrace++;
    else out.push(o);
  }
  return unlocked(
    run,
    out.filter((o) => {
      const until = run.lockedUntil(o.lastModified);
      if (until <= run.started.getTime()) return true;
      run.lock(o, until);
      return false;
    }),
  );
}

/** Counts the damaged chunks moved to `quarantine/` (never deleted). */
export async function countQuarantine(run: GcRun): Promise<void> {
  for await (const o of run.deps.admin.list(QUARANTINE_PREFIX)) {
    run.report.quarantine.objects++;
    run.report.quarantine.bytes += o.size;
  }
}
