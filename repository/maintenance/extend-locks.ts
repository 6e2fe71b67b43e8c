/**
 * Lock extension: every object a backup needs to be restored — its manifests and VM
 * configuration (`manifests/<backupId>/…`), the chunk objects or packs its manifests
 * reference (read through the mark, mark.ts), and the repository key (`keys/`) — gets an
 * Object Lock retention until at least the backup's lock target. A pack written by the
 * first full backup and referenced by every incremental since is so held as long as the
 * newest of them, not only for the bucket's default retention after it was written.
 *
 * Index objects are not extended: no restore reads them (a manifest names each chunk's
 * pack and offset), GC and re-indexing rebuild them from the packs' trailers, and a longer
 * lock would keep garbage collection from replacing them.
 *
 * Idempotent and economical: each object's retention is read first (HEAD) and
 * PutObjectRetention is sent only when it ends before the target; an object is asked once
 * per batch whatever the number of the batch's backups that share it. The mode is the
 * object's own while its retention runs (S3 refuses to weaken COMPLIANCE), else the
 * bucket's default.
 */
import { mapLimit } from '../../core/concurrency.ts';
import { StorageUnavailable } from '../../contracts/errors.ts';
import type { LockExtender, LockMode } from '../object-lock.ts';
import { markNew, noMarks, type MarkDeps } from './mark.ts';

/** A backup whose objects must stay locked until `until`. */
export interface LockTarget {
  backupId: string;
  until: Date;
}

export interface ExtendLocksDeps extends MarkDeps {
  locks: LockExtender;
  /** Retention reads and extensions in flight (default 16). */
  concurrency?: number;
}

export interface ExtendOutcome {
  /** Objects whose retention was read. */
  objects: number;
  /** … whose retention was extended (PutObjectRetention). */
  extended: number;
  /** … already locked long enough: nothing sent. */
  alreadyLocked: number;
  /** Referenced objects that do not exist (a damaged backup: deep verification names it). */
  missing: string[];
  /** Extensions the store refused or that failed, with the reason. */
  failed: { key: string; reason: string }[];
}

const MANIFEST_DIR = /^manifests\/([^/]+)\//;

/**
 * Extends the locks of the objects the `targets` backups reference (one batch: their
 * manifests are read together). `now` decides which retention still runs; `defaultMode`
 * is the mode an object without a running retention gets.
 */
export async function extendLocks(deps: ExtendLocksDeps, targets: readonly LockTarget[], defaultMode: LockMode, now: Date): Promise<ExtendOutcome> {
  const out: ExtendOutcome = { objects: 0, extended: 0, alreadyLocked: 0, missing: [], failed: [] };
  if (targets.length === 0) return out;
  const until = new Map(targets.map((t) => [t.backupId, t.until.getTime()]));
  const need = new Map<string, number>();
  const needs = (key: string, t: number) => need.set(key, Math.max(need.get(key) ?? 0, t));

  // The batch's own objects under manifests/; every other manifest is passed over by the mark.
  const others = new Set<string>();
  for await (const o of deps.admin.list('manifests/')) {
    const t = until.get(MANIFEST_DIR.exec(o.key)?.[1] ?? '');
    if (t === undefined) others.add(o.key);
    else needs(o.key, t);
  }
  await markNew(deps, others, noMarks(), (manifest, key) => needs(key, until.get(MANIFEST_DIR.exec(manifest)![1]!)!));
  const latest = Math.max(...until.values());
  for await (const o of deps.admin.list('keys/')) needs(o.key, latest);

  await mapLimit([...need], deps.concurrency ?? 16, async ([key, t]) => {
    out.objects++;
    try {
      const r = await deps.locks.retention(key);
      if (r === undefined) {
        out.missing.push(key);
        return;
      }
      if (r && r.until.getTime() >= t) {
        out.alreadyLocked++;
        return;
      }
      const mode = r && r.until.getTime() > now.getTime() ? r.mode : defaultMode;
      await deps.locks.extend(key, { mode, until: new Date(t) });
      out.extended++;
    } catch (err) {
      if (!(err instanceof StorageUnavailable)) throw err;
      out.failed.push({ key, reason: err.message });
    }
  });
  return out;
}
