/**
 * Immutability that holds (issue 18): a chain of backups of one VM kept 90 days (daily: 90)
 * in a bucket with Object Lock (COMPLIANCE, 30 days), whose first packs were written 60
 * days before the newest backup, against the real local S3 front with its clock moved by
 * the test, a real catalog (dynalite) and the mover's own backup pipeline. After lock
 * extension no object any retained backup references can be deleted before that backup's
 * expiry (the front refuses, a minute before it), a second run sends nothing, and garbage
 * collection deletes only unreferenced objects whose locks have run out, reporting the
 * others as waiting.
 */
import { Repository } from '../repository/open.ts';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { StorageUnavailable } from '../contracts/errors.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import { LockCatalog } from '../functions/catalog/lock-catalog.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { collectGarbage } from '../functions/gc/gc.ts';
import { extendRepositoryLocks } from '../functions/gc/extend-locks.ts';
import { pruneBackup } from '../functions/prune/prune.ts';
import { S3RepositoryAdmin } from '../repository/admin.ts';
import { deriveKeys, objectKeys, type RepositoryKeys } from '../repository/format.ts';
import { KeyFileWrapper, loadMasterKey } from '../repository/keyring.ts';
import { markNew, noMarks } from '../repository/maintenance/mark.ts';
import { S3ObjectLocks } from '../repository/object-lock.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { startTestCatalog } from './helpers/catalog.ts';

const DAY = 86_400_000;
const CHUNK = 64 * 1024;
const BUCKET = 'locked';
/** The newest backup is taken now (s3rver's object times are the files' times: the test sets them to the simulated ones). */
const NEWEST = Math.floor(Date.now() / 1000) * 1000;
const at = (days: number) => NEWEST + days * DAY;
let clock = at(-61);

let s3: LocalS3;
let dir: string;
let db: Awaited<ReturnType<typeof startTestCatalog>>;
let catalog: Catalog;
let recovery: RecoveryCatalog;
let store: S3ObjectStore;
let admin: S3RepositoryAdmin;
let locks: S3ObjectLocks;
let keys: RepositoryKeys;
const client = () => s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
/** The chain of vm-a: backup id → when it was taken. */
const chain = new Map<string, number>();
const stamped = new Set<string>();

/** Sets the time of every object file written since the last call to the simulated `clock` (s3rver reports it as LastModified). */
async function stampNewObjects() {
  const walk = async (d: string): Promise<string[]> =>
    (await Promise.all((await readdir(d, { withFileTypes: true })).map((e) => (e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)])))).flat();
  for (const f of await walk(join(dir, BUCKET))) {
    if (!f.endsWith('._S3rver_object') || stamped.has(f)) continue;
    stamped.add(f);
    await utimes(f, new Date(clock), new Date(clock));
  }
}

/** Backs up `data` of `vmId` at day `day` (the S3 front's clock then), as the catalog would record it. */
async function backup(vmId: string, backupId: string, day: number, data: Buffer, parent?: string, status: 'committed' | 'failed' = 'committed') {
  clock = at(day);
  const reader = {
    sizeBytes: data.length,
    read: async (buf: Buffer, offset: number, length: number) => data.copy(buf, 0, offset, offset + length),
    close: async () => {},
  };
  const disk = { diskId: 'disk0', path: vmId, sizeBytes: data.length };
  const r = await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk,
    backupId,
    chunkSize: CHUNK,
    packBytes: 2 * CHUNK,
    parallelism: 2,
    ...(parent ? { parentManifestKey: objectKeys.manifest(parent, 'disk0'), parentBackupId: parent } : {}),
  });
  await stampNewObjects();
  await catalog.startBackup({
    vmId,
    backupId,
    runId: `run-${backupId}`,
    policyId: 'p90',
    status: 'running',
    parentBackupId: parent ?? null,
    startedAt: new Date(clock).toISOString(),
  });
  if (status === 'failed') await catalog.failBackup(vmId, backupId, { Error: 'Mover.TaskStalled', Cause: 'cut off before Commit' });
  else await catalog.commitBackup(vmId, backupId, [r], new Date(clock));
}

/** Every object a backup needs (its manifest objects, what they reference, the repository key), read as the mark reads them. */
async function objectsOf(backupId: string): Promise<Set<string>> {
  const out = new Set<string>(['keys/default']);
  const others = new Set<string>();
  for await (const o of admin.list('manifests/')) (o.key.startsWith(`manifests/${backupId}/`) ? out : others).add(o.key);
  await markNew({ admin, repository: new Repository(store, keys) }, others, noMarks(), (_, key) => out.add(key));
  return out;
}

const deleteOutcome = async (key: string) => {
  try {
    await client().send(new DeleteObjectCommand({ Bucket: BUCKET, Key: key }));
    return 'deleted';
  } catch (err) {
    return (err as Error).name;
  }
};
const extend = () =>
  extendRepositoryLocks(
    { gcId: 'gc-lock', request: { bucket: BUCKET } },
    { catalog, records: new LockCatalog(db.doc, 'catalog'), admin, repository: new Repository(store, keys), locks, now: () => new Date(clock) },
  );
const gc = () =>
  collectGarbage(
    { gcId: `gc-${clock}`, request: { bucket: BUCKET, graceHours: 48, objectLockDays: 30 } },
    { admin, repository: new Repository(store, keys), locks, now: () => new Date(clock), backupStatuses: () => catalog.backupStatuses() },
  );

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-object-lock-'));
  s3 = await startLocalS3({ directory: dir, buckets: [BUCKET], objectLock: { [BUCKET]: { mode: 'COMPLIANCE', days: 30 } }, now: () => new Date(clock) });
  db = await startTestCatalog();
  ({ catalog, recovery } = db);
  await catalog.putPolicy({
    policyId: 'p90',
    vmIds: ['vm-a', 'vm-x', 'vm-f'],
    bucket: BUCKET,
    chunkSize: CHUNK,
    slotLimit: 1,
    retention: { daily: 90 },
    rpoHours: 24,
  });
  store = new S3ObjectStore(client(), BUCKET);
  admin = new S3RepositoryAdmin(client(), BUCKET);
  locks = new S3ObjectLocks(client(), BUCKET);
  keys = deriveKeys(await loadMasterKey(store, await KeyFileWrapper.load(join(dir, 'repository.keyfile'), { create: true }), { create: true }));
  await stampNewObjects();

  // vm-a: a full backup 60 days before the newest, then an incremental every 10 days, each changing one chunk.
  const data = randomBytes(8 * CHUNK);
  let parent: string | undefined;
  for (const [i, day] of [-60, -50, -40, -30, -20, -10, 0].entries()) {
    if (i > 0) randomBytes(CHUNK).copy(data, i * CHUNK);
    const id = `a${i}`;
    await backup('vm-a', id, day, data, parent);
    chain.set(id, at(day));
    parent = id;
    // vm-x: a backup of other data, pruned at day -20 once its manifest's lock ran out: its packs are garbage, unlocked.
    if (day === -60) await backup('vm-x', 'x0', -55, randomBytes(4 * CHUNK));
    if (day === -20) {
      const pruned = await pruneBackup(
        { pruneId: 'prune-x', vmId: 'vm-x', backupId: 'x0', bucket: BUCKET, replicas: [], reason: 'test' },
        { catalog, recovery, admin: () => admin, now: () => new Date(clock) },
      );
      expect(pruned.outcome).toBe('pruned');
    }
    // vm-f: a backup that failed after its packs landed: garbage still under its default lock.
    if (day === -10) await backup('vm-f', 'f0', -5, randomBytes(4 * CHUNK), undefined, 'failed');
  }
  clock = NEWEST;
}, 120_000);
afterAll(async () => {
  await s3?.close();
  await db?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

it("locks every object a retained backup references until that backup's expiry, and none can be deleted a minute before", async () => {
  const first = await objectsOf('a0');
  const newest = await objectsOf('a6');
  const firstPacks = [...first].filter((k) => k.startsWith('packs/') && newest.has(k));
  expect(firstPacks.length).toBeGreaterThan(0); // packs of the full backup that the newest incremental still needs
  // Before: their default retention ran out 30 days ago.
  for (const k of firstPacks) expect((await locks.retention(k))!.until.getTime()).toBe(at(-30));

  const report = await extend();
  expect(report).toMatchObject({ objectLock: { mode: 'COMPLIANCE', days: 30 }, more: false, missing: [], failed: [] });
  expect(report.backups).toMatchObject({ retained: 7, done: 7, alreadyLocked: 0, unbounded: 0, notRetained: 1 }); // f0 failed
  expect(report.objects.extended).toBeGreaterThan(0);

  // Each object must hold until the latest expiry (taken + 90 days) of the retained backups that need it.
  const expiry = new Map<string, number>();
  for (const [id, taken] of chain) for (const k of await objectsOf(id)) expiry.set(k, Math.max(expiry.get(k) ?? 0, taken + 90 * DAY));
  for (const k of firstPacks) expect(expiry.get(k)).toBe(at(90));
  for (const [k, t] of expiry) expect((await locks.retention(k))!.until.getTime(), k).toBeGreaterThanOrEqual(t);
  clock = at(90) - 60_000;
  for (const [k, t] of [...expiry].sort((a, b) => a[1] - b[1])) {
    clock = t - 60_000;
    expect(await deleteOutcome(k), `${k} a minute before ${new Date(t).toISOString()}`).toBe('AccessDenied');
  }
  clock = NEWEST;
});

it('sends nothing on a second run: every backup is recorded as locked far enough', async () => {
  const before = s3.requests.get(BUCKET) ?? 0;
  const again = await extend();
  expect(again.backups).toMatchObject({ retained: 7, alreadyLocked: 7, done: 0, left: 0 });
  expect(again.objects).toEqual({ read: 0, extended: 0, alreadyLocked: 0 });
  expect((s3.requests.get(BUCKET) ?? 0) - before).toBe(2); // the lock configuration and one listing of manifests/
});

it('collects only unreferenced objects whose locks have run out, and reports the ones waiting', async () => {
  const referenced = new Set<string>();
  for (const id of chain.keys()) for (const k of await objectsOf(id)) referenced.add(k);
  const stored = async () => {
    const out = new Map<string, number>();
    for (const p of ['packs/', 'chunks/', 'manifests/']) for await (const o of admin.list(p)) out.set(o.key, o.size);
    return out;
  };
  const all = await stored();
  const failedBackup = [...all.keys()].filter((k) => k.startsWith('manifests/f0/'));
  const garbage = [...all].filter(([k]) => !referenced.has(k) && k.startsWith('packs/'));
  const lockedUntil = new Map(await Promise.all(garbage.map(async ([k]) => [k, (await locks.retention(k))!.until.getTime()] as const)));
  const waiting = garbage.filter(([k]) => lockedUntil.get(k)! > NEWEST); // f0's packs
  const expired = garbage.filter(([k]) => lockedUntil.get(k)! <= NEWEST); // x0's packs
  expect(waiting.length).toBeGreaterThan(0);
  expect(expired.length).toBeGreaterThan(0);

  clock = NEWEST;
  const now = await gc();
  expect(now.failed).toEqual([]); // no delete was refused: none was tried on a locked object
  expect(now.packs.deleted).toBe(expired.length); // x0's packs: unreferenced since the prune, their locks ran out at day -25
  expect(now.locked.count).toBe(waiting.length + failedBackup.length); // f0's packs and manifest, locked until day 25
  expect(now.locked.bytes).toBe([...waiting, ...failedBackup.map((k) => [k, all.get(k)!] as const)].reduce((n, [, size]) => n + size, 0));
  expect(now.locked.firstExpiry).toBe(new Date(at(25)).toISOString());
  const left = await stored();
  for (const k of referenced) if (k.startsWith('packs/') || k.startsWith('manifests/')) expect(left.has(k), k).toBe(true);
  for (const [k] of waiting) expect(left.has(k), k).toBe(true);
  for (const [k] of expired) expect(left.has(k), k).toBe(false);

  clock = at(26);
  const later = await gc();
  expect(later.failed).toEqual([]);
  expect(later.locked.count).toBe(0);
  const after = await stored();
  for (const [k] of waiting) expect(after.has(k), k).toBe(false);
  for (const k of failedBackup) expect(after.has(k), k).toBe(false);
  for (const k of referenced) if (k.startsWith('packs/') || k.startsWith('manifests/')) expect(after.has(k), k).toBe(true);
  clock = NEWEST;
});

it('fails naming the object when a lock cannot be extended, and finishes the backup on the next run', async () => {
  const data = randomBytes(8 * CHUNK);
  await backup('vm-a', 'a7', 1, data, 'a6');
  const refusedKey = [...(await objectsOf('a7'))].find((k) => k.startsWith('manifests/a7/'))!;
  const refusing = Object.assign(Object.create(locks) as S3ObjectLocks, {
    extend: async (key: string, r: Parameters<S3ObjectLocks['extend']>[1]) => {
      if (key === refusedKey) throw new StorageUnavailable(`PutObjectRetention of s3://${BUCKET}/${key}: AccessDenied`);
      return locks.extend(key, r);
    },
  });
  const deps = { catalog, records: new LockCatalog(db.doc, 'catalog'), admin, repository: new Repository(store, keys), now: () => new Date(clock) };
  await expect(extendRepositoryLocks({ gcId: 'gc-refused', request: { bucket: BUCKET } }, { ...deps, locks: refusing })).rejects.toThrow(
    expect.objectContaining({ name: 'Gc.LocksNotExtended', message: expect.stringContaining(`${refusedKey}: PutObjectRetention`) }),
  );
  const again = await extend();
  expect(again.backups).toMatchObject({ retained: 8, alreadyLocked: 7, done: 1 });
  expect((await locks.retention(refusedKey))!.until.getTime()).toBeGreaterThanOrEqual(at(91));
  clock = NEWEST;
});
