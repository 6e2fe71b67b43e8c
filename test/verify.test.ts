/** Verify against the in-memory store: what it catches, from manifests and HEADs alone. */
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { deriveKeys, keys as objectKeys } from '../core/format.ts';
import type { DiskRef, DiskResult, VmJob } from '../core/jobs.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { verify } from '../functions/verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

function memoryDisk(data: Buffer): DiskReader {
  return { sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} };
}

async function backedUp(store: MemoryObjectStore) {
  const data = Buffer.concat([randomBytes(CHUNK * 3), Buffer.alloc(CHUNK), Buffer.from('x'.repeat(CHUNK))]);
  const disk: DiskRef = { diskId: 'disk0', path: 'mem', sizeBytes: data.length };
  const result = await backupDisk({ store, keys, reader: memoryDisk(data), disk, backupId: 'b1', chunkSize: CHUNK });
  const job = { backupId: 'b1', vmId: 'vm', snapshot: { handle: 'h', disks: [disk], config: {} }, disks: [result] } as unknown as VmJob & { disks: DiskResult[] };
  return { job, result };
}

describe('Verify', () => {
  let store: MemoryObjectStore;
  beforeEach(() => {
    store = new MemoryObjectStore();
  });

  it('passes a complete backup and compares store checksums where the store keeps them', async () => {
    const { job } = await backedUp(store);
    const out = await verify(job, { store, keys });
    expect(out.chunksChecked).toBe(4); // 3 random chunks and 1 text chunk; the zero chunk is not stored
    expect(out.checksumsCompared).toBe(4);
  });

  it('checks sizes only on a store without checksums (like s3rver)', async () => {
    const { job } = await backedUp(store);
    store.keepChecksums = false;
    expect((await verify(job, { store, keys })).checksumsCompared).toBe(0);
  });

  it('fails naming the object key when a referenced chunk is missing', async () => {
    const { job } = await backedUp(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    store.objects.delete(victim);
    await expect(verify(job, { store, keys })).rejects.toMatchObject({ name: 'Verify.Failed', message: expect.stringContaining(victim) });
  });

  it('fails when a chunk was replaced by one of another size', async () => {
    const { job } = await backedUp(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    store.objects.set(victim, Buffer.alloc(10));
    await expect(verify(job, { store, keys })).rejects.toMatchObject({ name: 'Verify.Failed', message: expect.stringContaining('bytes') });
  });

  it('fails when a chunk of the same size has other content than was uploaded', async () => {
    const { job } = await backedUp(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    const damaged = store.objects.get(victim)!;
    damaged[20]! ^= 1;
    await expect(verify(job, { store, keys })).rejects.toMatchObject({ name: 'Verify.Failed', message: expect.stringContaining('SHA-256') });
  });

  it('fails when a manifest is missing', async () => {
    const { job } = await backedUp(store);
    store.objects.delete(objectKeys.manifest('b1', 'disk0'));
    await expect(verify(job, { store, keys })).rejects.toMatchObject({ name: 'Verify.Failed' });
  });
});
