/**
 * Garbage collection of a repository: mark every chunk that any manifest in the
 * repository references (committed, damaged, being pruned, in flight, failed: all of
 * them, so nothing a backup may still need is lost), then sweep chunks that no manifest
 * references and that are older than the grace period, skipping those still under Object
 * Lock retention (reported, never attempted). Only `chunks/` is ever swept: damaged chunks
 * moved to `quarantine/` are counted apart (`report.quarantine`) and never deleted.
 *
 * Safety beside running backups:
 * - Nothing is deleted while a backup runs: the sweep checks the catalog before each
 *   batch and, finding a running backup, stops and reports itself deferred; the workflow
 *   waits and collects again from a fresh mark. (Marking runs beside backups.)
 * - A running backup's new chunks are younger than the grace period (set it above the
 *   longest backup, 48 h by default; the Backup workflow times out after 24 h), and its
 *   manifest, written last, is marked once it exists.
 * - Before each batch of deletions the manifests written since the last look are read and
 *   their chunks spared: a backup that reused an old unreferenced chunk (found by HEAD)
 *   and wrote its manifest meanwhile keeps it.
 * - After the sweep, manifests written during it are checked against what was deleted;
 *   a hit is reported as a late reference naming the backup (its Verify fails, or a deep
 *   verification names it), never passed over silently.
 */
import { z } from 'zod';
import { Corrupt } from '../core/errors.ts';
import { decodeManifest, type RepositoryKeys } from '../core/format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { QUARANTINE_PREFIX } from '../core/quarantine.ts';
import type { ListedObject, RepositoryAdmin } from '../core/repository-admin.ts';
import type { RecoveryCatalog } from './catalog/recovery-catalog.ts';
import { clients } from './commons/clients.ts';
import { lambdaHandler } from './commons/lambda.ts';
import { storageEndpoint } from './commons/schemas.ts';

const HOUR_MS = 3_600_000;
/** A `running` backup record older than the Backup workflow's timeout (24 h) belongs to a dead execution. */
const RUNNING_FRESH_MS = 25 * HOUR_MS;

export const gcRequest = z.object({
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
  deferSeconds: z.number().int().min(1).max(3600).optional(),
}).strict();
export const gcInput = z.object({ gcId: z.string().min(1), request: gcRequest }).strict();

export interface GcReport {
  gcId: string;
  bucket: string;
  dryRun: boolean;
  startedAt: string;
  graceHours: number;
  manifests: number;
  chunks: { total: number; referenced: number; protectedByGrace: number; deleted: number; spared: number };
  /** Stored bytes of the chunks deleted (or that a dry run would delete). */
  bytesFreed: number;
  /**
   * Damaged chunk objects kept under `quarantine/` for forensics (QuarantineDamage). Never
   * swept and not part of `chunks`: a quarantined chunk is no longer under `chunks/`, and
   * its re-uploaded copy there is referenced like any chunk. Delete them by hand (or by a
   * lifecycle rule on the prefix) once examined.
   */
  quarantine: { objects: number; bytes: number };
  /** Unreferenced chunks still under Object Lock retention: not attempted. */
  locked: { count: number; bytes: number; firstExpiry: string | null; sample: string[] };
  /** Deletions the store refused (permissions, a lock this run did not know of). */
  failed: { key: string; reason: string }[];
  /** Manifests written during the sweep that reference a deleted chunk (should stay empty). */
  lateReferences: { manifest: string; chunk: string }[];
  /** Set when the sweep stopped (or never began) because backups were running. */
  deferred: { backups: string[] } | null;
  /** Times this collection was deferred before it ran (from its catalog record). */
  deferrals: number;
  seconds: number;
}

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
}

const MANIFEST = /^manifests\/([^/]+)\/(.+)\.manifest$/;

/** Reads the manifests not seen yet; adds their chunk ids to `marked`. */
async function markNew(deps: GcDeps, seen: Set<string>, marked: Set<string>, onChunk?: (manifest: string, id: string) => void): Promise<number> {
  let added = 0;
  const fresh: ListedObject[] = [];
  for await (const o of deps.admin.list('manifests/')) if (MANIFEST.test(o.key) && !seen.has(o.key)) fresh.push(o);
  for (const o of fresh) {
    const [, backupId, diskId] = MANIFEST.exec(o.key)!;
    const sealed = await deps.store.get(o.key);
    if (!sealed) continue; // pruned between list and get
    let ids: (string | null)[];
    try {
      ids = (await decodeManifest(deps.keys, sealed, backupId!, diskId!)).chunks;
    } catch (err) {
      throw new Corrupt(`garbage collection stopped: manifest ${o.key} does not open, so the chunks it needs are unknown; deep-verify backup ${backupId} and prune it or repair the manifest first (${(err as Error).message})`, err);
    }
    for (const id of ids) {
      if (id === null) continue;
      onChunk?.(o.key, id);
      marked.add(id);
    }
    seen.add(o.key);
    added++;
  }
  return added;
}

export async function collectGarbage({ gcId, request }: z.output<typeof gcInput>, deps: GcDeps): Promise<GcReport> {
  const started = deps.now();
  const graceHours = request.graceHours ?? 48;
  const report: GcReport = {
    gcId, bucket: request.bucket, dryRun: request.dryRun === true, startedAt: started.toISOString(), graceHours, manifests: 0,
    chunks: { total: 0, referenced: 0, protectedByGrace: 0, deleted: 0, spared: 0 }, bytesFreed: 0, quarantine: { objects: 0, bytes: 0 },
    locked: { count: 0, bytes: 0, firstExpiry: null, sample: [] }, failed: [], lateReferences: [], deferred: null, deferrals: 0, seconds: 0,
  };
  const previous = await deps.recovery?.getRecord('GC', gcId);
  report.deferrals = (previous?.deferrals as number | undefined) ?? 0;

  // Mark.
  const seen = new Set<string>();
  const marked = new Set<string>();
  report.manifests = await markNew(deps, seen, marked);

  // Candidates: unreferenced, older than the grace period, not locked.
  const graceEdge = started.getTime() - graceHours * HOUR_MS;
  const candidates: ListedObject[] = [];
  let firstExpiry = Infinity;
  for await (const o of deps.admin.list('chunks/')) {
    report.chunks.total++;
    const id = o.key.slice(o.key.lastIndexOf('/') + 1);
    if (marked.has(id)) {
      report.chunks.referenced++;
      continue;
    }
    if (o.lastModified.getTime() > graceEdge) {
      report.chunks.protectedByGrace++;
      continue;
    }
    if (request.objectLockDays) {
      const until = o.lastModified.getTime() + request.objectLockDays * 24 * HOUR_MS;
      if (until > started.getTime()) {
        report.locked.count++;
        report.locked.bytes += o.size;
        firstExpiry = Math.min(firstExpiry, until);
        if (report.locked.sample.length < 10) report.locked.sample.push(o.key);
        continue;
      }
    }
    candidates.push(o);
  }
  if (firstExpiry !== Infinity) report.locked.firstExpiry = new Date(firstExpiry).toISOString();
  for await (const o of deps.admin.list(QUARANTINE_PREFIX)) {
    report.quarantine.objects++;
    report.quarantine.bytes += o.size;
  }

  if (report.dryRun) {
    report.chunks.deleted = candidates.length;
    report.bytesFreed = candidates.reduce((n, o) => n + o.size, 0);
    report.seconds = (deps.now().getTime() - started.getTime()) / 1000;
    return report;
  }

  // Sweep, in batches; each batch first spares chunks that manifests written meanwhile reference.
  const deleted = new Set<string>();
  const batchSize = deps.batchSize ?? 1000;
  for (let i = 0; i < candidates.length; i += batchSize) {
    const busy = (await deps.running?.()) ?? [];
    if (busy.length > 0) {
      report.deferred = { backups: busy.slice(0, 20) };
      report.deferrals++;
      break;
    }
    report.manifests += await markNew(deps, seen, marked);
    const batch = candidates.slice(i, i + batchSize).filter((o) => {
      const spare = marked.has(o.key.slice(o.key.lastIndexOf('/') + 1));
      if (spare) report.chunks.spared++;
      return !spare;
    });
    if (batch.length === 0) continue;
    const out = await deps.admin.delete(batch.map((o) => o.key));
    const sizes = new Map(batch.map((o) => [o.key, o.size]));
    for (const k of out.deleted) {
      deleted.add(k.slice(k.lastIndexOf('/') + 1));
      report.bytesFreed += sizes.get(k) ?? 0;
    }
    report.chunks.deleted += out.deleted.length;
    report.failed.push(...out.failed);
  }

  // Late references: manifests that appeared during the sweep and need a chunk it removed.
  report.manifests += await markNew(deps, seen, new Set(), (manifest, id) => {
    if (deleted.has(id) && report.lateReferences.length < 100) report.lateReferences.push({ manifest, chunk: `chunks/${id.slice(0, 2)}/${id}` });
  });
  report.seconds = (deps.now().getTime() - started.getTime()) / 1000;
  const status = report.deferred ? 'deferred' : report.lateReferences.length ? 'late-references' : 'succeeded';
  await deps.recovery?.putRecord('GC', gcId, { status, deferrals: report.deferrals, report });
  return report;
}

export const handler = lambdaHandler('CollectGarbage', gcInput, async (input) => {
  const c = clients();
  const { bucket, endpoint } = input.request;
  return collectGarbage(input, {
    admin: c.admin(bucket, endpoint), store: c.store(bucket, endpoint), keys: await c.repositoryKeys(bucket, endpoint),
    recovery: c.recovery, running: () => c.recovery.runningBackups(new Date(Date.now() - RUNNING_FRESH_MS)), now: () => new Date(),
  });
});
