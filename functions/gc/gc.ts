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
 */
import { z } from 'zod';
import { objectKeys, packIdOfKey, type RepositoryKeys } from '../../repository/format.ts';
import { GC_DEFER_MAX_SECONDS } from '../../core/gc-timing.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { QUARANTINE_PREFIX } from '../../repository/quarantine.ts';
import type { ListedObject, RepositoryAdmin } from '../../repository/admin.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { storageEndpoint } from '../../contracts/endpoints.ts';
import type { RetentionReader } from '../../repository/object-lock.ts';
import { mapLimit } from '../../core/concurrency.ts';
import { catalogGcLease, holdingLease, type GcLease } from './gc-lease.ts';
import { liveRunningBackups } from '../backup/run-lease.ts';
import { isMarked, markNew, noMarks, type Marks } from '../../repository/maintenance/mark.ts';
import { emptyReport, type GcReport } from '../../contracts/gc-report.ts';
import { CONSOLIDATION, consolidateIndex, planConsolidation, type ConsolidationSettings } from '../../repository/maintenance/consolidate.ts';
import { indexPacks, indexWithout, loadIndex, removeFromIndex, type IndexEntry } from '../../repository/maintenance/index-map.ts';
import { ChunkIdSet } from '../../repository/maintenance/chunk-id-set.ts';

const HOUR_MS = 3_600_000;
/** HEADs in flight when reading candidates' retention. */
const RETENTION_READS = 16;
/** Re-indexing reads no further pack, and consolidation starts no group of index objects, once the invocation has less time left than this. */
const INDEX_WORK_MARGIN_MS = 120_000;

export const gcRequest = z
  .object({
    /** The repository bucket to collect. */
    bucket: z.string().min(1),
    /** Its endpoint, when it is not the stack's own S3 (a DR repository on other storage). */
    endpoint: storageEndpoint.optional(),
    /** Chunks younger than this are never deleted (default 48). */
    graceHours: z.number().nonnegative().optional(),
    /** The repository's Object Lock default retention in days (objects younger are locked). */
    objectLockDays: z.number().int().positive().optional(),
    /** Report what would be deleted; delete nothing. */
    dryRun: z.boolean().optional(),
    /** Seconds the workflow waits when running backups defer the sweep (default 120; the workflow reads it). */
    deferSeconds: z.number().int().min(1).max(GC_DEFER_MAX_SECONDS).optional(),
  })
  .strict();
export const gcInput = z.object({ gcId: z.string().min(1), request: gcRequest }).strict();

interface GcDeps {
  admin: RepositoryAdmin;
  store: ObjectStore;
  keys: RepositoryKeys;
  recovery?: RecoveryCatalog;
  /** Backups running now (`vmId/backupId`); the sweep deletes only while there are none. */
  running?: () => Promise<string[]>;
  now: () => Date;
  /** Keys deleted per request and per manifest re-check. */
  batchSize?: number;
  /** When and how far index objects are merged (default CONSOLIDATION). */
  consolidation?: ConsolidationSettings;
  /** Milliseconds the invocation has left (Lambda's context); consolidation stops in time. */
  remainingMs?: () => number;
  /** The repository's GC lease (none: nothing guards against a second collection). */
  lease?: GcLease;
  /** Every backup's status in the catalog, by backup id: failed backups' manifests are garbage (repository/maintenance/mark.ts). */
  backupStatuses?: () => Promise<Map<string, string>>;
  /**
   * Object Lock retention as the store reports it (HEAD). With `objectLockDays`, every
   * candidate whose default retention has run out is asked: lock extension
   * (gc/extend-locks.ts) may have set it later.
   */
  locks?: RetentionReader;
}

/**
 * Collects garbage holding the repository's lease (not on a dry run; see gc-lease.ts):
 * `Gc.Busy` when another collection has it.
 */
export async function collectGarbage(input: z.output<typeof gcInput>, deps: GcDeps): Promise<GcReport> {
  const lease = input.request.dryRun ? undefined : deps.lease;
  if (!lease) return collect(input, deps);
  return holdingLease(lease, input.gcId, input.request.bucket, deps.now().getTime(), () => collect(input, deps));
}

async function collect({ gcId, request }: z.output<typeof gcInput>, deps: GcDeps): Promise<GcReport> {
  const started = deps.now();
  const graceHours = request.graceHours ?? 48;
  const report = emptyReport(gcId, request.bucket, request.dryRun === true, started, graceHours);
  const previous = await deps.recovery?.getRecord('GC', gcId);
  report.deferrals = (previous?.deferrals as number | undefined) ?? 0;
  const countsOf = (key: string) => (key.startsWith('packs/') ? report.packs : report.chunks);
  const statuses = (await deps.backupStatuses?.()) ?? new Map<string, string>();
  const markDeps = { ...deps, backupStatus: (id: string) => statuses.get(id) };
  const notes = { unreadable: report.unreadableManifests };

  // Mark.
  const seen = new Set<string>();
  const marks: Marks = { ...noMarks(), packedChunks: new ChunkIdSet() };
  report.manifests = await markNew(markDeps, seen, marks, undefined, notes);
  const packedChunks = marks.packedChunks!;
  delete marks.packedChunks; // only the statistic below needs them

  // The index, after the mark: a pack a manifest names was indexed before the manifest was written.
  const { index, reclaimable } = await loadIndex(deps, marks.packs, packedChunks);
  report.index.objects = index.objects.size;
  report.reclaimableInPacks = reclaimable;
  packedChunks.clear();

  // Candidates: unreferenced, older than the grace period, not locked (nor, for a pack, listed by a locked index object).
  const graceEdge = started.getTime() - graceHours * HOUR_MS;
  const lockedUntil = (lastModified: Date) => (request.objectLockDays ? lastModified.getTime() + request.objectLockDays * 24 * HOUR_MS : -Infinity);
  /** Index objects this run wrote, under retention from now on when the repository locks objects. */
  const lockedIndexes = new Set<string>();
  /** Index objects this run wrote (never merged by the same run: an entry moves once a run). */
  const writtenIndexes = new Set<string>();
  const wrote = (ids: readonly string[]) => {
    for (const id of ids) {
      writtenIndexes.add(id);
      if (request.objectLockDays) lockedIndexes.add(id);
    }
  };
  /** Packs an index object lists that are stored (listed under `packs/` after the index was read). */
  const storedPacks = new Set<string>();
  let firstExpiry = Infinity;
  const lock = (o: ListedObject, until: number) => {
    report.locked.count++;
    report.locked.bytes += o.size;
    firstExpiry = Math.min(firstExpiry, until);
    if (report.locked.sample.length < 10) report.locked.sample.push(o.key);
  };
  /** When an index object listing this pack is under retention: until when (it cannot be replaced before). */
  const indexLock = (packId: string): number | undefined => {
    let until: number | undefined;
    for (const e of index.listing(packId)) {
      const t = lockedIndexes.has(e.indexId) ? started.getTime() + request.objectLockDays! * 24 * HOUR_MS : lockedUntil(e.lastModified);
      if (t > started.getTime()) until = Math.max(until ?? t, t);
    }
    return until;
  };
  let candidates: ListedObject[] = [];
  /** Packs a manifest references that no index object lists. */
  const unindexed: ListedObject[] = [];
  for (const prefix of ['chunks/', 'packs/']) {
    for await (const o of deps.admin.list(prefix)) {
      const c = countsOf(o.key);
      c.total++;
      const pack = packIdOfKey(o.key);
      const indexed = pack !== undefined && index.byPack.has(pack); // nothing is taken out of the index before the sweep
      if (indexed) storedPacks.add(pack);
      if (isMarked(marks, o.key)) {
        c.referenced++;
        if (pack !== undefined && !indexed) unindexed.push(o);
        continue;
      }
      if (o.lastModified.getTime() > graceEdge) {
        c.protectedByGrace++;
        continue;
      }
      const until = Math.max(lockedUntil(o.lastModified), indexLock(packIdOfKey(o.key) ?? '') ?? -Infinity);
      if (until > started.getTime()) {
        lock(o, until);
        continue;
      }
      candidates.push(o);
    }
  }
  // A retention extended past the default (gc/extend-locks.ts) shows only in the object's own retain-until: never try to delete before it.
  const unlocked = async (objects: ListedObject[]): Promise<ListedObject[]> => {
    const locks = deps.locks;
    if (!request.objectLockDays || !locks || objects.length === 0) return objects;
    const retained = await mapLimit(objects, RETENTION_READS, (o) => locks.retention(o.key));
    return objects.filter((o, i) => {
      const until = retained[i]?.until.getTime() ?? -Infinity;
      if (until <= started.getTime()) return true;
      lock(o, until);
      return false;
    });
  };
  candidates = await unlocked(candidates);
  // Packs listed by one index object next to each other: each index object is rewritten once, not once per batch.
  const firstIndex = (o: ListedObject) =>
    index
      .listing(packIdOfKey(o.key) ?? '')
      .map((e) => e.indexId)
      .sort()[0] ?? '';
  const order = new Map(candidates.map((o) => [o.key, firstIndex(o)]));
  candidates.sort((a, b) => {
    const x = order.get(a.key)!;
    const y = order.get(b.key)!;
    return x < y ? -1 : x > y ? 1 : a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
  });
  const failedObjects = await unlocked(
    (await failedBackupObjects(deps.admin, statuses, graceEdge, report)).filter((o) => {
      const until = lockedUntil(o.lastModified);
      if (until <= started.getTime()) return true;
      lock(o, until);
      return false;
    }),
  );
  for await (const o of deps.admin.list(QUARANTINE_PREFIX)) {
    report.quarantine.objects++;
    report.quarantine.bytes += o.size;
  }

  /** An index object consolidation may merge: read by this run (not written by it), not under retention. */
  const mergeable = (e: IndexEntry) => !writtenIndexes.has(e.indexId) && lockedUntil(e.lastModified) <= started.getTime();
  const settings = deps.consolidation ?? CONSOLIDATION;

  if (report.dryRun) {
    const going = new Set(candidates.map((o) => packIdOfKey(o.key)).filter((p) => p !== undefined));
    // The index as the sweep would leave it, for what consolidation would do.
    const { after, rewritten, dropped } = indexWithout(index, going, started);
    report.index.rewritten = rewritten.length;
    report.index.dropped = dropped;
    for (const id of rewritten) writtenIndexes.add(id);
    const plan = planConsolidation(after, settings, mergeable, (p) => storedPacks.has(p) && !going.has(p));
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
    for (const o of candidates) countsOf(o.key).deleted++;
    report.failedBackups.deleted = failedObjects.length;
    report.bytesFreed = candidates.reduce((n, o) => n + o.size, 0);
    report.index.reindexed = unindexed.length;
    if (firstExpiry !== Infinity) report.locked.firstExpiry = new Date(firstExpiry).toISOString();
    report.seconds = (deps.now().getTime() - started.getTime()) / 1000;
    return report;
  }

  const unindex = async (packs: Set<string>): Promise<Set<string>> => {
    const out = await removeFromIndex(deps, index, packs);
    report.index.rewritten += out.rewritten;
    report.index.dropped += out.dropped;
    report.failed.push(...out.failed);
    wrote(out.written);
    return out.kept;
  };

  // Sweep, in batches; each batch first spares what manifests written meanwhile reference,
  // then takes its packs out of the index, then deletes. A manifest read from the second
  // batch on may already need an object an earlier batch deleted: a late reference.
  const deleted = new Set<string>();
  const late = (manifest: string, key: string) => {
    if (deleted.has(key) && report.lateReferences.length < 100) report.lateReferences.push({ manifest, object: key });
  };
  const batchSize = deps.batchSize ?? 1000;
  for (let i = 0; i < candidates.length; i += batchSize) {
    const busy = (await deps.running?.()) ?? [];
    if (busy.length > 0) {
      report.deferred = { backups: busy.slice(0, 20) };
      report.deferrals++;
      break;
    }
    report.manifests += await markNew(markDeps, seen, marks, late, notes);
    let batch = candidates.slice(i, i + batchSize).filter((o) => {
      if (!isMarked(marks, o.key)) return true;
      countsOf(o.key).spared++;
      return false;
    });
    // An index object this run rewrote earlier is under retention now (Object Lock): its packs wait.
    batch = batch.filter((o) => {
      const until = indexLock(packIdOfKey(o.key) ?? '');
      if (until === undefined) return true;
      lock(o, until);
      return false;
    });
    const packs = new Set(batch.map((o) => packIdOfKey(o.key)).filter((p) => p !== undefined));
    if (packs.size > 0) {
      const kept = await unindex(packs);
      if (kept.size > 0) batch = batch.filter((o) => !kept.has(packIdOfKey(o.key) ?? ''));
    }
    if (batch.length === 0) continue;
    const out = await deps.admin.delete(batch.map((o) => o.key));
    const sizes = new Map(batch.map((o) => [o.key, o.size]));
    for (const k of out.deleted) {
      deleted.add(k);
      countsOf(k).deleted++;
      report.bytesFreed += sizes.get(k) ?? 0;
    }
    report.failed.push(...out.failed);
  }
  if (firstExpiry !== Infinity) report.locked.firstExpiry = new Date(firstExpiry).toISOString();
  // Failed backups' manifests go once the sweep ran: its packs, not marked for them, went first.
  if (!report.deferred && failedObjects.length > 0) {
    const out = await deps.admin.delete(failedObjects.map((o) => o.key));
    report.failedBackups.deleted = out.deleted.length;
    report.failed.push(...out.failed);
  }

  // Referenced packs no index object lists are listed again (from their trailers), then
  // consolidation: many small index objects merged into few, each merged object stored before its sources go.
  const inTime = () => (deps.remainingMs?.() ?? Infinity) > INDEX_WORK_MARGIN_MS;
  if (!report.deferred && unindexed.length > 0) {
    const out = await indexPacks(deps, index, unindexed, inTime);
    report.index.reindexed = out.indexed;
    report.failed.push(...out.failed);
    wrote(out.written);
  }
  report.consolidation.objectsBefore = report.consolidation.objectsAfter = index.objects.size;
  if (!report.deferred) {
    const plan = planConsolidation(index, settings, mergeable, (p) => storedPacks.has(p) && !deleted.has(objectKeys.pack(p)));
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

  // Late references: manifests that appeared during the sweep and need an object it removed.
  report.manifests += await markNew(markDeps, seen, noMarks(), late, notes);
  report.seconds = (deps.now().getTime() - started.getTime()) / 1000;
  const status = report.deferred ? 'deferred' : report.lateReferences.length ? 'late-references' : 'succeeded';
  await deps.recovery?.putRecord('GC', gcId, { status, deferrals: report.deferrals, report });
  return report;
}

/** The objects under `manifests/<backupId>/` of backups recorded `failed`, older than the grace period (the rest are counted as protected). */
async function failedBackupObjects(admin: RepositoryAdmin, statuses: Map<string, string>, graceEdge: number, report: GcReport): Promise<ListedObject[]> {
  const out: ListedObject[] = [];
  for await (const o of admin.list('manifests/')) {
    const backupId = /^manifests\/([^/]+)\//.exec(o.key)?.[1];
    if (!backupId || statuses.get(backupId) !== 'failed') continue;
    report.failedBackups.objects++;
    if (o.lastModified.getTime() > graceEdge) report.failedBackups.protectedByGrace++;
    else out.push(o);
  }
  return out;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('CollectGarbage', gcInput, async (input, { context }) => {
      const { bucket, endpoint } = input.request;
      return collectGarbage(input, {
        admin: c.admin(bucket, endpoint),
        store: c.store(bucket, endpoint),
        keys: await c.repositoryKeys(bucket, endpoint),
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
