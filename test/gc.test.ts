/** Garbage collection's mark and sweep (functions/gc.ts) on the in-memory store. */
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { Corrupt } from '../core/errors.ts';
import { deriveKeys, encodeManifest, keys as objectKeys, type Manifest } from '../core/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { MemoryRepositoryAdmin } from '../core/repository-admin.ts';
import { collectGarbage } from '../functions/gc.ts';

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

describe('collectGarbage', () => {
  it('deletes only unreferenced chunks older than the grace period and counts the bytes', async () => {
    const kept = await chunk(1, 10);
    const orphan = await chunk(2, 10, 300);
    const young = await chunk(3, 0.5);
    await manifest('b1', [1, 1]);
    const r = await run();
    expect(r.chunks).toEqual({ total: 3, referenced: 1, protectedByGrace: 1, deleted: 1, spared: 0 });
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
    expect(r.lateReferences).toEqual([{ manifest: objectKeys.manifest('b-late', 'disk0'), chunk: objectKeys.chunk(id(2)) }]);
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
