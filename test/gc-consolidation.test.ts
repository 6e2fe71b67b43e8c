/**
 * Garbage collection merging index objects (repository/maintenance/consolidate.ts) on the local S3 endpoint
 * (s3rver, as the embedded stack runs it) with the S3 store and admin the Lambda uses:
 * mover backups leave many small index objects; collection sweeps a pruned backup's packs,
 * merges the rest, leaves alone an index object a mover writes meanwhile, and every backup
 * still verifies, restores and deduplicates. A mover refreshing its index while collection
 * merges finds every chunk; an interrupted merge leaves duplicates only; a second run does
 * nothing.
 */
import { Repository } from '../repository/open.ts';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { deriveKeys, objectKeys, type RepositoryKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { S3RepositoryAdmin, type RepositoryAdmin } from '../repository/admin.ts';
import { IndexCache, RepositoryIndex } from '../repository/repository-index.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { collectGarbage } from '../functions/gc/gc.ts';
import type { GcReport } from '../contracts/gc-report.ts';
import { verifyManifests } from '../functions/backup/verify.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';

const CHUNK = 64 * 1024;
/** Small bounds so a few backups make a consolidation: more than 4 small objects, 64 entries a merged object. */
const SETTINGS = { minObjects: 4, maxEntries: 64 };
let s3: LocalS3;
let dir: string;
let bucketNo = 0;
let bucket: string;
let store: S3ObjectStore;
let admin: S3RepositoryAdmin;
let keys: RepositoryKeys;

const client = () => s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-gc-consolidation-'));
  s3 = await startLocalS3({ directory: dir, buckets: Array.from({ length: 4 }, (_, i) => `repo-${i}`) });
});
afterAll(async () => {
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  bucket = `repo-${bucketNo++}`;
  store = new S3ObjectStore(client(), bucket);
  admin = new S3RepositoryAdmin(client(), bucket);
  keys = deriveKeys(randomBytes(32));
});

const backUp = (backupId: string, data: Buffer, opts: { store?: ObjectStore; index?: IndexCache } = {}) =>
  backupDisk({
    repository: new Repository(opts.store ?? store, keys),
    reader: { sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} },
    disk: { diskId: 'disk0', path: backupId, sizeBytes: data.length },
    backupId,
    chunkSize: CHUNK,
    packBytes: 2 * CHUNK,
    parallelism: 1,
    ...(opts.index ? { index: () => opts.index!.refresh() } : {}),
  });
const gc = (deps: { admin?: RepositoryAdmin; store?: ObjectStore } = {}, request: Record<string, unknown> = {}): Promise<GcReport> =>
  collectGarbage(
    { gcId: `gc-${randomBytes(4).toString('hex')}`, request: { bucket, graceHours: 0, ...request } },
    { admin: deps.admin ?? admin, repository: new Repository(deps.store ?? store, keys), now: () => new Date(), consolidation: SETTINGS },
  );
async function indexKeys(): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list('index/')) out.push(o.key);
  return out;
}
/** Every chunk each backup's manifest names, by the index: found, in the pack the manifest says (each disk's chunks are its own). */
async function expectIndexFinds(index: RepositoryIndex, backupIds: string[]) {
  let n = 0;
  for (const b of backupIds) {
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(b, 'disk0')))!, b, 'disk0', store);
    for (const id of m.chunks) {
      if (id === null) continue;
      const packId = m.packs![m.locations![id]![0]]!.id;
      expect(
        index.all(id).map((l) => l.pack!.id),
        `${b} ${id}`,
      ).toContain(packId);
      n++;
    }
  }
  return n;
}
/**
 * Twelve disks of six distinct chunks each, backed up: 36 packs (two chunks each) and 36
 * index objects of two entries (the writer indexes after its first pack, its second, and at the end).
 */
async function twelveBackups(): Promise<Buffer[]> {
  const disks = Array.from({ length: 12 }, () => randomBytes(6 * CHUNK));
  for (const [i, d] of disks.entries()) await backUp(`b${i}`, d);
  return disks;
}

it('merges the small index objects after sweeping a pruned backup, leaves alone one a mover writes meanwhile; every backup verifies, restores and deduplicates; a second run does nothing', async () => {
  const disks = await twelveBackups();
  const before = await indexKeys();
  expect(before.length).toBeGreaterThan(24);
  const warm = new IndexCache(store, keys);
  expect((await warm.refresh()).size).toBe(72);
  // b0 pruned: its packs are garbage.
  const pruned = await decodeManifest(keys, (await store.get(objectKeys.manifest('b0', 'disk0')))!, 'b0', 'disk0', store);
  await admin.delete([objectKeys.manifest('b0', 'disk0')]);

  // A backup runs while collection lists packs/ (after it read index/): its index objects are new to this run.
  const lateDisk = randomBytes(6 * CHUNK);
  let lateIndexes: string[] = [];
  const racing: RepositoryAdmin = {
    list: async function* (prefix) {
      if (prefix === 'packs/' && lateIndexes.length === 0) {
        const known = new Set(await indexKeys());
        await backUp('late', lateDisk);
        lateIndexes = (await indexKeys()).filter((k) => !known.has(k));
      }
      yield* admin.list(prefix);
    },
    delete: (ks) => admin.delete(ks),
  };
  const r = await gc({ admin: racing });
  expect(lateIndexes.length).toBeGreaterThan(0);
  expect(r.failed).toEqual([]);
  expect(r.packs.deleted).toBe(3);
  expect(r.index.objects).toBe(before.length);
  expect(r.index.rewritten + r.index.dropped).toBeGreaterThan(0);
  // b0's three objects dropped with its packs; the other 33 (2 entries each) merged 32 to a group of 64 entries; the last one alone is left as it is.
  expect(r.index).toEqual({ objects: 36, rewritten: 0, dropped: 3, reindexed: 0 });
  expect(r.consolidation).toEqual({
    objectsBefore: 33,
    objectsAfter: 2,
    candidates: 33,
    merged: 32,
    written: 1,
    entries: 64,
    entriesDropped: 0,
    stopped: null,
  });
  const after = await indexKeys();
  expect(after).toEqual(expect.arrayContaining(lateIndexes));
  expect(after).toHaveLength(2 + lateIndexes.length);

  // The index: every chunk of every backup that stays, none of b0's.
  const index = await RepositoryIndex.load(store, keys);
  const backups = [...Array.from({ length: 11 }, (_, i) => `b${i + 1}`), 'late'];
  expect(await expectIndexFinds(index, backups)).toBe(72);
  for (const id of pruned.chunks) expect(index.get(id!), id!).toBeUndefined();
  // A mover that read the index before reads only the objects written since, and finds the same.
  const refreshed = await warm.refresh();
  expect(warm.lastRead).toBe(1 + lateIndexes.length);
  expect(refreshed.size).toBe(72);
  for (const b of backups)
    await expect(
      verifyManifests(b, [{ diskId: 'disk0', manifestKey: objectKeys.manifest(b, 'disk0') }], { repository: new Repository(store, keys) }),
    ).resolves.toMatchObject({
      chunksChecked: 6,
    });
  for (const i of [1, 6, 11]) {
    const target = join(dir, `${bucket}-b${i}.raw`);
    await restoreDisk({ repository: new Repository(store, keys), backupId: `b${i}`, diskId: 'disk0', target });
    expect(sha256(await readFile(target))).toBe(sha256(disks[i]!));
  }
  // The same data again, no parent: deduplicated through the merged index, nothing stored.
  for (const i of [2, 9]) expect((await backUp(`again-${i}`, disks[i]!, { index: warm })).stats.uploadedChunks).toBe(0);

  // A second collection: nothing left to merge (the merged object is large; the one left and the late ones are too few).
  const second = await gc();
  expect(second.consolidation).toMatchObject({ candidates: 1 + lateIndexes.length, merged: 0, written: 0 });
  expect(second.packs.deleted).toBe(0);
  const third = await gc();
  expect(third.consolidation).toMatchObject({ merged: 0, written: 0 });
}, 60_000);

it('a mover reading the index while collection merges it finds every chunk (its GETs find the merged objects gone: it lists again)', async () => {
  await twelveBackups();
  const before = await indexKeys();
  // The mover lists index/, then the whole collection runs before its first GET returns.
  let collecting: Promise<GcReport> | undefined;
  const mover = new S3ObjectStore(client(), bucket);
  const racing: ObjectStore = {
    put: (k, b, s) => mover.put(k, b, s),
    head: (k) => mover.head(k),
    list: (p) => mover.list(p),
    get: async (k, o) => {
      if (k.startsWith('index/')) await (collecting ??= gc());
      return mover.get(k, o);
    },
  };
  const cache = new IndexCache(racing, keys, { parallelism: 4 });
  const index = await cache.refresh();
  // All 36 merged (32 + 4): every GET of the first round found its object gone.
  expect((await collecting!).consolidation).toMatchObject({ merged: 36, written: 2, entries: 72 });
  expect(await indexKeys()).toHaveLength(2);
  expect(
    await expectIndexFinds(
      index,
      Array.from({ length: 12 }, (_, i) => `b${i}`),
    ),
  ).toBe(72);
  expect([index.size, index.objects]).toEqual([72, 2]);
  expect([cache.lastLists, cache.lastRead]).toEqual([3, before.length + 2]);
}, 60_000);

it('interrupted after storing merged objects, before deleting their sources: duplicates only, every chunk found; the next run merges them away', async () => {
  await twelveBackups();
  const before = await indexKeys();
  const crashing: RepositoryAdmin = {
    list: (p) => admin.list(p),
    delete: async (ks) => {
      if (ks.some((k) => k.startsWith('index/'))) throw new Error('Task timed out after 900.00 seconds');
      return admin.delete(ks);
    },
  };
  const r = await gc({ admin: crashing });
  // The first group's merged object (32 objects, 64 entries) was stored; deleting its sources failed.
  expect(r.consolidation).toMatchObject({ merged: 0, written: 1, entries: 64, stopped: expect.stringContaining('timed out') });
  expect(await indexKeys()).toHaveLength(before.length + 1);
  const backups = Array.from({ length: 12 }, (_, i) => `b${i}`);
  const ids = (
    await Promise.all(backups.map(async (b) => (await decodeManifest(keys, (await store.get(objectKeys.manifest(b, 'disk0')))!, b, 'disk0', store)).chunks))
  ).flat() as string[];
  const index = await RepositoryIndex.load(store, keys);
  expect(index.size).toBe(72);
  expect(await expectIndexFinds(index, backups)).toBe(72);
  // 64 chunks listed twice (the merged object and its sources), at the same place: a reader has no other copy to try.
  expect(ids.filter((id) => index.all(id).length === 2)).toHaveLength(64);
  for (const id of ids) expect(index.otherCopies(id, index.get(id)!)).toEqual([]);
  // A backup of data already stored finds it all.
  const b5 = await decodeManifest(keys, (await store.get(objectKeys.manifest('b5', 'disk0')))!, 'b5', 'disk0', store);
  expect(b5.chunks.every((id) => index.get(id!) !== undefined)).toBe(true);

  const next = await gc();
  // The merged object is large and stays; the 36 sources go, the 32 it lists without a new copy, the other 4 merged into one.
  expect(next.consolidation).toEqual({
    objectsBefore: 37,
    objectsAfter: 2,
    candidates: 36,
    merged: 36,
    written: 1,
    entries: 8,
    entriesDropped: 64,
    stopped: null,
  });
  const clean = await RepositoryIndex.load(store, keys);
  expect(await expectIndexFinds(clean, backups)).toBe(72);
  for (const id of ids) expect(clean.all(id)).toHaveLength(1);
  expect((await gc()).consolidation).toMatchObject({ candidates: 1, merged: 0, written: 0 });
}, 60_000);
