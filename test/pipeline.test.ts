/** The mover's backup and restore pipelines over the in-memory store. */
import { Repository } from '../repository/open.ts';
import type { PutChecksum } from '../core/object-store.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open as fsOpen, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { chunkId, deriveKeys, encodeManifest, objectKeys, open, packIdOfKey, sealedCapacity } from '../repository/format.ts';
import type { DiskRef } from '../contracts/jobs.ts';
import { decodeManifest, packedManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { GetOptions, ListedKey, ObjectInfo } from '../core/object-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import { readPackTrailer } from '../repository/pack-trailer.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { ChunkPool, type SharedPack, type SharedSlot } from '../mover/pipeline/chunk-pool.ts';
import type { Placement } from '../repository/pack-buffer.ts';
import { PackWriter } from '../repository/pack-writer.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Records the requests that reach the store, by key (GETs and LISTs too). */
class CountingStore extends MemoryObjectStore {
  puts: string[] = [];
  heads: string[] = [];
  gets: string[] = [];
  lists: string[] = [];
  /** Milliseconds each PUT takes (0: none). */
  putDelayMs = 0;
  reset(): void {
    this.puts = [];
    this.heads = [];
    this.gets = [];
    this.lists = [];
  }
  override async put(key: string, body: Uint8Array, checksum?: PutChecksum) {
    this.puts.push(key);
    if (this.putDelayMs) await new Promise((ok) => setTimeout(ok, this.putDelayMs));
    return super.put(key, body, checksum);
  }
  override async head(key: string): Promise<ObjectInfo | undefined> {
    this.heads.push(key);
    return super.head(key);
  }
  override async get(key: string, opts?: GetOptions): Promise<Buffer | undefined> {
    this.gets.push(key);
    return super.get(key, opts);
  }
  override list(prefix: string): AsyncIterable<ListedKey> {
    this.lists.push(prefix);
    return super.list(prefix);
  }
}

const kinds = (keys: string[]) =>
  keys.map((k) =>
    packIdOfKey(k) ? 'pack' : k.startsWith('index/') ? 'index' : /^manifests\/.*\.pieces\//.test(k) ? 'piece' : k.startsWith('manifests/') ? 'manifest' : k,
  );
const tempTarget = async (name = 'd.raw') => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-'));
  dirs.push(dir);
  return join(dir, name);
};
/** The manifest of a backup's disk, opened. */
const manifestOf = async (store: MemoryObjectStore, backupId: string, diskId: string) =>
  decodeManifest(keys, store.objects.get(objectKeys.manifest(backupId, diskId))!, backupId, diskId, store);

const reader = (data: Buffer): DiskReader => ({
  sizeBytes: data.length,
  read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length),
  close: async () => {},
});
const disk = (diskId: string, data: Buffer): DiskRef => ({ diskId, path: 'mem', sizeBytes: data.length });

describe('backup pipeline', () => {
  it('writes a full backup as one pack, its index and the manifest, with no HEAD and no GET but the empty index listing (listed twice: IndexCache confirms its LIST)', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 8 + 1000); // a partial last chunk too
    const full = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(full.stats.uploadedChunks).toBe(9);
    expect(kinds(store.puts)).toEqual(['pack', 'index', 'piece', 'manifest']);
    expect({ heads: store.heads, gets: store.gets, lists: store.lists }).toEqual({ heads: [], gets: [], lists: ['index/', 'index/'] });
    const m = await manifestOf(store, 'b1', 'd');
    expect(m.version).toBe(3);
    expect(m.packs!.map((p) => objectKeys.pack(p.id))).toEqual([store.puts[0]]);
  });

  it('skips chunks the parent backup already stored without any request: the changed chunk costs one pack PUT, its index and the manifest', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 8 + 1000);
    const full = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(full.stats.uploadedChunks).toBe(9);

    randomBytes(100).copy(data, CHUNK * 3 + 10); // change one chunk
    store.reset();
    const incr = await backupDisk({
      repository: new Repository(store, keys),
      reader: reader(data),
      disk: disk('d', data),
      backupId: 'b2',
      chunkSize: CHUNK,
      parentBackupId: 'b1',
      parentManifestKey: full.manifestKey,
    });
    expect(incr.stats).toMatchObject({ parentChunks: 8, uploadedChunks: 1, bytesNew: CHUNK });
    expect(kinds(store.puts)).toEqual(['pack', 'index', 'piece', 'manifest']);
    expect(store.heads).toEqual([]);
    // GETs: the parent manifest and its piece, and the one index object (the changed chunk is looked up in the repository's index).
    expect(kinds(store.gets)).toEqual(['manifest', 'piece', 'index']);
    expect(store.gets[0]).toBe(full.manifestKey);
    expect(store.lists).toEqual(['index/', 'index/']);
    // The new pack holds only the changed chunk; the other eight are where the parent has them.
    const [parent, child] = [await manifestOf(store, 'b1', 'd'), await manifestOf(store, 'b2', 'd')];
    const changed = child.chunks[3]!;
    expect(chunkLocation(child, changed).key).toBe(store.puts[0]);
    for (const [i, id] of child.chunks.entries()) if (i !== 3) expect(chunkLocation(child, id!)).toEqual(chunkLocation(parent, id!));
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b2', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });

  it("deduplicates across VMs through the repository's index: VM B's backup of data VM A stored uploads no pack, and restores identical", async () => {
    const store = new CountingStore();
    const data = Buffer.concat([randomBytes(CHUNK * 4), Buffer.alloc(CHUNK), randomBytes(CHUNK / 2)]);
    await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('vm1-d0', data), backupId: 'b1', chunkSize: CHUNK });
    store.reset();
    const second = await backupDisk({
      repository: new Repository(store, keys),
      reader: reader(data),
      disk: disk('vm2-d0', data),
      backupId: 'b2',
      chunkSize: CHUNK,
    });
    expect(second.stats).toMatchObject({ uploadedChunks: 0, dedupedChunks: 5, zeroChunks: 1 });
    // No pack and no index object: only the manifest, referencing VM A's pack.
    expect(kinds(store.puts)).toEqual(['piece', 'manifest']);
    expect(store.heads).toEqual([]);
    expect(kinds(store.gets)).toEqual(['index']);
    const [a, b] = [await manifestOf(store, 'b1', 'vm1-d0'), await manifestOf(store, 'b2', 'vm2-d0')];
    expect(b.packs).toEqual(a.packs);
    expect(b.locations).toEqual(a.locations);
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b2', diskId: 'vm2-d0', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });

  it('stores a chunk repeated within one disk once', async () => {
    const store = new CountingStore();
    const block = randomBytes(CHUNK);
    const data = Buffer.concat([block, randomBytes(CHUNK), block, block]);
    const r = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats).toMatchObject({ uploadedChunks: 2, dedupedChunks: 2 });
    const m = await manifestOf(store, 'b1', 'd');
    expect(Object.keys(m.locations!)).toHaveLength(2);
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });

  it('fails a backup of an image shorter than its disk naming the disk and offset, and writes no manifest (reads ahead)', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 10);
    // The image ends mid-way through chunk 6 while the disk says 10 chunks.
    const short: DiskReader = {
      sizeBytes: data.length,
      read: async (buf, offset, length) =>
        Math.max(0, Math.min(length, 6 * CHUNK + 100 - offset)) && data.copy(buf, 0, offset, Math.min(offset + length, 6 * CHUNK + 100)),
      close: async () => {},
    };
    await expect(
      backupDisk({ repository: new Repository(store, keys), reader: short, disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK }),
    ).rejects.toThrow(`disk 'd' ended early: read 100 of ${CHUNK} bytes at offset ${6 * CHUNK}`);
    expect([...store.objects.keys()].filter((k) => k.startsWith('manifests/'))).toEqual([]);
  });

  it('fills packs of many chunks while uploads are slow, also when a chunk is as large as a pack', async () => {
    for (const packBytes of [4 * CHUNK, CHUNK]) {
      const store = new CountingStore();
      store.putDelayMs = 10;
      const data = randomBytes(CHUNK * 24);
      const r = await backupDisk({
        repository: new Repository(store, keys),
        reader: reader(data),
        disk: disk('d', data),
        backupId: 'b1',
        chunkSize: CHUNK,
        packBytes,
      });
      expect(r.stats.uploadedChunks).toBe(24);
      const m = await manifestOf(store, 'b1', 'd');
      // Its target, plus at most the chunks in flight (8) when it was reached, plus the trailer.
      for (const p of m.packs!) expect(p.size).toBeLessThan(packBytes + 8 * sealedCapacity(CHUNK) + 4096);
      const target = await tempTarget();
      await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
      expect((await readFile(target)).equals(data), `packs of ${packBytes} bytes`).toBe(true);
    }
  });

  it('does not store all-zero chunks, and restores them as holes', async () => {
    const store = new CountingStore();
    const data = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK * 16), randomBytes(CHUNK)]);
    const r = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats).toMatchObject({ zeroChunks: 16, uploadedChunks: 2 });
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-'));
    dirs.push(dir);
    const target = join(dir, 'd.raw');
    // The restore flushes the target before it returns (a restore that returned is on storage).
    const FileHandle = Object.getPrototypeOf(await fsOpen(process.execPath, 'r').then(async (fh) => (await fh.close(), fh)));
    const flushes = vi.spyOn(FileHandle, 'datasync');
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect(flushes).toHaveBeenCalled();
    // A flush that fails (a disk error on writeback) fails the restore, naming the disk and the target.
    flushes.mockRejectedValue(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target })).rejects.toThrow(
      `disk 'd': flushing ${target} to storage failed: EIO: i/o error, fdatasync`,
    );
    flushes.mockRestore();
    expect((await readFile(target)).equals(data)).toBe(true);
    expect((await stat(target)).blocks * 512).toBeLessThan(data.length); // sparse: zero runs were not written
  });

  it('never reads the holes the source reports: a chunk wholly in one is a zero chunk, a chunk with any data in it is read; restores identical', async () => {
    const store = new CountingStore();
    const data = Buffer.alloc(CHUNK * 12);
    randomBytes(CHUNK * 2).copy(data, 0); // chunks 0-1
    randomBytes(100).copy(data, 5 * CHUNK + CHUNK - 100); // the end of chunk 5
    randomBytes(CHUNK + 10).copy(data, 8 * CHUNK); // chunk 8 and the start of 9
    const extents = [
      { offset: 0, length: 2 * CHUNK },
      { offset: 6 * CHUNK - 100, length: 100 },
      { offset: 8 * CHUNK, length: CHUNK + 10 },
    ];
    const reads: number[] = [];
    const mapped: DiskReader = {
      ...reader(data),
      read: async (buf, offset, length) => (reads.push(offset / CHUNK), data.copy(buf, 0, offset, offset + length)),
      allocated: async () => extents,
    };
    const scanned: number[] = [];
    const r = await backupDisk({
      repository: new Repository(store, keys),
      reader: mapped,
      disk: disk('d', data),
      backupId: 'b1',
      chunkSize: CHUNK,
      onProgress: (p) => scanned.push(p.bytesScanned),
    });
    expect(reads.sort((a, b) => a - b)).toEqual([0, 1, 5, 8, 9]);
    // Progress moves through the holes too, a chunk at a time.
    for (let c = 1; c <= 12; c++) expect(scanned).toContain(c * CHUNK);
    expect(r.stats).toMatchObject({ bytesScanned: data.length, zeroChunks: 7, bytesZero: 7 * CHUNK, bytesUnallocated: 7 * CHUNK, uploadedChunks: 5 });
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
    // A source that cannot tell (undefined) is read whole.
    reads.length = 0;
    await backupDisk({
      repository: new Repository(store, keys),
      reader: { ...mapped, allocated: async () => undefined },
      disk: disk('d', data),
      backupId: 'b2',
      chunkSize: CHUNK,
    });
    expect(reads).toHaveLength(12);
  });

  it("fails a restore naming the disk, offset, object key and the damaged chunk's own byte range, and what to do", async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 3);
    const r = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats.uploadedChunks).toBe(3);
    // Damage the second chunk of the disk, where the manifest says it is in its pack.
    const id = chunkId(keys, data.subarray(CHUNK, 2 * CHUNK));
    const loc = chunkLocation(await manifestOf(store, 'b1', 'd'), id);
    store.objects.get(loc.key)![loc.offset + 40]! ^= 0x10;
    await expect(restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target: await tempTarget() })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(
        new RegExp(
          `^disk 'd' offset ${CHUNK}: chunk ${id} in ${loc.key} bytes ${loc.offset}\\+${loc.length} is damaged: .*failed authentication.*; deep-verify the backup`,
        ),
      ),
    });
  });

  it('fails a restore naming the disk, offset and pack when the pack is missing, or shorter than the manifest says', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 2);
    await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    const loc = chunkLocation(await manifestOf(store, 'b1', 'd'), chunkId(keys, data.subarray(CHUNK)));
    const pack = store.objects.get(loc.key)!;
    store.objects.set(loc.key, pack.subarray(0, loc.offset + 100));
    // Both chunks are in the one run read, which comes back short: either may be named
    // (chunks lie in a pack in the order they were sealed, not always in disk order).
    await expect(restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target: await tempTarget() })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(
        new RegExp(
          `^disk 'd' offset (0|${CHUNK}): chunk .* in ${loc.key} bytes .* is damaged: the read of bytes \\d+\\+\\d+ returned \\d+ bytes \\(the pack is shorter than its manifest says\\)`,
        ),
      ),
    });
    store.objects.delete(loc.key);
    await expect(restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target: await tempTarget() })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(new RegExp(`^disk 'd' offset (0|${CHUNK}): chunk .* in ${loc.key} .* is damaged: it is missing`)),
    });
  });
});

describe('chunks sealed straight into packs by the chunk pool', () => {
  const text = (n: number, seed: number) => Buffer.from(`log ${seed}: backup volume snapshot chunk written\n`.repeat(Math.ceil(n / 40))).subarray(0, n);
  /** Random, text and zero chunks, and a partial last chunk. */
  const mixed = (chunks: number) =>
    Buffer.concat([
      ...Array.from({ length: chunks }, (_, i) => (i % 5 === 3 ? Buffer.alloc(CHUNK) : i % 3 === 0 ? text(CHUNK, i) : randomBytes(CHUNK))),
      randomBytes(1000),
    ]);

  /** Every pack of a manifest read back whole: its trailer lists chunks back to back from 0, exactly those the manifest places in it, each of which opens to its id. */
  async function checkPacks(store: MemoryObjectStore, backupId: string, diskId: string, packBytes: number, parallelism: number) {
    const m = await manifestOf(store, backupId, diskId);
    const capacity = packBytes + parallelism * sealedCapacity(CHUNK) + 64 * 1024;
    for (const [p, ref] of m.packs!.entries()) {
      const body = store.objects.get(objectKeys.pack(ref.id))!;
      expect(body.length).toBe(ref.size);
      expect(ref.size).toBeLessThanOrEqual(capacity);
      const { chunks } = readPackTrailer(keys, body, ref.id);
      let end = 0;
      for (const c of chunks) {
        expect(c.offset).toBe(end);
        end += c.length;
        expect(chunkId(keys, await open(keys, body.subarray(c.offset, c.offset + c.length), c.id))).toBe(c.id);
      }
      // Past the target only chunks that were in flight when it was reached.
      expect(chunks.filter((c) => c.offset >= packBytes).length).toBeLessThan(parallelism);
      const listed = Object.entries(m.locations!)
        .filter(([, [at]]) => at === p)
        .map(([id, [, offset]]) => ({ id, offset, length: m.storedSizes[id]! }));
      expect(chunks).toEqual(listed.sort((a, b) => a.offset - b.offset));
    }
    return m;
  }

  for (const workers of [1, 2]) {
    it(`backs up into packs that read back whole and restore byte-identical, with ${workers} worker${workers > 1 ? 's' : ''}`, async () => {
      const pool = new ChunkPool(workers);
      try {
        const store = new CountingStore();
        store.putDelayMs = 5; // chunks keep coming while packs upload
        const data = mixed(60);
        const packBytes = 6 * CHUNK;
        const r = await backupDisk({
          repository: new Repository(store, keys),
          pool,
          reader: reader(data),
          disk: disk('d', data),
          backupId: 'b1',
          chunkSize: CHUNK,
          packBytes,
        });
        expect(r.stats.zeroChunks).toBe(12);
        expect(r.stats.uploadedChunks).toBe(49);
        const m = await checkPacks(store, 'b1', 'd', packBytes, 8);
        expect(m.packs!.length).toBeGreaterThan(2);
        expect(r.stats.bytesStored).toBe([...store.objects.values()].reduce((n, b) => n + b.length, 0));
        const target = await tempTarget();
        await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target });
        expect((await readFile(target)).equals(data)).toBe(true);
      } finally {
        await pool.close();
      }
    });
  }

  it('a chunk that does not fit in its pack (sealed bigger than the writer was told, two workers) is sealed again into the next pack, and the disk restores byte-identical', async () => {
    const pool = new ChunkPool(2);
    const slots: (SharedSlot | SharedPack)[] = [];
    try {
      const store = new MemoryObjectStore();
      const data = Buffer.concat([randomBytes(6 * CHUNK), text(4 * CHUNK, 1)]);
      const count = data.length / CHUNK;
      // Buffers sized for chunks a quarter of what the random ones seal to, while ten are sealed at once.
      const writer = new PackWriter({
        store: store,
        keys: keys,
        targetBytes: 2 * CHUNK,
        maxChunkBytes: sealedCapacity(CHUNK) >> 2,
        maxInFlight: 8,
        trailerRoom: 0,
        newBuffer: (n) => {
          const p = pool.sharePack(n);
          slots.push(p);
          return p;
        },
      });
      const seen: Placement[] = [];
      const ids = await Promise.all(
        Array.from({ length: count }, async (_, i) => {
          const slot = pool.share(CHUNK);
          slots.push(slot);
          data.copy(slot.bytes, 0, i * CHUNK, (i + 1) * CHUNK);
          const id = chunkId(keys, slot.bytes);
          const at = await writer.place(id, async (pack) => {
            const placed = await pool.sealSlot(keys, slot, CHUNK, id, {}, pack);
            seen.push(placed);
            return placed;
          });
          return { id, at };
        }),
      );
      await writer.finish();
      expect(seen.filter((p) => !p.fit).length).toBeGreaterThan(0);
      expect(seen.filter((p) => p.fit)).toHaveLength(count);
      const where = new Map(ids.map(({ id, at }) => [id, at]));
      const sizes = new Map(writer.written.map((w) => [w.pack.id, w.pack.size]));
      const manifest = packedManifest(
        { backupId: 'b1', diskId: 'd', sizeBytes: data.length, chunkSize: CHUNK },
        ids.map((c) => c.id),
        (id) => {
          const at = where.get(id)!;
          return { pack: { id: at.packId, size: sizes.get(at.packId)! }, key: objectKeys.pack(at.packId), offset: at.offset, length: at.length };
        },
      );
      await store.put(objectKeys.manifest('b1', 'd'), await encodeManifest(keys, manifest));
      for (const w of writer.written) expect(readPackTrailer(keys, store.objects.get(objectKeys.pack(w.pack.id))!, w.pack.id)).toEqual(w);
      const target = await tempTarget();
      await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b1', diskId: 'd', target });
      expect((await readFile(target)).equals(data)).toBe(true);
    } finally {
      for (const s of slots) pool.unshare(s);
      await pool.close();
    }
  });
});

describe('restore falls back to another copy the index lists (a quarantined chunk stored again)', () => {
  /**
   * A disk whose chunk A is at offsets 0 and 2: backup b1 stores it in a pack, backup b2
   * (the job names A in healChunks) stores it again in a new pack, as after a deep
   * verification quarantined b1's copy. Returns b1's location of A.
   */
  const twoCopies = async (store: CountingStore, data: Buffer) => {
    const b1 = await backupDisk({ repository: new Repository(store, keys), reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    const a = chunkId(keys, data.subarray(0, CHUNK));
    const b2 = await backupDisk({
      repository: new Repository(store, keys),
      reader: reader(data),
      disk: disk('d', data),
      backupId: 'b2',
      chunkSize: CHUNK,
      parentBackupId: 'b1',
      parentManifestKey: b1.manifestKey,
      healChunks: new Set([a]),
    });
    expect(b2.stats.uploadedChunks).toBe(1);
    const first = chunkLocation(await manifestOf(store, 'b1', 'd'), a);
    expect(chunkLocation(await manifestOf(store, 'b2', 'd'), a).key).not.toBe(first.key);
    return first;
  };

  it('restores a damaged chunk from its other copy', async () => {
    const store = new CountingStore();
    const data = Buffer.concat([randomBytes(CHUNK), randomBytes(CHUNK)]);
    const loc = await twoCopies(store, data);
    store.objects.get(loc.key)![loc.offset + 50]! ^= 1;
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });

  // BUG (mover/pipeline/restore-disk.ts, restoreChunk): the copy found through the index is
  // written at the chunk's first offset only. For the chunk's other offsets the run's body is
  // used again: when it is missing (`body && ...` is undefined) those offsets are silently
  // left unwritten (a hole: zeros in the restored disk, and the restore reports success);
  // when it is damaged the restore fails though a good copy exists. Flip these to it() once fixed.
  it('restores a chunk repeated in the disk from its other copy at every offset, when its pack is missing', async () => {
    const store = new CountingStore();
    const block = randomBytes(CHUNK);
    const data = Buffer.concat([block, Buffer.alloc(CHUNK), block]);
    const loc = await twoCopies(store, data);
    store.objects.delete(loc.key);
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).subarray(2 * CHUNK).equals(block)).toBe(true);
  });

  it('restores a chunk repeated in the disk from its other copy at every offset, when its copy is damaged', async () => {
    const store = new CountingStore();
    const block = randomBytes(CHUNK);
    const data = Buffer.concat([block, randomBytes(CHUNK), block]);
    const loc = await twoCopies(store, data);
    store.objects.get(loc.key)![loc.offset + 50]! ^= 1;
    const target = await tempTarget();
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });
});
