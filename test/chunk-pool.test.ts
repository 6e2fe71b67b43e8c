/** The chunk pool's worker threads against the in-thread format code, and the restore paths through them. */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { chunkId, deriveKeys, encodeManifest, objectKeys, open, seal, sealSync } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { ChunkPool } from '../mover/pipeline/chunk-pool.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const keys = deriveKeys(randomBytes(32));
const pool = new ChunkPool(2);
const dirs: string[] = [];
afterAll(async () => {
  await pool.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** A slot of `size` bytes shared with `pool`, holding `data` from byte 0, given back after the test. */
const slotHolding = (data: Buffer, size = data.length) => {
  const slot = pool.share(size);
  data.copy(slot.bytes);
  onTestFinished(() => pool.unshare(slot));
  return slot;
};
const text = (n: number) => Buffer.from('log line: backup volume snapshot chunk\n'.repeat(Math.ceil(n / 39))).subarray(0, n);
const reader = (data: Buffer): DiskReader => ({
  sizeBytes: data.length,
  read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length),
  close: async () => {},
});
const tempDir = async () => {
  const d = await mkdtemp(join(tmpdir(), 'lifeboat-pool-'));
  dirs.push(d);
  return d;
};

describe('chunk pool', () => {
  it("reports each running worker's own heap, none before a worker has started", async () => {
    const fresh = new ChunkPool(1);
    onTestFinished(() => fresh.close());
    expect(await fresh.heapStatistics()).toEqual([]);
    const data = text(10_000);
    const slot = fresh.share(data.length);
    data.copy(slot.bytes);
    await fresh.hashSlot(keys, slot, data.length);
    fresh.unshare(slot);
    const [heap, ...more] = await fresh.heapStatistics();
    expect(more).toEqual([]);
    expect(heap!.used_heap_size).toBeGreaterThan(0);
    expect(heap!.total_heap_size).toBeGreaterThanOrEqual(heap!.used_heap_size);
  });

  it('computes the same keyed id as chunkId from a shared slot, of only the first length bytes of a larger slot', async () => {
    for (const data of [randomBytes(70_000), text(100_000), Buffer.alloc(1)]) {
      const slot = slotHolding(data, data.length + 5);
      slot.bytes.fill(0xee, data.length); // bytes past the length are not hashed
      expect(await pool.hashSlot(keys, slot, data.length)).toBe(chunkId(keys, data));
    }
  });

  it('seals a shared slot into a shared pack buffer to the same bytes as seal and sealSync on the main thread for the same nonce', async () => {
    const nonce = randomBytes(12);
    const chunks = [randomBytes(50_000), text(200_000)];
    const pack = pool.sharePack(300_000);
    onTestFinished(() => pool.unshare(pack));
    let end = 0;
    for (const data of chunks) {
      const id = chunkId(keys, data);
      const placed = await pool.sealSlot(keys, slotHolding(data), data.length, id, { nonce }, pack);
      const inThread = await seal(keys, data, id, { nonce });
      // Placed right after the previous chunk, within the pack.
      expect(placed).toEqual({ fit: true, offset: end, sealedLength: inThread.length });
      end += inThread.length;
      expect(end).toBeLessThanOrEqual(pack.capacity);
      const stored = pack.bytes.subarray(end - inThread.length, end);
      expect(stored.equals(inThread)).toBe(true);
      expect(sealSync(keys, data, id, { nonce }).equals(inThread)).toBe(true);
      expect((await open(keys, stored, id)).equals(data)).toBe(true);
    }
  });

  it('seals from a shared slot into one shared pack buffer on two workers at once, and a later spawned worker sees the slots too', async () => {
    const fresh = new ChunkPool(2);
    try {
      const slot = fresh.share(300_000); // shared before any worker exists
      const data = text(250_000);
      data.copy(slot.bytes);
      const id = await fresh.hashSlot(keys, slot, data.length);
      expect(id).toBe(chunkId(keys, data));
      const nonce = randomBytes(12);
      const inThread = await seal(keys, data, id, { nonce });
      // Two at once into one pack buffer: both workers are used, each must know both
      // slots, and each reserves its own place (back to back from 0, in either order).
      const pack = fresh.sharePack(2 * inThread.length + 10);
      const [a, b] = await Promise.all([
        fresh.sealSlot(keys, slot, data.length, id, { nonce }, pack),
        fresh.sealSlot(keys, slot, data.length, id, { nonce }, pack),
      ]);
      expect([a, b]).toEqual(
        expect.arrayContaining([
          { fit: true, offset: 0, sealedLength: inThread.length },
          { fit: true, offset: inThread.length, sealedLength: inThread.length },
        ]),
      );
      expect(pack.bytes.subarray(0, inThread.length).equals(inThread) && pack.bytes.subarray(inThread.length, 2 * inThread.length).equals(inThread)).toBe(true);
      expect(Atomics.load(pack.cursor, 0)).toBe(2 * inThread.length);
      // A third does not fit: nothing is written, the size it needed is reported.
      const before = Buffer.from(pack.bytes);
      expect(await fresh.sealSlot(keys, slot, data.length, id, { nonce }, pack)).toEqual({ fit: false, sealedLength: inThread.length });
      expect(pack.bytes.equals(before)).toBe(true);
      for (const s of [slot, pack]) fresh.unshare(s);
      await expect(fresh.hashSlot(keys, slot, 10)).rejects.toThrow(/no shared slot/);
      await expect(fresh.sealSlot(keys, slot, 10, id, {}, pack)).rejects.toThrow(/no shared/);
    } finally {
      await fresh.close();
    }
  });

  it('opens a chunk sealed on the main thread from a shared slot on a worker, and rejects a damaged or swapped one', async () => {
    const data = text(300_000);
    const id = chunkId(keys, data);
    const sealed = await seal(keys, data, id);
    const slot = slotHolding(sealed);
    const opened = await pool.openSlot(keys, slot, sealed.length, id, data.length);
    expect(opened.ok && opened.plain?.equals(data)).toBe(true);

    const damaged = Buffer.from(sealed);
    damaged[damaged.length - 20]! ^= 1;
    await expect(pool.openSlot(keys, slotHolding(damaged), damaged.length, id, data.length)).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(/failed authentication/),
    });

    // Authentic envelope, wrong content for the id (a forged or buggy writer): the id check catches it.
    const other = text(300_001).subarray(1);
    const forged = await seal(keys, other, id);
    expect(await pool.openSlot(keys, slotHolding(forged), forged.length, id, data.length)).toEqual({ ok: false, reason: 'mismatch' });
    // And a chunk of the wrong length.
    expect(await pool.openSlot(keys, slot, sealed.length, id, data.length - 1)).toEqual({ ok: false, reason: 'mismatch' });
  });

  it('opens a chunk at an offset of a shared slot on a worker and on the calling thread alike, placing it side by side with others in another shared slot', async () => {
    const data = text(200_000);
    const id = chunkId(keys, data);
    const sealed = await seal(keys, data, id);
    const slot = pool.share(sealed.length + 1000);
    sealed.copy(slot.bytes, 1000); // as in a downloaded run of a pack: the chunk starts at byte 1000
    const plain = pool.share(2 * data.length + 2);
    plain.bytes.fill(0xee);
    try {
      expect(await pool.openSlot(keys, slot, sealed.length, id, data.length, { slot: plain, offset: 1 }, 1000)).toEqual({ ok: true });
      expect(pool.openHere(keys, slot, sealed.length, id, data.length, { slot: plain, offset: 1 + data.length }, 1000)).toEqual({ ok: true });
      expect(plain.bytes.subarray(1, 1 + data.length).equals(data) && plain.bytes.subarray(1 + data.length, 1 + 2 * data.length).equals(data)).toBe(true);
      // Its neighbours are untouched.
      expect([plain.bytes[0], plain.bytes[1 + 2 * data.length]]).toEqual([0xee, 0xee]);
      // A chunk that does not check out places nothing.
      const before = Buffer.from(plain.bytes);
      expect(await pool.openSlot(keys, slot, sealed.length, id, data.length - 1, { slot: plain, offset: 1 }, 1000)).toEqual({ ok: false, reason: 'mismatch' });
      expect(plain.bytes.equals(before)).toBe(true);
      // The wrong length, another chunk's id (bound into the envelope), or a damaged byte, on the calling thread as on a worker.
      expect(pool.openHere(keys, slot, sealed.length, id, data.length - 1, undefined, 1000)).toEqual({ ok: false, reason: 'mismatch' });
      expect(() => pool.openHere(keys, slot, sealed.length, chunkId(keys, Buffer.from('other')), data.length, undefined, 1000)).toThrow(
        /failed authentication/,
      );
      slot.bytes[1000 + 40]! ^= 1;
      expect(() => pool.openHere(keys, slot, sealed.length, id, data.length, undefined, 1000)).toThrow(/failed authentication/);
    } finally {
      pool.unshare(slot);
      pool.unshare(plain);
    }
  });

  it('rejects requests once closed', async () => {
    const p = new ChunkPool(1);
    await p.close();
    const slot = p.share(4);
    await expect(p.hashSlot(keys, slot, 4)).rejects.toThrow(/closed/);
    await expect(p.sealSlot(keys, slot, 4, 'x', {}, p.sharePack(64))).rejects.toThrow(/closed/);
    await expect(p.openSlot(keys, slot, 4, 'x', 4)).rejects.toThrow(/closed/);
  });
});

describe('restore through the pool', () => {
  const CHUNK = 64 * 1024;

  const backupThree = async (store: MemoryObjectStore) => {
    const data = Buffer.concat([randomBytes(CHUNK), text(CHUNK), randomBytes(CHUNK)]);
    await backupDisk({
      repository: new Repository(store, keys),
      pool,
      reader: reader(data),
      disk: { diskId: 'd', path: 'mem', sizeBytes: data.length },
      backupId: 'b1',
      chunkSize: CHUNK,
    });
    const manifestKey = objectKeys.manifest('b1', 'd');
    return { data, manifest: await decodeManifest(keys, store.objects.get(manifestKey)!, 'b1', 'd', store), manifestKey };
  };

  it('names the disk, offset and pack of a chunk whose bytes in the pack were swapped for another authentic envelope', async () => {
    const store = new MemoryObjectStore();
    const { data, manifest } = await backupThree(store);
    const id2 = chunkId(keys, data.subarray(2 * CHUNK));
    const loc = chunkLocation(manifest, id2);
    // An envelope that authenticates for id2 but holds chunk 0's data (both incompressible: the same sealed length).
    const forged = await seal(keys, data.subarray(0, CHUNK), id2);
    expect(forged.length).toBe(loc.length);
    forged.copy(store.objects.get(loc.key)!, loc.offset);
    const target = join(await tempDir(), 'd.raw');
    await expect(restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(new RegExp(`^disk 'd' offset ${2 * CHUNK}: chunk ${id2} in ${loc.key} bytes .* is damaged: it does not match its id`)),
    });
  });

  it('detects a manifest location that points at another chunk: restores from the copy the index lists, else names the disk, offset and pack', async () => {
    const store = new MemoryObjectStore();
    const { data, manifest, manifestKey } = await backupThree(store);
    const [id0, id2] = [chunkId(keys, data.subarray(0, CHUNK)), chunkId(keys, data.subarray(2 * CHUNK))];
    // A faulty writer's manifest: chunk 2's location is chunk 0's (same length, so the manifest is well-formed).
    manifest.locations![id2] = manifest.locations![id0]!;
    store.objects.set(manifestKey, await encodeManifest(keys, manifest));
    const loc = chunkLocation(manifest, id2);
    // The index lists where chunk 2 really is: the restore reads it from there.
    const healed = join(await tempDir(), 'd.raw');
    await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target: healed });
    expect((await readFile(healed)).equals(data)).toBe(true);
    // Without the index, nothing else holds chunk 2.
    for (const key of [...store.objects.keys()]) if (key.startsWith('index/')) store.objects.delete(key);
    const target = join(await tempDir(), 'd.raw');
    await expect(restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(new RegExp(`^disk 'd' offset ${2 * CHUNK}: chunk ${id2} in ${loc.key} bytes .* is damaged: .*failed authentication`)),
    });
  });

  it('writes zero chunks onto a device target, and skips them when the device is known to be zeroed', async () => {
    const store = new MemoryObjectStore();
    const data = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK * 2), text(CHUNK)]);
    await backupDisk({
      repository: new Repository(store, keys),
      pool,
      reader: reader(data),
      disk: { diskId: 'd', path: 'mem', sizeBytes: data.length },
      backupId: 'b1',
      chunkSize: CHUNK,
    });
    const dir = await tempDir();
    // A regular file stands in for a block device holding stale data, larger than the disk.
    const stale = Buffer.alloc(data.length + 4096, 0xaa);

    const dirty = join(dir, 'dirty.dev');
    await writeFile(dirty, stale);
    await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target: dirty, targetKind: 'device' });
    const afterDirty = await readFile(dirty);
    expect(afterDirty.length).toBe(stale.length); // a device is never truncated
    expect(afterDirty.subarray(0, data.length).equals(data)).toBe(true);

    const zeroed = join(dir, 'zeroed.dev');
    await writeFile(zeroed, stale);
    await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target: zeroed, targetKind: 'device', targetZeroed: true });
    const afterZeroed = await readFile(zeroed);
    // The zero run was not written (the caller vouched for zeros there); the data chunks were.
    expect(afterZeroed.subarray(CHUNK, 3 * CHUNK).every((b) => b === 0xaa)).toBe(true);
    expect(afterZeroed.subarray(0, CHUNK).equals(data.subarray(0, CHUNK))).toBe(true);
    expect(afterZeroed.subarray(3 * CHUNK, 4 * CHUNK).equals(data.subarray(3 * CHUNK))).toBe(true);
  });

  it('restores a file target with holes and the exact size, through the pool', async () => {
    const store = new MemoryObjectStore();
    const data = Buffer.concat([text(CHUNK), Buffer.alloc(CHUNK * 32), randomBytes(1000)]);
    await backupDisk({
      repository: new Repository(store, keys),
      pool,
      reader: reader(data),
      disk: { diskId: 'd', path: 'mem', sizeBytes: data.length },
      backupId: 'b1',
      chunkSize: CHUNK,
    });
    const target = join(await tempDir(), 'd.raw');
    await writeFile(target, Buffer.alloc(data.length * 2, 0xaa)); // an older, longer file is replaced
    await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
    expect((await stat(target)).blocks * 512).toBeLessThan(data.length);
  });
});

describe('chunk pool between jobs', () => {
  it("collects garbage once no buffer is shared any more, so a job's buffers are freed in a long-running mover", async () => {
    const own = new ChunkPool(1);
    onTestFinished(() => own.close());
    let slot: ReturnType<ChunkPool['share']> | undefined = own.share(1024 * 1024);
    slot.bytes.write('chunk');
    expect(await own.hashSlot(keys, slot, 5)).toBe(chunkId(keys, Buffer.from('chunk'))); // the worker saw it
    let freed!: (what: string) => void;
    const collected = new Promise<string>((ok) => (freed = ok));
    const registry = new FinalizationRegistry<string>((what) => freed(what));
    registry.register(slot.bytes.buffer, 'the shared buffer');
    own.unshare(slot);
    slot = undefined;
    // Nothing allocates here: without the pool's collection the buffer would stay for as long as the process idles.
    const late = new Promise<string>((ok) => setTimeout(() => ok('still held after 5 s'), 5000));
    expect(await Promise.race([collected, late])).toBe('the shared buffer');
  });
});
