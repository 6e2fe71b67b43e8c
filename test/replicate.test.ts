/** Replication of one disk (mover/recovery/replicate.ts) between in-memory repositories. */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Corrupt, StorageUnavailable } from '../contracts/errors.ts';
import { deriveKeys, objectKeys, seal } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { PutChecksum } from '../core/object-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import { RepositoryIndex } from '../repository/repository-index.ts';
import type { ReplicateJob } from '../contracts/recovery-jobs.ts';
import { MemoryRepositoryAdmin } from '../repository/admin.ts';
import { collectGarbage } from '../functions/gc/gc.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { replicateDisk } from '../mover/recovery/replicate.ts';
import { writeV1Backup } from './helpers/format-v1.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

async function backup(store: MemoryObjectStore, backupId: string, data: Buffer, packBytes?: number) {
  const reader = bufferReader(data);
  await store.put(objectKeys.vmConfig(backupId), await seal(keys, Buffer.from('{"name":"vm"}'), `vm-config:${backupId}`));
  return backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
    backupId,
    chunkSize: CHUNK,
    parallelism: 2,
    ...(packBytes ? { packBytes } : {}),
  });
}
const manifestOf = async (store: MemoryObjectStore, backupId: string) =>
  decodeManifest(keys, (await store.get(objectKeys.manifest(backupId, 'disk0')))!, backupId, 'disk0', store);
const job = (backupId: string): ReplicateJob => ({
  replicationId: 'r',
  vmId: 'vm',
  backupId,
  moverGroup: 'dr',
  source: { bucket: 's' },
  target: { bucket: 't' },
  disks: [],
  replicaDir: null,
  recoveryPoint: '2026-11-23T00:00:00Z',
});
const keysUnder = (store: MemoryObjectStore, prefix: string) => [...store.objects.keys()].filter((k) => k.startsWith(prefix)).sort();

describe('replicateDisk (format 2: packs)', () => {
  it('copies each missing pack once with an index of its chunks, then nothing on a second run; the copies are the stored bytes', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    // 8 chunks: two equal, one all-zero; packs of ~2 chunks, so several packs.
    const a = randomBytes(CHUNK);
    const data = Buffer.concat([a, randomBytes(CHUNK), a, Buffer.alloc(CHUNK), ...Array.from({ length: 4 }, () => randomBytes(CHUNK))]);
    await backup(source, 'b1', data, 2 * CHUNK);
    const m = await manifestOf(source, 'b1');
    expect(m.version).toBe(3);
    expect(m.packs!.length).toBeGreaterThan(1);
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 4 };
    const first = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    expect(first).toMatchObject({ chunks: 6, chunksCopied: 6 });
    // Packs, manifest and VM config: the same bytes under the same keys. Index objects: the target's own.
    expect(keysUnder(target, 'packs/')).toEqual(keysUnder(source, 'packs/'));
    for (const [k, v] of source.objects) if (!k.startsWith('keys/') && !k.startsWith('index/')) expect(target.objects.get(k)?.equals(v), k).toBe(true);
    expect(keysUnder(target, 'chunks/')).toEqual([]);
    expect(keysUnder(target, 'index/')).toHaveLength(1);
    expect(keysUnder(target, 'index/')).not.toEqual(keysUnder(source, 'index/'));
    // The target's index lists every chunk where the source's does.
    const [si, ti] = await Promise.all([RepositoryIndex.load(source, keys), RepositoryIndex.load(target, keys)]);
    expect(ti.size).toBe(6);
    for (const id of Object.keys(m.storedSizes)) expect(ti.all(id), id).toEqual(si.all(id));
    // What was copied is counted: packs, the index, the VM config and the manifest.
    const stored = [...target.objects.values()].reduce((n, b) => n + b.length, 0);
    expect(first.bytesCopied).toBe(stored);

    const second = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    expect(second).toMatchObject({ chunksCopied: 0, bytesCopied: 0 });
    expect(keysUnder(target, 'index/')).toHaveLength(1); // nothing copied, nothing to index
  });

  it('copies only the packs a later backup added, counting exactly what it stored', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    const data = randomBytes(8 * CHUNK);
    await backup(source, 'b1', data);
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 4 };
    await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    randomBytes(100).copy(data, 3 * CHUNK + 10);
    const r2 = await backup(source, 'b2', data);
    expect(r2.stats.uploadedChunks).toBe(1);
    const packsBefore = keysUnder(target, 'packs/').length;
    const out = await replicateDisk(job('b2'), { diskId: 'disk0' }, 0, d);
    expect(out.chunksCopied).toBe(1);
    expect(keysUnder(target, 'packs/')).toHaveLength(packsBefore + 1);
    // The stored pack, its index (same listing, so same size as the source's), the manifest, the VM config.
    expect(out.bytesCopied).toBe(r2.stats.bytesStored + target.objects.get(objectKeys.vmConfig('b2'))!.length);
    // The DR repository restores b2 on its own: every chunk of the manifest is at its location there.
    const m2 = await manifestOf(target, 'b2');
    for (const id of Object.keys(m2.storedSizes)) {
      const at = chunkLocation(m2, id);
      expect(target.objects.get(at.key)?.length, id).toBe(at.pack!.size);
    }
  });

  it('refuses to copy a pack holding a damaged chunk, naming the chunk, the pack and the disk; copies neither it, an index nor the manifest', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backup(source, 'b1', randomBytes(4 * CHUNK));
    const m = await manifestOf(source, 'b1');
    const id = m.chunks[2]!;
    const at = chunkLocation(m, id);
    source.objects.get(at.key)![at.offset + 30]! ^= 4;
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 1 };
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(Corrupt);
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(
      `chunk ${id} in ${at.key} bytes ${at.offset}+${at.length} (disk 'disk0', backup b1) is damaged in the source repository; pack not replicated`,
    );
    expect(target.objects.has(at.key)).toBe(false);
    expect(keysUnder(target, 'index/')).toEqual([]);
    expect(target.objects.has(objectKeys.manifest('b1', 'disk0'))).toBe(false);
  });

  it('refuses a pack whose trailer is damaged (the DR index could not list it)', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backup(source, 'b1', randomBytes(2 * CHUNK));
    const m = await manifestOf(source, 'b1');
    const key = objectKeys.pack(m.packs![0]!.id);
    const pack = source.objects.get(key)!;
    pack[pack.length - 10]! ^= 1;
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 1 };
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(
      `pack ${key} (chunks of disk 'disk0', backup b1): its trailer is damaged in the source repository; not replicated`,
    );
    expect(target.objects.has(key)).toBe(false);
  });

  it("a run stopped between copying the packs and indexing them: the re-run copies nothing again and leaves them unindexed, and the DR repository's garbage collection lists them again", async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    const data = randomBytes(6 * CHUNK);
    await backup(source, 'b1', data, 2 * CHUNK);
    const m = await manifestOf(source, 'b1');
    // The first run dies at its index PUT (after every pack landed).
    const dying = Object.assign(Object.create(target) as MemoryObjectStore, {
      put: async (key: string, body: Uint8Array, checksum?: PutChecksum) => {
        if (key.startsWith('index/')) throw new StorageUnavailable(`PUT ${key} failed: connection reset`);
        return target.put(key, body, checksum);
      },
    });
    await expect(
      replicateDisk(job('b1'), { diskId: 'disk0' }, 0, { source: new Repository(source, keys), target: { store: dying }, parallelism: 2 }),
    ).rejects.toThrow('connection reset');
    expect(keysUnder(target, 'packs/')).toEqual(keysUnder(source, 'packs/'));
    const rerun = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, { source: new Repository(source, keys), target: { store: target }, parallelism: 2 });
    expect(rerun.chunksCopied).toBe(0);
    expect(keysUnder(target, 'index/')).toEqual([]);
    expect(target.objects.has(objectKeys.manifest('b1', 'disk0'))).toBe(true);

    const gc = await collectGarbage(
      { gcId: 'gc-dr', request: { bucket: 't', graceHours: 24 } },
      { admin: new MemoryRepositoryAdmin(target), repository: new Repository(target, keys), now: () => new Date() },
    );
    expect(gc.index.reindexed).toBe(m.packs!.length);
    expect(gc.packs).toMatchObject({ total: m.packs!.length, referenced: m.packs!.length, deleted: 0 });
    const [si, ti] = await Promise.all([RepositoryIndex.load(source, keys), RepositoryIndex.load(target, keys)]);
    for (const id of Object.keys(m.storedSizes)) expect(ti.all(id), id).toEqual(si.all(id));
  });

  it('copies a pack the target has at another size (an interrupted or foreign copy) again', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backup(source, 'b1', randomBytes(2 * CHUNK));
    const m = await manifestOf(source, 'b1');
    const key = objectKeys.pack(m.packs![0]!.id);
    await target.put(key, Buffer.from('partial'));
    const out = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, { source: new Repository(source, keys), target: { store: target }, parallelism: 2 });
    expect(out.chunksCopied).toBe(2);
    expect(target.objects.get(key)!.equals(source.objects.get(key)!)).toBe(true);
  });
});

describe('replicateDisk (format 1: chunk objects)', () => {
  const backupV1 = (store: MemoryObjectStore, backupId: string, data: Buffer) =>
    writeV1Backup(store, keys, { backupId, data, chunkSize: CHUNK, vmConfig: true });

  it('copies each missing chunk object once, then nothing; writes no pack or index', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backupV1(source, 'b1', randomBytes(4 * CHUNK));
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 4 };
    const first = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    expect(first).toMatchObject({ chunks: 4, chunksCopied: 4 });
    for (const [k, v] of source.objects) expect(target.objects.get(k)?.equals(v), k).toBe(true);
    expect(keysUnder(target, 'packs/').length + keysUnder(target, 'index/').length).toBe(0);
    expect(await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).toMatchObject({ chunksCopied: 0, bytesCopied: 0 });
  });

  it('refuses to copy a damaged chunk object, naming it, and writes no manifest', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backupV1(source, 'b1', randomBytes(4 * CHUNK));
    const key = keysUnder(source, 'chunks/')[0]!;
    source.objects.get(key)![30]! ^= 4;
    const d = { source: new Repository(source, keys), target: { store: target }, parallelism: 1 };
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(
      `chunk ${key} of disk 'disk0' (backup b1) is damaged in the source repository`,
    );
    expect(target.objects.has(key)).toBe(false);
    expect(target.objects.has(objectKeys.manifest('b1', 'disk0'))).toBe(false);
  });
});
