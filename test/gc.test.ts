/** Garbage collection's mark and sweep (functions/gc.ts) on the in-memory store: format-1 chunk objects, format-2 packs and the index. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { Corrupt } from '../core/errors.ts';
import { chunkId, deriveKeys, encodeManifest, keys as objectKeys, type Manifest } from '../core/format.ts';
import type { DiskRef } from '../core/jobs.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { decodeIndexObject, encodeIndexObject, packedManifest, type PackContents } from '../core/packs.ts';
import { RepositoryIndex } from '../core/repository-index.ts';
import { MemoryRepositoryAdmin } from '../core/repository-admin.ts';
import { collectGarbage } from '../functions/gc.ts';
import { verifyManifests } from '../functions/verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

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
  const m: Manifest = { version: 1, backupId, diskId: 'disk0', sizeBytes: chunks.length * 4096, chunkSize: 4096, chunks: chunks.map(id), storedSizes: Object.fromEntries(chunks.map((n) => [id(n), 100])), storedSha256: {} };
  await store.put(objectKeys.manifest(backupId, 'disk0'), await encodeManifest(keys, m));
}
const run = (request: Record<string, unknown> = {}, extra: Partial<Parameters<typeof collectGarbage>[1]> = {}) =>
  collectGarbage({ gcId: 'gc-1', request: { bucket: 'b', graceHours: 24, ...request } }, { admin, store, keys, now: () => NOW, ...extra });

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
    await expect(run()).rejects.toThrow(`manifest ${key} does not open`);
    expect(admin.deleteCalls).toEqual([]);
  });
});

// --- format 2: packs and the index --------------------------------------------------------

const packId = (n: number) => n.toString(16).padStart(32, '0');
const indexId = (n: number) => `1${n.toString(16).padStart(31, '0')}`;
/** A pack of 100-byte chunks (the bodies are not read by garbage collection), `age` days old. */
async function pack(n: number, chunks: number[], age: number): Promise<PackContents> {
  const contents: PackContents = { pack: { id: packId(n), size: chunks.length * 100 + 40 }, chunks: chunks.map((c, i) => ({ id: id(c), offset: i * 100, length: 100 })) };
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
    expect(r.index).toEqual({ objects: 3, rewritten: 1, dropped: 1 });
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
    expect(r.index).toEqual({ objects: 1, rewritten: 0, dropped: 1 });
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
    expect(r.index).toEqual({ objects: 1, rewritten: 0, dropped: 0 });
  });

  it('keeps a pack while an index object listing it is under Object Lock retention', async () => {
    const p2 = await pack(2, [3], 40);
    const p3 = await pack(3, [4], 40);
    const young = await indexObject(1, [p2], 10);
    await indexObject(2, [p3], 40);
    const r = await run({ objectLockDays: 30 });
    expect(store.objects.has(objectKeys.pack(p2.pack.id)) && store.objects.has(young)).toBe(true);
    expect(store.objects.has(objectKeys.pack(p3.pack.id))).toBe(false);
    expect(r.locked).toEqual({ count: 1, bytes: p2.pack.size, firstExpiry: new Date(daysAgo(10).getTime() + 30 * 86_400_000).toISOString(), sample: [objectKeys.pack(p2.pack.id)] });
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
  const reader = (data: Buffer): DiskReader => ({ sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} });
  const disk = (data: Buffer): DiskRef => ({ diskId: 'disk0', path: 'mem', sizeBytes: data.length });
  // Two chunks a pack, in disk order (one chunk at a time).
  const backUp = (backupId: string, data: Buffer, parent?: string) =>
    backupDisk({ store, keys, reader: reader(data), disk: disk(data), backupId, chunkSize: CHUNK, packBytes: 3 * CHUNK, parallelism: 1, ...(parent ? { parentBackupId: parent, parentManifestKey: objectKeys.manifest(parent, 'disk0') } : {}) });
  async function restored(backupId: string): Promise<Buffer> {
    const dir = await mkdtemp(join(tmpdir(), 'gc-test-'));
    try {
      await restoreDisk({ store, keys, backupId, diskId: 'disk0', target: join(dir, 'disk0.raw') });
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
    await expect(verifyManifests('b2', [{ diskId: 'disk0', manifestKey: objectKeys.manifest('b2', 'disk0') }], { store, keys })).resolves.toMatchObject({ packsChecked: 3 });
    expect((await restored('b2')).equals(v2)).toBe(true);

    // v1 again, from scratch: its first two chunks are in no pack the index lists now, so they are stored anew.
    const index = await RepositoryIndex.load(store, keys);
    for (const c of [0, 1]) expect(index.get(chunkId(keys, v1.subarray(c * CHUNK, (c + 1) * CHUNK)))).toBeUndefined();
    const b3 = await backUp('b3', v1);
    expect(b3.stats.uploadedChunks).toBe(2);
    await expect(verifyManifests('b3', [{ diskId: 'disk0', manifestKey: objectKeys.manifest('b3', 'disk0') }], { store, keys })).resolves.toMatchObject({ chunksChecked: 6 });
    expect((await restored('b3')).equals(v1)).toBe(true);
  });
});
