/** Garbage collection's mark and sweep (functions/gc/gc.ts) on the in-memory store: format-1 chunk objects, format-2 packs and the index. */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Corrupt, StorageUnavailable } from '../contracts/errors.ts';
import { chunkId, deriveKeys, encodeManifest, objectKeys, type Manifest } from '../repository/format.ts';
import type { DiskRef } from '../contracts/jobs.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { decodeIndexObject, encodeIndexObject, type PackContents } from '../repository/packs.ts';
import { packedManifest } from './helpers/manifest.ts';
import { IndexCache, RepositoryIndex } from '../repository/repository-index.ts';
import { MemoryRepositoryAdmin } from '../repository/admin.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import { collectGarbage } from '../functions/gc/gc.ts';
import { GC_LEASE_MS } from '../core/gc-timing.ts';
import { catalogGcLease } from '../functions/gc/gc-lease.ts';
import { verifyManifests } from '../functions/backup/verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';
import { startTestCatalog } from './helpers/catalog.ts';

const keys = deriveKeys(randomBytes(32));
const NOW = new Date('2026-11-23T12:00:00Z');
const daysAgo = (d: number) => new Date(NOW.getTime() - d * 86_400_000);
let store: MemoryObjectStore;
let admin: MemoryRepositoryAdmin & { deleteCalls: string[][] };

const id = (n: number) => n.toString(16).padStart(64, '0');
async function chunk(n: number, age: number, size = 100) {
  const key = objectKeys.chunk(id(n));
  await store.put(key, randomBytes(size));
  admin.modified.set(key, daysAgo(age));
  return key;
}
async function manifest(backupId: string, chunks: number[]) {
  const m: Manifest = {
    version: 1,
    backupId,
    diskId: 'disk0',
    sizeBytes: chunks.length * 4096,
    chunkSize: 4096,
    chunks: chunks.map(id),
    storedSizes: Object.fromEntries(chunks.map((n) => [id(n), 100])),
    storedSha256: {},
  };
  await store.put(objectKeys.manifest(backupId, 'disk0'), await encodeManifest(keys, m));
}
const run = (request: Record<string, unknown> = {}, extra: Partial<Parameters<typeof collectGarbage>[1]> = {}) =>
  collectGarbage(
    { gcId: 'gc-1', request: { bucket: 'b', graceHours: 24, ...request } },
    { admin, repository: new Repository(store, keys), now: () => NOW, ...extra },
  );

beforeEach(() => {
  store = new MemoryObjectStore();
  const a = new MemoryRepositoryAdmin(store) as MemoryRepositoryAdmin & { deleteCalls: string[][] };
  a.deleteCalls = [];
  const del = a.delete.bind(a);
  a.delete = async (k) => {
    a.deleteCalls.push(k);
    return del(k);
  };
  admin = a;
});

describe('collectGarbage of format-1 chunk objects', () => {
  it('deletes only unreferenced chunks older than the grace period and counts the bytes', async () => {
    const kept = await chunk(1, 10);
    const orphan = await chunk(2, 10, 300);
    const young = await chunk(3, 0.5);
    await manifest('b1', [1, 1]);
    const r = await run();
    expect(r.chunks).toEqual({ total: 3, referenced: 1, protectedByGrace: 1, deleted: 1, spared: 0 });
    expect(r.packs).toEqual({ total: 0, referenced: 0, protectedByGrace: 0, deleted: 0, spared: 0 });
    expect(r.bytesFreed).toBe(300);
    expect(store.objects.has(kept) && store.objects.has(young)).toBe(true);
    expect(store.objects.has(orphan)).toBe(false);
  });

  it('deletes nothing on a dry run but reports what it would free', async () => {
    await chunk(2, 10, 300);
    const r = await run({ dryRun: true });
    expect(r).toMatchObject({ dryRun: true, bytesFreed: 300, chunks: { deleted: 1 } });
    expect(admin.deleteCalls).toEqual([]);
    expect(store.objects.size).toBe(1);
  });

  it('never tries to delete a chunk under Object Lock retention, and reports it', async () => {
    const locked = await chunk(2, 10, 50);
    const expired = await chunk(4, 40, 70);
    const r = await run({ objectLockDays: 30 });
    expect(r.locked).toEqual({ count: 1, bytes: 50, firstExpiry: new Date(daysAgo(10).getTime() + 30 * 86_400_000).toISOString(), sample: [locked] });
    expect(admin.deleteCalls.flat()).toEqual([expired]);
    expect(r.bytesFreed).toBe(70);
  });

  it('reads the retain-until of a chunk whose default retention ran out, and skips it while an extended lock holds', async () => {
    const extended = await chunk(2, 40, 50);
    const expired = await chunk(4, 40, 70);
    admin.locks.set(extended, { mode: 'COMPLIANCE', until: new Date(NOW.getTime() + 5 * 86_400_000) });
    admin.locks.set(expired, { mode: 'COMPLIANCE', until: daysAgo(10) });
    const r = await run({ objectLockDays: 30 }, { locks: admin });
    expect(r.locked).toEqual({ count: 1, bytes: 50, firstExpiry: new Date(NOW.getTime() + 5 * 86_400_000).toISOString(), sample: [extended] });
    expect(admin.deleteCalls.flat()).toEqual([expired]);
  });

  it('spares chunks that a manifest written between batches references', async () => {
    await chunk(2, 10);
    const reused = await chunk(3, 10);
    await chunk(5, 10);
    let hooked = false;
    const del = admin.delete.bind(admin);
    admin.delete = async (k) => {
      if (!hooked) {
        hooked = true;
        await manifest('b-new', [3]); // a backup reused chunk 3 (found by HEAD) while the first batch went
      }
      return del(k);
    };
    const r = await run({}, { batchSize: 1 });
    expect(store.objects.has(reused)).toBe(true);
    expect(r.chunks.spared).toBe(1);
    expect(r.chunks.deleted).toBe(2);
    expect(r.lateReferences).toEqual([]);
  });

  it('names a manifest written during the sweep that needs a chunk already deleted', async () => {
    await chunk(2, 10);
    const del = admin.delete.bind(admin);
    admin.delete = async (k) => {
      const out = await del(k);
      await manifest('b-late', [2]);
      return out;
    };
    const r = await run();
    expect(r.lateReferences).toEqual([{ manifest: objectKeys.manifest('b-late', 'disk0'), object: objectKeys.chunk(id(2)) }]);
  });

  it('defers the sweep while backups run, deleting nothing', async () => {
    await chunk(2, 10);
    const r = await run({}, { running: async () => ['vm-1/b9'] });
    expect(r.deferred).toEqual({ backups: ['vm-1/b9'] });
    expect(r.deferrals).toBe(1);
    expect(admin.deleteCalls).toEqual([]);
  });

  it('stops before deleting anything when a manifest does not open, naming it', async () => {
    await chunk(2, 10);
    await manifest('b1', [1]);
    const key = objectKeys.manifest('b1', 'disk0');
    store.objects.get(key)![40]! ^= 1;
    await expect(run()).rejects.toThrow(Corrupt);
    await expect(run()).rejects.toThrow(`manifest ${key} of backup b1 (not in the catalog) does not open`);
    expect(admin.deleteCalls).toEqual([]);
  });
});

describe('collectGarbage beside failed and dead backups', () => {
  const statuses = (m: Record<string, string>) => ({ backupStatuses: async () => new Map(Object.entries(m)) });

  it('collects a failed backup: its manifest is not marked, its chunks go, the manifest goes after the grace period', async () => {
    const onlyFailed = await chunk(1, 10, 200);
    const shared = await chunk(2, 10);
    await manifest('b-failed', [1, 2]);
    await manifest('b-ok', [2]);
    const failedKey = objectKeys.manifest('b-failed', 'disk0');
    admin.modified.set(failedKey, daysAgo(3));
    const r = await run({}, statuses({ 'b-failed': 'failed', 'b-ok': 'committed' }));
    expect(store.objects.has(onlyFailed)).toBe(false);
    expect(store.objects.has(shared)).toBe(true);
    expect(store.objects.has(failedKey)).toBe(false);
    expect(r.failedBackups).toEqual({ objects: 1, deleted: 1, protectedByGrace: 0 });
    expect(r.bytesFreed).toBe(200);
  });

  it("keeps a failed backup's manifest younger than the grace period (its chunks, which only it needs, are swept alike)", async () => {
    await manifest('b-failed', [1]);
    const r = await run({}, statuses({ 'b-failed': 'failed' }));
    expect(store.objects.has(objectKeys.manifest('b-failed', 'disk0'))).toBe(true);
    expect(r.failedBackups).toEqual({ objects: 1, deleted: 0, protectedByGrace: 1 });
  });

  it('is not stopped by the torn manifest of a failed backup, nor by one of a running backup (reported)', async () => {
    const orphan = await chunk(2, 10);
    await manifest('b-failed', [1]);
    await manifest('b-running', [1]);
    for (const b of ['b-failed', 'b-running'])
      store.objects.set(objectKeys.manifest(b, 'disk0'), store.objects.get(objectKeys.manifest(b, 'disk0'))!.subarray(0, 30));
    const r = await run({}, statuses({ 'b-failed': 'failed', 'b-running': 'running' }));
    expect(r.unreadableManifests).toEqual([expect.objectContaining({ manifest: objectKeys.manifest('b-running', 'disk0') })]);
    expect(store.objects.has(orphan)).toBe(false);
  });

  it("names the backup and its status, and advice that works, when a committed backup's manifest does not open", async () => {
    await manifest('b1', [1]);
    store.objects.get(objectKeys.manifest('b1', 'disk0'))![40]! ^= 1;
    await expect(run({}, statuses({ b1: 'committed' }))).rejects.toThrow(
      /manifest manifests\/b1\/disk0.manifest of backup b1 \(committed\) does not open.*deep-verify backup b1 .*prune it by name \(Prune workflow input \{ "policyId": "<its policy>", "backupId": "b1" \}\)/,
    );
  });
});

describe('which running backups defer a collection (a real dynalite catalog)', () => {
  let c: Awaited<ReturnType<typeof startTestCatalog>>;
  beforeAll(async () => {
    c = await startTestCatalog();
  });
  afterAll(async () => c?.close());

  it("only those whose run still holds its policy's run lease: a record a dead run left running defers nothing", async () => {
    const { acquireRunLease, liveRunningBackups } = await import('../functions/backup/run-lease.ts');
    const started = NOW.toISOString();
    await c.catalog.startBackup({
      vmId: 'vm-1',
      backupId: 'b-live',
      runId: 'run-live',
      policyId: 'p1',
      status: 'running',
      parentBackupId: null,
      startedAt: started,
    });
    await c.catalog.startBackup({
      vmId: 'vm-2',
      backupId: 'b-dead',
      runId: 'run-dead',
      policyId: 'p2',
      status: 'running',
      parentBackupId: null,
      startedAt: started,
    });
    await acquireRunLease(
      { policyId: 'p1', executionArn: 'arn:aws:states:us-east-1:1:execution:Backup:run-live' },
      { catalog: c.catalog, now: () => NOW.getTime() },
    );
    expect(await liveRunningBackups(c.catalog, NOW.getTime())).toEqual(['vm-1/b-live']);
    // The dead run's record is fresh, well inside the old 25 h window: it deferred every collection until then.
    await chunk(2, 10);
    const r = await run({}, { running: () => liveRunningBackups(c.catalog, NOW.getTime()) });
    expect(r.deferred).toEqual({ backups: ['vm-1/b-live'] });
  });
});

// --- format 2: packs and the index --------------------------------------------------------

const packId = (n: number) => n.toString(16).padStart(32, '0');
const indexId = (n: number) => `1${n.toString(16).padStart(31, '0')}`;
/** A pack of 100-byte chunks (the bodies are not read by garbage collection), `age` days old. */
async function pack(n: number, chunks: number[], age: number): Promise<PackContents> {
  const contents: PackContents = {
    pack: { id: packId(n), size: chunks.length * 100 + 40 },
    chunks: chunks.map((c, i) => ({ id: id(c), offset: i * 100, length: 100 })),
  };
  const key = objectKeys.pack(packId(n));
  await store.put(key, randomBytes(contents.pack.size));
  admin.modified.set(key, daysAgo(age));
  return contents;
}
async function indexObject(n: number, packs: PackContents[], age: number): Promise<string> {
  const key = objectKeys.index(indexId(n));
  await store.put(key, await encodeIndexObject(keys, indexId(n), packs));
  admin.modified.set(key, daysAgo(age));
  return key;
}
/** A format-2 manifest of `chunks`, found in `packs`. */
async function packedManifestOf(backupId: string, chunks: number[], packs: PackContents[]) {
  const m = packedManifest({ backupId, diskId: 'disk0', sizeBytes: chunks.length * 4096, chunkSize: 4096 }, chunks.map(id), (c) => {
    const p = packs.find((x) => x.chunks.some((e) => e.id === c))!;
    const e = p.chunks.find((x) => x.id === c)!;
    return { pack: p.pack, key: objectKeys.pack(p.pack.id), offset: e.offset, length: e.length };
  });
  await store.put(objectKeys.manifest(backupId, 'disk0'), await encodeManifest(keys, m));
}
/** Puts and deletes in order. */
function recordOps(): string[] {
  const ops: string[] = [];
  const put = store.put.bind(store);
  store.put = async (k, b, sha) => {
    ops.push(`put ${k}`);
    return put(k, b, sha);
  };
  const del = admin.delete.bind(admin);
  admin.delete = async (ks) => {
    for (const k of ks) ops.push(`delete ${k}`);
    return del(ks);
  };
  return ops;
}
const indexKeys = () => [...store.objects.keys()].filter((k) => k.startsWith('index/'));

describe('collectGarbage of format-2 packs', () => {
  it('deletes packs no manifest references, after taking them out of every index object that lists them', async () => {
    const p1 = await pack(1, [1, 2], 10);
    const p2 = await pack(2, [3], 10);
    const p3 = await pack(3, [4], 10);
    const p4 = await pack(4, [5], 0.5);
    const i1 = await indexObject(1, [p1, p2], 10);
    const i2 = await indexObject(2, [p3], 10);
    const i3 = await indexObject(3, [p4], 0.5);
    await packedManifestOf('b1', [1, 1], [p1]);
    const ops = recordOps();
    const r = await run();
    expect(r.packs).toEqual({ total: 4, referenced: 1, protectedByGrace: 1, deleted: 2, spared: 0 });
    expect(r.chunks.total).toBe(0);
    expect(r.index).toEqual({ objects: 3, rewritten: 1, dropped: 1, reindexed: 0 });
    expect(r.bytesFreed).toBe(p2.pack.size + p3.pack.size);
    // Chunk 2 is in p1, which stays for chunk 1: only repacking would free it.
    expect(r.reclaimableInPacks).toEqual({ chunks: 1, bytes: 100 });
    expect(r.lateReferences).toEqual([]);
    for (const p of [p1, p4]) expect(store.objects.has(objectKeys.pack(p.pack.id))).toBe(true);
    for (const p of [p2, p3]) expect(store.objects.has(objectKeys.pack(p.pack.id))).toBe(false);

    // i1 was replaced by an index object listing p1 alone, i2 (p3 only) deleted, i3 left alone.
    const remaining = indexKeys();
    expect(remaining).toHaveLength(2);
    expect(remaining).toContain(i3);
    expect(remaining).not.toContain(i1);
    expect(remaining).not.toContain(i2);
    const rewritten = remaining.find((k) => k !== i3)!;
    expect(await decodeIndexObject(keys, store.objects.get(rewritten)!, rewritten.slice('index/'.length))).toEqual([p1]);
    const index = await RepositoryIndex.load(store, keys);
    expect(index.get(id(1))?.key).toBe(objectKeys.pack(p1.pack.id));
    expect(index.get(id(5))?.key).toBe(objectKeys.pack(p4.pack.id));
    expect(index.get(id(3))).toBeUndefined();
    expect(index.get(id(4))).toBeUndefined();

    // The index no longer listed a pack when it was deleted.
    const firstPackDelete = ops.findIndex((o) => o.startsWith('delete packs/'));
    expect(ops.slice(firstPackDelete).filter((o) => o.includes(' index/'))).toEqual([]);
    expect(ops.slice(0, firstPackDelete)).toEqual(expect.arrayContaining([`put ${rewritten}`, `delete ${i1}`, `delete ${i2}`]));
  });

  it('reports the packs and index objects a dry run would remove, touching nothing', async () => {
    const p1 = await pack(1, [1, 2], 10);
    const p2 = await pack(2, [3], 10);
    await indexObject(1, [p1, p2], 10);
    const ops = recordOps();
    const r = await run({ dryRun: true });
    expect(r.packs).toMatchObject({ total: 2, deleted: 2 });
    expect(r.index).toEqual({ objects: 1, rewritten: 0, dropped: 1, reindexed: 0 });
    expect(r.bytesFreed).toBe(p1.pack.size + p2.pack.size);
    expect(ops).toEqual([]);
  });

  it('marks each layout by its own manifests: a chunk object only format-2 manifests need (in a pack) goes', async () => {
    const kept = await chunk(1, 10);
    const migrated = await chunk(2, 10);
    const p1 = await pack(1, [2], 10);
    await indexObject(1, [p1], 10);
    await manifest('b-old', [1]);
    await packedManifestOf('b-new', [2], [p1]);
    const r = await run();
    expect(r.chunks).toMatchObject({ total: 2, referenced: 1, deleted: 1 });
    expect(r.packs).toMatchObject({ total: 1, referenced: 1, deleted: 0 });
    expect(store.objects.has(kept) && store.objects.has(objectKeys.pack(p1.pack.id))).toBe(true);
    expect(store.objects.has(migrated)).toBe(false);
    expect(r.index).toEqual({ objects: 1, rewritten: 0, dropped: 0, reindexed: 0 });
  });

  it('keeps a pack while an index object listing it is under Object Lock retention', async () => {
    const p2 = await pack(2, [3], 40);
    const p3 = await pack(3, [4], 40);
    const young = await indexObject(1, [p2], 10);
    await indexObject(2, [p3], 40);
    const r = await run({ objectLockDays: 30 });
    expect(store.objects.has(objectKeys.pack(p2.pack.id)) && store.objects.has(young)).toBe(true);
    expect(store.objects.has(objectKeys.pack(p3.pack.id))).toBe(false);
    expect(r.locked).toEqual({
      count: 1,
      bytes: p2.pack.size,
      firstExpiry: new Date(daysAgo(10).getTime() + 30 * 86_400_000).toISOString(),
      sample: [objectKeys.pack(p2.pack.id)],
    });
    expect(r.packs.deleted).toBe(1);
  });

  it('keeps a pack whose index object the store refuses to delete, and names the refusal', async () => {
    const p2 = await pack(2, [3], 10);
    const i1 = await indexObject(1, [p2], 10);
    const del = admin.delete.bind(admin);
    admin.delete = async (ks) => (ks.includes(i1) ? { deleted: ks.filter((k) => k !== i1), failed: [{ key: i1, reason: 'AccessDenied: locked' }] } : del(ks));
    const r = await run();
    expect(r.failed).toEqual([{ key: i1, reason: 'AccessDenied: locked' }]);
    expect(r.packs.deleted).toBe(0);
    expect(store.objects.has(objectKeys.pack(p2.pack.id))).toBe(true);
    expect((await RepositoryIndex.load(store, keys)).get(id(3))?.key).toBe(objectKeys.pack(p2.pack.id));
  });

  it('spares a pack that a manifest written between batches references, and keeps it in the index', async () => {
    const p2 = await pack(2, [3], 10);
    const p3 = await pack(3, [4], 10);
    await indexObject(1, [p2], 10);
    await indexObject(2, [p3], 10);
    const del = admin.delete.bind(admin);
    let hooked = false;
    admin.delete = async (ks) => {
      const out = await del(ks);
      if (!hooked && ks.some((k) => k.startsWith('packs/'))) {
        hooked = true;
        await packedManifestOf('b-new', [4], [p3]); // a backup found chunk 4 in the index while the first batch went
      }
      return out;
    };
    const r = await run({}, { batchSize: 1 });
    expect(r.packs).toMatchObject({ deleted: 1, spared: 1 });
    expect(r.lateReferences).toEqual([]);
    expect(store.objects.has(objectKeys.pack(p3.pack.id))).toBe(true);
    expect((await RepositoryIndex.load(store, keys)).get(id(4))?.key).toBe(objectKeys.pack(p3.pack.id));
  });

  it('names a manifest that needs a deleted pack, also when a later batch reads it', async () => {
    const p2 = await pack(2, [3], 10);
    const p3 = await pack(3, [4], 10);
    await indexObject(1, [p2], 10);
    await indexObject(2, [p3], 10);
    const del = admin.delete.bind(admin);
    let hooked = false;
    admin.delete = async (ks) => {
      const out = await del(ks);
      if (!hooked && ks.includes(objectKeys.pack(p2.pack.id))) {
        hooked = true;
        await packedManifestOf('b-late', [3], [p2]); // written as the first batch deleted p2; the second batch reads it
      }
      return out;
    };
    const r = await run({}, { batchSize: 1 });
    expect(r.lateReferences).toEqual([{ manifest: objectKeys.manifest('b-late', 'disk0'), object: objectKeys.pack(p2.pack.id) }]);
  });

  it('stops before deleting anything when an index object does not open, naming it', async () => {
    const p2 = await pack(2, [3], 10);
    const i1 = await indexObject(1, [p2], 10);
    store.objects.get(i1)![30]! ^= 1;
    const ops = recordOps();
    await expect(run()).rejects.toThrow(Corrupt);
    await expect(run()).rejects.toThrow(`index object ${i1} does not open`);
    expect(ops).toEqual([]);
  });
});

describe('collectGarbage of a repository the mover wrote', () => {
  const CHUNK = 64 * 1024;
  const reader = (data: Buffer): DiskReader => ({
    sizeBytes: data.length,
    read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length),
    close: async () => {},
  });
  const disk = (data: Buffer): DiskRef => ({ diskId: 'disk0', path: 'mem', sizeBytes: data.length });
  // Two chunks a pack (closed once 2 x CHUNK are in it: two sealed chunks pass that), in disk order (one chunk at a time).
  const backUp = (backupId: string, data: Buffer, parent?: string) =>
    backupDisk({
      repository: new Repository(store, keys),
      reader: reader(data),
      disk: disk(data),
      backupId,
      chunkSize: CHUNK,
      packBytes: 2 * CHUNK,
      parallelism: 1,
      ...(parent ? { parentBackupId: parent, parentManifestKey: objectKeys.manifest(parent, 'disk0') } : {}),
    });
  async function restored(backupId: string): Promise<Buffer> {
    const dir = await mkdtemp(join(tmpdir(), 'gc-test-'));
    try {
      await restoreDisk({ repository: new Repository(store, keys), backupId, diskId: 'disk0', target: join(dir, 'disk0.raw') });
      return await readFile(join(dir, 'disk0.raw'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it('frees the packs of a pruned backup; the rest verifies and restores, and a later backup finds no deleted pack in the index', async () => {
    const v1 = randomBytes(6 * CHUNK);
    const v2 = Buffer.concat([randomBytes(2 * CHUNK), v1.subarray(2 * CHUNK)]);
    await backUp('b1', v1);
    await backUp('b2', v2, 'b1');
    expect([...store.objects.keys()].filter((k) => k.startsWith('packs/'))).toHaveLength(4);
    store.objects.delete(objectKeys.manifest('b1', 'disk0')); // pruned
    for (const k of store.objects.keys()) admin.modified.set(k, daysAgo(10));

    const r = await run();
    // b1's first pack held the two chunks b2 changed.
    expect(r.packs).toEqual({ total: 4, referenced: 3, protectedByGrace: 0, deleted: 1, spared: 0 });
    expect(r.lateReferences).toEqual([]);
    expect(r.reclaimableInPacks).toEqual({ chunks: 0, bytes: 0 });
    await expect(
      verifyManifests('b2', [{ diskId: 'disk0', manifestKey: objectKeys.manifest('b2', 'disk0') }], { repository: new Repository(store, keys) }),
    ).resolves.toMatchObject({
      packsChecked: 3,
    });
    expect((await restored('b2')).equals(v2)).toBe(true);

    // v1 again, from scratch: its first two chunks are in no pack the index lists now, so they are stored anew.
    const index = await RepositoryIndex.load(store, keys);
    for (const c of [0, 1]) expect(index.get(chunkId(keys, v1.subarray(c * CHUNK, (c + 1) * CHUNK)))).toBeUndefined();
    const b3 = await backUp('b3', v1);
    expect(b3.stats.uploadedChunks).toBe(2);
    await expect(
      verifyManifests('b3', [{ diskId: 'disk0', manifestKey: objectKeys.manifest('b3', 'disk0') }], { repository: new Repository(store, keys) }),
    ).resolves.toMatchObject({
      chunksChecked: 6,
    });
    expect((await restored('b3')).equals(v1)).toBe(true);
  });

  it('lists again the packs a manifest references that no index object lists (a replication stopped before indexing them): from their trailers; a dry run only counts them', async () => {
    const v1 = randomBytes(6 * CHUNK);
    await backUp('b1', v1);
    // The state an interrupted replication leaves at the DR repository: packs and manifest, no index.
    for (const k of [...store.objects.keys()]) if (k.startsWith('index/')) store.objects.delete(k);
    const ids = [0, 1, 2, 3, 4, 5].map((c) => chunkId(keys, v1.subarray(c * CHUNK, (c + 1) * CHUNK)));
    const before = await RepositoryIndex.load(store, keys);
    expect(ids.map((id) => before.get(id))).toEqual(ids.map(() => undefined));
    for (const k of store.objects.keys()) admin.modified.set(k, daysAgo(10));

    const dry = await run({ dryRun: true });
    expect(dry.index.reindexed).toBe(3);
    expect([...store.objects.keys()].filter((k) => k.startsWith('index/'))).toEqual([]);

    // Each pack's trailer is read from the pack's end, not the whole pack.
    const packReads: { key: string; range?: { offset: number; length: number } }[] = [];
    const get = store.get.bind(store);
    store.get = async (key, opts) => {
      if (key.startsWith('packs/')) packReads.push({ key, ...(opts?.range ? { range: opts.range } : {}) });
      return get(key, opts);
    };
    const r = await run();
    store.get = get;
    expect(packReads).toHaveLength(3);
    for (const { key, range } of packReads) {
      expect(range!.offset, key).toBeGreaterThan(0);
      expect(range!.offset + range!.length, key).toBe(store.objects.get(key)!.length);
    }
    expect(r.index).toMatchObject({ objects: 0, reindexed: 3 });
    expect(r.packs).toMatchObject({ referenced: 3, deleted: 0 });
    const index = await RepositoryIndex.load(store, keys);
    for (const id of ids) expect(index.get(id)?.key).toMatch(/^packs\//);
    // A backup of the same data from scratch now finds every chunk: it stores nothing.
    expect((await backUp('b2', v1)).stats.uploadedChunks).toBe(0);
    expect((await run()).index).toMatchObject({ reindexed: 0 });
  });

  it('reports a referenced, unindexed pack whose trailer does not open, and lists the others', async () => {
    const data = randomBytes(4 * CHUNK);
    await backUp('b1', data);
    for (const k of [...store.objects.keys()]) if (k.startsWith('index/')) store.objects.delete(k);
    const [damaged, intact] = [...store.objects.keys()].filter((k) => k.startsWith('packs/'));
    const body = Buffer.from(store.objects.get(damaged!)!);
    body[body.length - 10]! ^= 1; // in the sealed trailer
    store.objects.set(damaged!, body);
    const r = await run();
    expect(r.index.reindexed).toBe(1);
    expect(r.failed).toEqual([
      { key: damaged, reason: expect.stringMatching(/^referenced but in no index object, and its trailer does not open: .*failed authentication/) },
    ]);
    // The intact pack's two chunks are listed again; the damaged pack's are not.
    const index = await RepositoryIndex.load(store, keys);
    const where = [0, 1, 2, 3].map((c) => index.get(chunkId(keys, data.subarray(c * CHUNK, (c + 1) * CHUNK)))?.key);
    expect(where.filter((k) => k === intact)).toHaveLength(2);
    expect(where.filter((k) => k === undefined)).toHaveLength(2);
  });
});

// --- index consolidation -------------------------------------------------------------------

describe('collectGarbage merging index objects', () => {
  /** Chunk ids of pack n: 3 chunks each, 1000n + 0..2. */
  const chunksOf = (n: number) => [1000 * n, 1000 * n + 1, 1000 * n + 2];
  /** Packs 1..n of 3 chunks each, `age` days old, each listed by an index object of its own (ids 1..n), all needed by one manifest. */
  async function smallIndexes(n: number, age = 10, first = 1): Promise<PackContents[]> {
    const packs: PackContents[] = [];
    for (let i = first; i < first + n; i++) {
      const p = await pack(i, chunksOf(i), age);
      await indexObject(i, [p], age);
      packs.push(p);
    }
    return packs;
  }
  const decodeAt = (key: string) => decodeIndexObject(keys, store.objects.get(key)!, key.slice('index/'.length));
  /** The index a mover or reader loads finds every chunk of `packs` where it is, and the chunks of `gone` nowhere. */
  async function expectIndexed(packs: PackContents[], gone: PackContents[] = []) {
    const index = await RepositoryIndex.load(store, keys);
    for (const p of packs)
      for (const c of p.chunks) expect(index.get(c.id), c.id).toEqual({ pack: p.pack, key: objectKeys.pack(p.pack.id), offset: c.offset, length: c.length });
    for (const p of gone) for (const c of p.chunks) expect(index.get(c.id), c.id).toBeUndefined();
    return index;
  }

  it('merges many small index objects into one listing every pack that stays, after the sweep; the merged object is stored before any source goes', async () => {
    const kept = await smallIndexes(80);
    // Five objects list a kept pack and a garbage pack (the sweep rewrites them), five a garbage pack only (the sweep drops them).
    const garbage: PackContents[] = [];
    const shared: PackContents[] = [];
    for (let i = 81; i <= 90; i++) {
      const g = await pack(i, chunksOf(i), 10);
      garbage.push(g);
      if (i <= 85) {
        const k = await pack(100 + i, chunksOf(100 + i), 10);
        shared.push(k);
        await indexObject(i, [k, g], 10);
      } else await indexObject(i, [g], 10);
    }
    await packedManifestOf(
      'b1',
      [...kept, ...shared].flatMap((p) => p.chunks.map((c) => Number.parseInt(c.id, 16))),
      [...kept, ...shared],
    );
    const sources = indexKeys();
    expect(sources).toHaveLength(90);
    const ops = recordOps();
    const r = await run();

    expect(r.packs).toMatchObject({ total: 95, referenced: 85, deleted: 10 });
    expect(r.index).toEqual({ objects: 90, rewritten: 5, dropped: 5, reindexed: 0 });
    // The five rewritten this run are left for the next collection; the 80 small ones read at the start are merged into one.
    expect(r.consolidation).toEqual({
      objectsBefore: 85,
      objectsAfter: 6,
      candidates: 80,
      merged: 80,
      written: 1,
      entries: 240,
      entriesDropped: 0,
      stopped: null,
    });
    expect(r.failed).toEqual([]);
    const after = indexKeys();
    expect(after).toHaveLength(6);
    for (const k of sources) expect(after).not.toContain(k);
    const merged = (await Promise.all(after.map(async (k) => ({ k, packs: await decodeAt(k) })))).find((x) => x.packs.length === 80)!;
    expect(merged.packs).toEqual(kept); // oldest first: here, in key order
    await expectIndexed([...kept, ...shared], garbage);

    // Order: packs out of the index, packs deleted, then the merged object stored, then (only then) its sources deleted.
    const put = ops.indexOf(`put ${merged.k}`);
    const sourceDeletes = sources.slice(0, 80).map((k) => ops.indexOf(`delete ${k}`));
    expect(put).toBeGreaterThan(ops.findLastIndex((o) => o.startsWith('delete packs/')));
    expect(Math.min(...sourceDeletes)).toBeGreaterThan(put);
  });

  it('does nothing on a second run, nor while few small objects are there', async () => {
    const packs = await smallIndexes(70);
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    const first = await run();
    expect(first.consolidation).toMatchObject({ objectsBefore: 70, objectsAfter: 1, merged: 70, written: 1, entries: 210 });
    const ops = recordOps();
    const second = await run();
    expect(second.consolidation).toEqual({
      objectsBefore: 1,
      objectsAfter: 1,
      candidates: 1,
      merged: 0,
      written: 0,
      entries: 0,
      entriesDropped: 0,
      stopped: null,
    });
    expect(ops).toEqual([]);
    await expectIndexed(packs);
  });

  it('merges small objects into objects of at most maxEntries, leaves the large ones alone, and later merges only what is new', async () => {
    const settings = { minObjects: 4, maxEntries: 16 };
    const packs = await smallIndexes(20);
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    const r = await run({}, { consolidation: settings });
    // Five 3-entry objects a group (15 <= 16): four merged objects, each over half the bound, so never merged again.
    expect(r.consolidation).toMatchObject({ objectsBefore: 20, objectsAfter: 4, candidates: 20, merged: 20, written: 4, entries: 60 });
    const large = indexKeys();
    for (const k of large) expect((await decodeAt(k)).flatMap((p) => p.chunks)).toHaveLength(15);
    expect((await run({}, { consolidation: settings })).consolidation).toMatchObject({ candidates: 0, merged: 0, written: 0 });

    // Backups write more: four small objects are not enough, a fifth is.
    const more = await smallIndexes(4, 10, 21);
    await packedManifestOf(
      'b2',
      more.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      more,
    );
    expect((await run({}, { consolidation: settings })).consolidation).toMatchObject({ candidates: 4, merged: 0 });
    const fifth = await smallIndexes(1, 10, 25);
    await packedManifestOf('b3', chunksOf(25), fifth);
    const later = await run({}, { consolidation: settings });
    expect(later.consolidation).toMatchObject({ objectsBefore: 9, objectsAfter: 5, candidates: 5, merged: 5, written: 1, entries: 15 });
    expect(indexKeys()).toEqual(expect.arrayContaining(large));
    await expectIndexed([...packs, ...more, ...fifth]);
  });

  it('leaves alone an index object a mover writes after collection listed the index, and merges the rest', async () => {
    const packs = await smallIndexes(70);
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    // A backup stores a pack and its index object while collection lists packs/ (it read index/ already).
    let late: { key: string; pack: PackContents } | undefined;
    const list = admin.list.bind(admin);
    admin.list = async function* (prefix: string) {
      if (prefix === 'packs/' && !late) {
        const p = await pack(500, chunksOf(500), 0);
        late = { key: await indexObject(500, [p], 0), pack: p };
      }
      yield* list(prefix);
    };
    const ops = recordOps();
    const r = await run();
    expect(r.index.objects).toBe(70);
    expect(r.consolidation).toMatchObject({ objectsBefore: 70, objectsAfter: 1, merged: 70, written: 1 });
    expect(ops.filter((o) => o.startsWith('delete index/'))).toHaveLength(70);
    expect(ops).not.toContain(`delete ${late!.key}`);
    expect(store.objects.has(late!.key)).toBe(true);
    expect(indexKeys()).toHaveLength(2);
    await expectIndexed([...packs, late!.pack]);
  });

  it('interrupted between storing the merged object and deleting its sources: the index lists everything twice, harmlessly; the next run merges the duplicates away', async () => {
    const packs = await smallIndexes(70);
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    const del = admin.delete.bind(admin);
    admin.delete = async (ks) => {
      if (ks.some((k) => k.startsWith('index/'))) throw new Error('Lambda timed out');
      return del(ks);
    };
    const r = await run();
    expect(r.consolidation).toMatchObject({ merged: 0, written: 1, objectsAfter: 71, stopped: expect.stringContaining('Lambda timed out') });
    expect(indexKeys()).toHaveLength(71);
    const index = await expectIndexed(packs);
    expect(index.size).toBe(210);
    for (const p of packs) for (const c of p.chunks) expect(index.all(c.id), c.id).toHaveLength(2);
    for (const c of packs[0]!.chunks) expect(index.otherCopies(c.id, index.get(c.id)!)).toEqual([]);
    // A restore and a dedup lookup read through the duplicates.
    const cache = new IndexCache(store, keys);
    expect((await cache.refresh()).size).toBe(210);

    admin.delete = del;
    const next = await run();
    // The 70 sources and the merged object are merged again; each pack is listed once.
    expect(next.consolidation).toEqual({
      objectsBefore: 71,
      objectsAfter: 1,
      candidates: 71,
      merged: 71,
      written: 1,
      entries: 210,
      entriesDropped: 210,
      stopped: null,
    });
    const [only] = indexKeys();
    expect(await decodeAt(only!)).toEqual(packs);
    const clean = await expectIndexed(packs);
    for (const p of packs) for (const c of p.chunks) expect(clean.all(c.id)).toHaveLength(1);
    // The mover's cache follows: it forgets the 71 and reads the one.
    const refreshed = await cache.refresh();
    expect([refreshed.size, refreshed.objects, cache.lastRead]).toEqual([210, 1, 1]);
  });

  it('a merged object lists only packs that exist (an index object listing a pack gone by hand loses it)', async () => {
    const packs = await smallIndexes(70);
    const gone = packs.pop()!;
    store.objects.delete(objectKeys.pack(gone.pack.id));
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    const r = await run();
    expect(r.consolidation).toMatchObject({ merged: 70, written: 1, entries: 207, entriesDropped: 3 });
    expect(await decodeAt(indexKeys()[0]!)).toEqual(packs);
    await expectIndexed(packs, [gone]);
  });

  it('reports what it would merge on a dry run, touching nothing', async () => {
    const packs = await smallIndexes(70);
    await packedManifestOf(
      'b1',
      packs.slice(0, 69).flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    const ops = recordOps();
    const r = await run({ dryRun: true });
    // Pack 70 is garbage: its object would be dropped by the sweep; the other 69 merged.
    expect(r.index).toEqual({ objects: 70, rewritten: 0, dropped: 1, reindexed: 0 });
    expect(r.consolidation).toEqual({
      objectsBefore: 69,
      objectsAfter: 1,
      candidates: 69,
      merged: 69,
      written: 1,
      entries: 207,
      entriesDropped: 0,
      stopped: null,
    });
    expect(ops).toEqual([]);
    expect(indexKeys()).toHaveLength(70);
    // The real run does what the dry run said.
    const real = await run();
    expect(real.consolidation).toEqual(r.consolidation);
  });

  it('merges no index object under Object Lock retention', async () => {
    const old = await smallIndexes(70, 40);
    const young = await smallIndexes(70, 10, 71);
    await packedManifestOf(
      'b1',
      [...old, ...young].flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      [...old, ...young],
    );
    const ops = recordOps();
    const r = await run({ objectLockDays: 30 });
    expect(r.consolidation).toMatchObject({ objectsBefore: 140, objectsAfter: 71, candidates: 70, merged: 70, written: 1 });
    for (let i = 71; i <= 140; i++) expect(store.objects.has(objectKeys.index(indexId(i)))).toBe(true);
    expect(ops.filter((o) => o.startsWith('delete index/')).every((o) => Number.parseInt(o.slice(-31), 16) <= 70)).toBe(true);
    await expectIndexed([...old, ...young]);
  });

  it('does not merge while backups defer the sweep, nor start merging with too little time left', async () => {
    const packs = await smallIndexes(70);
    await packedManifestOf(
      'b1',
      packs.flatMap((p) => chunksOf(Number.parseInt(p.pack.id, 16))),
      packs,
    );
    await pack(999, [9999], 10); // garbage: the sweep has a batch to defer
    const ops = recordOps();
    const deferred = await run({}, { running: async () => ['vm-1/b9'] });
    expect(deferred.deferred).not.toBeNull();
    expect(deferred.consolidation).toMatchObject({ objectsBefore: 70, objectsAfter: 70, merged: 0, written: 0 });
    const late = await run({}, { remainingMs: () => 60_000 });
    expect(late.consolidation).toMatchObject({ candidates: 70, merged: 0, written: 0, stopped: expect.stringContaining('out of time') });
    expect(ops.filter((o) => o.includes(' index/'))).toEqual([]);
    expect(indexKeys()).toHaveLength(70);
  });
});

describe('collectGarbage merging the index objects the mover wrote', () => {
  const CHUNK = 64 * 1024;
  const reader = (data: Buffer): DiskReader => ({
    sizeBytes: data.length,
    read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length),
    close: async () => {},
  });
  const backUp = (backupId: string, data: Buffer, index?: IndexCache) =>
    backupDisk({
      repository: new Repository(store, keys),
      reader: reader(data),
      disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
      backupId,
      chunkSize: CHUNK,
      packBytes: 2 * CHUNK,
      parallelism: 1,
      ...(index ? { index: () => index.refresh() } : {}),
    });

  it('after merging, every backup verifies and restores, a warm cache reads only the merged objects, and backing the same data up again stores nothing', async () => {
    const disks = Array.from({ length: 12 }, () => randomBytes(6 * CHUNK));
    const cache = new IndexCache(store, keys);
    for (const [i, d] of disks.entries()) await backUp(`b${i}`, d, cache);
    const before = [...store.objects.keys()].filter((k) => k.startsWith('index/'));
    expect(before.length).toBeGreaterThan(24); // index objects after the first pack, the second, and at the end
    for (const k of store.objects.keys()) admin.modified.set(k, daysAgo(10));
    const warm = await cache.refresh();
    expect(warm.size).toBe(72);

    const r = await run({}, { consolidation: { minObjects: 4, maxEntries: 64 } });
    expect(r.packs.deleted).toBe(0);
    expect(r.consolidation).toMatchObject({
      objectsBefore: before.length,
      candidates: before.length,
      merged: before.length,
      entries: 72,
      entriesDropped: 0,
      stopped: null,
    });
    const after = [...store.objects.keys()].filter((k) => k.startsWith('index/'));
    expect(after).toHaveLength(r.consolidation.written);
    expect(after.length).toBeLessThan(4);

    for (const [i, d] of disks.entries()) {
      await expect(
        verifyManifests(`b${i}`, [{ diskId: 'disk0', manifestKey: objectKeys.manifest(`b${i}`, 'disk0') }], { repository: new Repository(store, keys) }),
      ).resolves.toMatchObject({ chunksChecked: 6 });
      if (i % 4 === 0) {
        const dir = await mkdtemp(join(tmpdir(), 'gc-test-'));
        try {
          await restoreDisk({ repository: new Repository(store, keys), backupId: `b${i}`, diskId: 'disk0', target: join(dir, 'disk0.raw') });
          expect((await readFile(join(dir, 'disk0.raw'))).equals(d)).toBe(true);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }
    }
    const refreshed = await cache.refresh();
    expect([refreshed.size, refreshed.objects, cache.lastRead]).toEqual([72, after.length, after.length]);
    // Every disk again, from scratch (no parent): each chunk is found in the index, nothing is stored.
    for (const [i, d] of disks.entries()) expect((await backUp(`again${i}`, d, cache)).stats.uploadedChunks).toBe(0);
    expect((await backUp('fresh-cache', disks[5]!)).stats.uploadedChunks).toBe(0);
  });
});

describe('one collection of a repository at a time (its lease in a real dynalite catalog)', () => {
  let catalog: Catalog;
  let close: () => Promise<void>;
  beforeAll(async () => {
    ({ catalog, close } = await startTestCatalog());
  });
  afterAll(async () => close());

  it('makes a second collection fail with Gc.Busy while the first is deferred, keeps the lease across its deferrals, and frees it when it ends', async () => {
    await chunk(2, 10, 300);
    const lease = catalogGcLease(catalog, 'b', undefined);
    const deferred = await collectGarbage(
      { gcId: 'gc-a', request: { bucket: 'b', graceHours: 24 } },
      { admin, repository: new Repository(store, keys), now: () => NOW, lease, running: async () => ['vm-1/b9'] },
    );
    expect(deferred.deferred).toEqual({ backups: ['vm-1/b9'] });
    await expect(
      collectGarbage({ gcId: 'gc-b', request: { bucket: 'b', graceHours: 24 } }, { admin, repository: new Repository(store, keys), now: () => NOW, lease }),
    ).rejects.toMatchObject({ name: 'Gc.Busy', retryable: true, message: expect.stringContaining("another garbage collection of repository 'b' is running") });
    expect(store.objects.size).toBe(1); // gc-b deleted nothing
    // A dry run takes no lease: it runs beside gc-a.
    expect(
      (
        await collectGarbage(
          { gcId: 'gc-dry', request: { bucket: 'b', graceHours: 24, dryRun: true } },
          { admin, repository: new Repository(store, keys), now: () => NOW, lease },
        )
      ).bytesFreed,
    ).toBe(300);
    // The same repository on another endpoint is another repository, with its own lease.
    expect(await catalogGcLease(catalog, 'b', { url: 'http://dr.example:9000' }).take('gc-other', NOW.getTime(), NOW.getTime() + 1000)).toBe(true);
    // gc-a collects again under its gcId (the workflow's loop), ends, and gives the lease back.
    expect(
      (
        await collectGarbage(
          { gcId: 'gc-a', request: { bucket: 'b', graceHours: 24 } },
          { admin, repository: new Repository(store, keys), now: () => NOW, lease },
        )
      ).bytesFreed,
    ).toBe(300);
    expect(
      (
        await collectGarbage(
          { gcId: 'gc-b', request: { bucket: 'b', graceHours: 24 } },
          { admin, repository: new Repository(store, keys), now: () => NOW, lease },
        )
      ).deferred,
    ).toBeNull();
  });

  it('renews the lease with every invocation: a collection that died while deferred holds it GC_LEASE_MS past its last invocation, no longer', async () => {
    await chunk(3, 10, 300); // garbage to sweep, so running backups defer the collection
    const lease = catalogGcLease(catalog, 'renewed', undefined);
    const at = (ms: number) => () => new Date(NOW.getTime() + ms);
    const backups = async () => ['vm-1/b9'];
    const request = { bucket: 'renewed', graceHours: 24 };
    expect(
      (await collectGarbage({ gcId: 'gc-r', request }, { admin, repository: new Repository(store, keys), now: at(0), lease, running: backups })).deferred,
    ).not.toBeNull();
    // Deferred again 50 minutes later (the workflow's loop): the lease now runs until 50 min + GC_LEASE_MS.
    const again = 50 * 60_000;
    expect(
      (await collectGarbage({ gcId: 'gc-r', request }, { admin, repository: new Repository(store, keys), now: at(again), lease, running: backups })).deferred,
    ).not.toBeNull();
    // gc-r's execution is aborted here. Past its first invocation's expiry, it still holds the lease...
    await expect(
      collectGarbage({ gcId: 'gc-s', request }, { admin, repository: new Repository(store, keys), now: at(GC_LEASE_MS + 1), lease }),
    ).rejects.toMatchObject({ name: 'Gc.Busy' });
    // ...and past its last one's, the next collection takes it.
    expect(
      (await collectGarbage({ gcId: 'gc-s', request }, { admin, repository: new Repository(store, keys), now: at(again + GC_LEASE_MS + 1), lease })).gcId,
    ).toBe('gc-s');
  });

  it("gives the lease back when the collection fails, and a dead holder's lease runs out after GC_LEASE_MS", async () => {
    const lease = catalogGcLease(catalog, 'failing', undefined);
    const broken = {
      ...admin,
      list: () => {
        throw new StorageUnavailable('listing failed');
      },
    } as unknown as typeof admin;
    await expect(
      collectGarbage(
        { gcId: 'gc-x', request: { bucket: 'failing', graceHours: 24 } },
        { admin: broken, repository: new Repository(store, keys), now: () => NOW, lease },
      ),
    ).rejects.toThrow('listing failed');
    expect(await lease.take('gc-y', NOW.getTime(), NOW.getTime() + GC_LEASE_MS)).toBe(true);
    // gc-y "dies" holding it: gc-z is refused until the lease runs out.
    await expect(
      collectGarbage(
        { gcId: 'gc-z', request: { bucket: 'failing', graceHours: 24 } },
        { admin, repository: new Repository(store, keys), now: () => NOW, lease },
      ),
    ).rejects.toMatchObject({ name: 'Gc.Busy' });
    const later = new Date(NOW.getTime() + GC_LEASE_MS + 1);
    await expect(
      collectGarbage(
        { gcId: 'gc-z', request: { bucket: 'failing', graceHours: 24 } },
        { admin, repository: new Repository(store, keys), now: () => later, lease },
      ),
    ).resolves.toMatchObject({ gcId: 'gc-z' });
  });
});
