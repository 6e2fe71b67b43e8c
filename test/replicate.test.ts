/** Replication of one disk (mover/recovery/replicate.ts) between in-memory repositories. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Corrupt } from '../core/errors.ts';
import { deriveKeys, keys as objectKeys, seal } from '../core/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ReplicateJob } from '../core/recovery-jobs.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { replicateDisk } from '../mover/recovery/replicate.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

async function backup(store: MemoryObjectStore, backupId: string, data: Buffer) {
  const reader = { sizeBytes: data.length, read: async (b: Buffer, off: number, len: number) => data.copy(b, 0, off, off + len), close: async () => {} };
  await store.put(objectKeys.vmConfig(backupId), await seal(keys, Buffer.from('{"name":"vm"}'), `vm-config:${backupId}`));
  return backupDisk({ store, keys, reader, disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length }, backupId, chunkSize: CHUNK, parallelism: 2 });
}
const job = (backupId: string): ReplicateJob => ({
  replicationId: 'r', vmId: 'vm', backupId, moverGroup: 'dr', source: { bucket: 's' }, target: { bucket: 't' }, disks: [], replicaDir: null, recoveryPoint: '2026-11-23T00:00:00Z',
});

describe('replicateDisk', () => {
  it('copies each missing chunk once, then nothing on a second run; the copies are the stored bytes', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    // 8 chunks: two equal, one all-zero.
    const a = randomBytes(CHUNK);
    const data = Buffer.concat([a, randomBytes(CHUNK), a, Buffer.alloc(CHUNK), ...Array.from({ length: 4 }, () => randomBytes(CHUNK))]);
    await backup(source, 'b1', data);
    const d = { source: { store: source, keys }, target: { store: target }, parallelism: 4 };
    const first = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    expect(first).toMatchObject({ chunks: 6, chunksCopied: 6 });
    for (const [k, v] of source.objects) if (!k.startsWith('keys/')) expect(target.objects.get(k)?.equals(v), k).toBe(true);
    const second = await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    expect(second).toMatchObject({ chunksCopied: 0, bytesCopied: 0 });
  });

  it('copies only the chunks a later backup added', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    const data = randomBytes(8 * CHUNK);
    await backup(source, 'b1', data);
    const d = { source: { store: source, keys }, target: { store: target }, parallelism: 4 };
    await replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d);
    randomBytes(100).copy(data, 3 * CHUNK + 10);
    const r2 = await backup(source, 'b2', data);
    const out = await replicateDisk(job('b2'), { diskId: 'disk0' }, 0, d);
    expect(out.chunksCopied).toBe(1);
    expect(out.bytesCopied).toBe(r2.stats.bytesStored + target.objects.get(objectKeys.vmConfig('b2'))!.length);
  });

  it('refuses to copy a damaged chunk, naming it, and writes no manifest', async () => {
    const source = new MemoryObjectStore();
    const target = new MemoryObjectStore();
    await backup(source, 'b1', randomBytes(4 * CHUNK));
    const key = [...source.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    source.objects.get(key)![30]! ^= 4;
    const d = { source: { store: source, keys }, target: { store: target }, parallelism: 1 };
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(Corrupt);
    await expect(replicateDisk(job('b1'), { diskId: 'disk0' }, 0, d)).rejects.toThrow(`chunk ${key} of disk 'disk0' (backup b1) is damaged in the source repository`);
    expect(target.objects.has(key)).toBe(false);
    expect(target.objects.has(objectKeys.manifest('b1', 'disk0'))).toBe(false);
  });
});
