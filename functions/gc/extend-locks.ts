/**
 * ExtendLocks, the first step of the Garbage collection workflow (before CollectGarbage):
 * with Object Lock on the repository's bucket, every object a retained backup references
 * is locked until at least that backup's lock target (repository/maintenance/extend-locks.ts
 * walks the manifests and sends PutObjectRetention only where the retention ends sooner).
 * The only function granted s3:PutObjectRetention (cdk/lib/function-access.ts).
 *
 * A backup's lock target is the later of its own Object Lock period (the bucket's default
 * retention, counted from when the backup was taken: every object it needs is as immutable
 * as the ones it wrote) and its expiry under its policy's retention (functions/prune/
 * expiry.ts). A backup still retained past that (the policy stopped taking backups, or sets
 * no retention rule) is locked for the default period from now, plus a week, so the next
 * runs of a week have nothing to send for it.
 *
 * Retained: `committed` or `damaged` in the catalog (a `pruning` backup is going; a
 * `running` one's new objects get the default retention as they are written, and its
 * targets are set by the first run after it commits). Backups whose manifests are in the
 * bucket but not in the catalog are counted, not extended.
 *
 * What was done is recorded per backup (functions/catalog/lock-catalog.ts), so a run skips
 * the backups whose objects already reach their target: idempotent, and a re-run after a
 * stop goes on where it stopped. It works in batches of backups, each recorded once all its
 * objects hold; with too little time left it stops and says `more`, and the workflow calls
 * it again. Extensions that failed fail the function (`Gc.LocksNotExtended`, naming the
 * first), after the other batches: the collection then deletes nothing.
 */
import { z } from 'zod';
import { locationKey, repositoryLocation } from '../../contracts/endpoints.ts';
import { LocksNotExtended } from '../../contracts/recovery-errors.ts';
import type { RepositoryAdmin } from '../../repository/admin.ts';
import type { Repository } from '../../repository/open.ts';
import type { BucketLock, LockExtender } from '../../repository/object-lock.ts';
import { extendLocks, type LockTarget } from '../../repository/maintenance/extend-locks.ts';
import type { Backup, Catalog, Policy } from '../catalog/catalog.ts';
import type { LockCatalog } from '../catalog/lock-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { retentionHorizonMs } from '../prune/expiry.ts';

const DAY_MS = 86_400_000;
/** How far past the default period a backup with no expiry in sight is locked: a week's runs then have nothing to send. */
const GENERATION_MS = 7 * DAY_MS;
/** No batch is started with less time left than this. */
const TIME_MARGIN_MS = 60_000;
const LISTED = 100;

/** ExtendLocks' input: the Gc workflow's (its repository; the rest of the request is not read). */
export const extendLocksInput = z.object({ gcId: z.string().min(1), request: repositoryLocation }).strict();

export interface LockReport {
  gcId: string;
  bucket: string;
  /** The bucket's Object Lock (null: none, and nothing was done). */
  objectLock: BucketLock;
  backups: {
    /** Retained backups with manifests in this repository. */
    retained: number;
    /** … whose objects were already locked until their target (recorded): not read again. */
    alreadyLocked: number;
    /** … whose objects were read and extended where needed in this run. */
    done: number;
    /** … left for the next call (`more`). */
    left: number;
    /** … with no expiry in sight, locked for the default period from now. */
    unbounded: number;
    /** Backups with manifests in the repository that the catalog does not hold as retained (being pruned, failed, unknown). */
    notRetained: number;
  };
  objects: { read: number; extended: number; alreadyLocked: number };
  /** Referenced objects that do not exist (first 100). */
  missing: string[];
  /** Extensions that failed, with the reason (first 100): the function then fails with Gc.LocksNotExtended. */
  failed: { key: string; reason: string }[];
  /** Stopped for time: call again. */
  more: boolean;
  seconds: number;
}

export interface ExtendLocksDeps {
  catalog: Pick<Catalog, 'listPolicies' | 'backupsWithStatus'>;
  records: Pick<LockCatalog, 'lockedUntil' | 'record' | 'forget'>;
  admin: RepositoryAdmin;
  repository: Repository;
  locks: LockExtender;
  now: () => Date;
  /** Milliseconds the invocation has left (Lambda's context). */
  remainingMs?: () => number;
  /** Backups per batch (default 50). */
  batchSize?: number;
}

/** The lock target of a retained backup: `need` is what its objects must reach, `set` what they are given. */
export function lockTarget(
  b: Pick<Backup, 'startedAt'>,
  policy: Pick<Policy, 'retention' | 'rpoHours'> | undefined,
  lockDays: number,
  now: Date,
): { need: number; set: number; unbounded: boolean } {
  const horizon = retentionHorizonMs(policy?.retention, policy?.rpoHours);
  const expiry = horizon === undefined ? undefined : Date.parse(b.startedAt) + Math.max(lockDays * DAY_MS, horizon);
  if (expiry !== undefined && expiry > now.getTime()) return { need: expiry, set: expiry, unbounded: false };
  const need = now.getTime() + lockDays * DAY_MS;
  return { need, set: need + GENERATION_MS, unbounded: true };
}

export async function extendRepositoryLocks(input: z.output<typeof extendLocksInput>, deps: ExtendLocksDeps): Promise<LockReport> {
  const started = deps.now();
  const { bucket } = input.request;
  const report: LockReport = {
    gcId: input.gcId,
    bucket,
    objectLock: null,
    backups: { retained: 0, alreadyLocked: 0, done: 0, left: 0, unbounded: 0, notRetained: 0 },
    objects: { read: 0, extended: 0, alreadyLocked: 0 },
    missing: [],
    failed: [],
    more: false,
    seconds: 0,
  };
  const finish = () => {
    report.seconds = (deps.now().getTime() - started.getTime()) / 1000;
    return report;
  };
  report.objectLock = await deps.locks.bucketLock();
  if (!report.objectLock) return finish();
  const lockDays = report.objectLock.days ?? 0;
  const defaultMode = report.objectLock.mode ?? 'GOVERNANCE';
  const repository = locationKey(input.request);

  const policies = new Map((await deps.catalog.listPolicies()).map((p) => [p.policyId, p]));
  const retained = new Map((await deps.catalog.backupsWithStatus(['committed', 'damaged'])).map((b) => [b.backupId, b]));
  const recorded = await deps.records.lockedUntil(repository);
  const inRepository = new Set<string>();
  for await (const o of deps.admin.list('manifests/')) {
    const id = /^manifests\/([^/]+)\//.exec(o.key)?.[1];
    if (id) inRepository.add(id);
  }

  const todo: LockTarget[] = [];
  for (const id of inRepository) {
    const b = retained.get(id);
    if (!b) {
      report.backups.notRetained++;
      continue;
    }
    report.backups.retained++;
    const t = lockTarget(b, policies.get(b.policyId), lockDays, started);
    if (t.unbounded) report.backups.unbounded++;
    if ((recorded.get(id) ?? -Infinity) >= t.need) report.backups.alreadyLocked++;
    else todo.push({ backupId: id, until: new Date(t.set) });
  }
  // Records of backups no longer retained here (pruned) go.
  for (const id of recorded.keys()) if (!inRepository.has(id) || !retained.has(id)) await deps.records.forget(repository, id);

  const batchSize = deps.batchSize ?? 50;
  let i = 0;
  for (; i < todo.length; i += batchSize) {
    if ((deps.remainingMs?.() ?? Infinity) < TIME_MARGIN_MS) break;
    const batch = todo.slice(i, i + batchSize);
    const out = await extendLocks({ admin: deps.admin, repository: deps.repository, locks: deps.locks }, batch, defaultMode, started);
    report.objects.read += out.objects;
    report.objects.extended += out.extended;
    report.objects.alreadyLocked += out.alreadyLocked;
    report.missing.push(...out.missing.slice(0, LISTED - report.missing.length));
    report.failed.push(...out.failed.slice(0, LISTED - report.failed.length));
    if (out.failed.length > 0) continue; // tried again next run: which of the batch's backups a failed object belongs to is not kept
    for (const t of batch) await deps.records.record(repository, t.backupId, t.until, started);
    report.backups.done += batch.length;
  }
  report.backups.left = Math.max(0, todo.length - i);
  report.more = report.backups.left > 0;
  if (report.failed.length > 0) {
    const first = report.failed[0]!;
    throw new LocksNotExtended(
      `${report.failed.length}${report.failed.length >= LISTED ? ' or more' : ''} objects of repository '${bucket}' could not be locked until their backups' expiry ` +
        `(first: ${first.key}: ${first.reason}); nothing was deleted. Check that ExtendLocks' role is granted s3:PutObjectRetention on the bucket; ` +
        `the backups whose objects were locked are recorded, the others are tried again by the next Garbage collection run`,
    );
  }
  return finish();
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('ExtendLocks', extendLocksInput, async (input, { context }) => {
      const { bucket, endpoint } = input.request;
      return extendRepositoryLocks(input, {
        catalog: c.catalog,
        records: c.lockRecords,
        admin: c.admin(bucket, endpoint),
        repository: await c.repository(bucket, endpoint),
        locks: c.locks(bucket, endpoint),
        now: () => new Date(),
        remainingMs: () => context.getRemainingTimeInMillis(),
      });
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
