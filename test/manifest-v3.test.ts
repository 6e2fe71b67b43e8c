/**
 * Manifest format 3 (repository/manifest/): pieces round-trip entry for entry, heads and
 * pieces are checked on reading, and a manifest of 16 million entries is written and read
 * as a stream in bounded memory (the peak is printed).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { deriveKeys, objectKeys, open, seal } from '../repository/format.ts';
import { pieceKey, piecePurpose } from '../repository/manifest/head.ts';
import { ENTRY_BYTES, Piece, PieceBuilder } from '../repository/manifest/piece.ts';
import { ManifestCursor, ManifestReader } from '../repository/manifest/reader.ts';
import { ManifestWriter } from '../repository/manifest/writer.ts';

const keys = deriveKeys(Buffer.alloc(32, 7));
const hex = (n: number) => randomBytes(n).toString('hex');

/** A deterministic pseudo-random entry for chunk `i` (zero for some). */
function entryOf(i: number, packs: string[]): { id: string; packId: string; offset: number; length: number } | null {
  if (i % 7 === 3) return null;
  const id = ((i * 2654435761) >>> 0).toString(16).padStart(8, '0').repeat(8);
  return { id, packId: packs[i % packs.length]!, offset: (i * 97) % 1000, length: 100 + (i % 50) };
}

describe('manifest format 3', () => {
  it('round-trips a piece entry for entry, zeros included, with its pack table', () => {
    const packs = [hex(16), hex(16), hex(16)];
    const b = new PieceBuilder(5_000_000_000, 100);
    const want: ReturnType<typeof entryOf>[] = [];
    for (let i = 0; i < 100; i++) {
      const e = entryOf(i, packs);
      want.push(e);
      if (e) b.add(e.id, e.packId, e.offset, e.length);
      else b.addZero();
    }
    const sizes = b.packs.map(() => 2000);
    const piece = Piece.decode(b.encode(sizes), 'test');
    expect(piece.firstChunk).toBe(5_000_000_000);
    expect(piece.count).toBe(100);
    for (let i = 0; i < 100; i++) {
      const e = want[i]!;
      expect(piece.id(i)).toBe(e?.id ?? null);
      const w = piece.where(i);
      if (!e) expect(w).toBeUndefined();
      else expect({ pack: piece.packs[w!.pack]!.id, offset: w!.offset, length: w!.length }).toEqual({ pack: e.packId, offset: e.offset, length: e.length });
    }
  });

  it('refuses a piece that is cut short, names a pack it lacks, or reaches past its pack', () => {
    const b = new PieceBuilder(0, 2);
    b.add('ab'.repeat(32), 'cd'.repeat(16), 10, 20);
    b.addZero();
    const good = b.encode([30]);
    expect(() => Piece.decode(good.subarray(0, good.length - 1), 'p')).toThrow(/manifest piece p is inconsistent: .* bytes/);
    const pastEnd = b.encode([29]);
    expect(() => Piece.decode(pastEnd, 'p')).toThrow(/ends at 30, past the end of pack/);
    const badPack = Buffer.from(good);
    badPack.writeUInt32BE(5, 24 + 20 + 32);
    expect(() => Piece.decode(badPack, 'p')).toThrow(/names pack 5 of 1/);
    const badMagic = Buffer.from(good);
    badMagic[0] = 0;
    expect(() => Piece.decode(badMagic, 'p')).toThrow(/no piece header/);
  });

  it('survives random bytes: every piece parser outcome is a piece or a Corrupt naming it', () => {
    const b = new PieceBuilder(3, 8);
    for (let i = 0; i < 8; i++) b.add(hex(32), hex(16), 0, 10);
    const good = b.encode(b.packs.map(() => 10));
    for (let n = 0; n < 2000; n++) {
      const m = Buffer.from(good);
      for (let k = 0; k < 1 + (n % 4); k++) m[(n * 7919 + k * 104729) % m.length] = (n * 31 + k) & 0xff;
      try {
        const p = Piece.decode(m, 'fuzz');
        for (let i = 0; i < p.count; i++) p.where(i);
      } catch (err) {
        expect((err as Error).name).toBe('Mover.Corrupt');
        expect((err as Error).message).toMatch(/manifest piece fuzz/);
      }
    }
  });

  it('streams a manifest through a writer and reads it back in disk order, waiting for packs to land', async () => {
    const store = new MemoryObjectStore();
    const packs = [hex(16), hex(16), hex(16), hex(16)];
    const count = 1000;
    // The packs land only when the writer, waiting for them, asks for the open pack to be flushed.
    let flushes = 0;
    const w: ManifestWriter = new ManifestWriter({
      store,
      keys,
      backupId: 'b1',
      manifestId: 'disk0',
      sizeBytes: count * 4096 - 100,
      chunkSize: 4096,
      pieceEntries: 128,
      flushPacks: () => {
        flushes++;
        for (const p of packs) w.packLanded(p, 5000);
      },
    });
    for (let i = 0; i < count; i++) await w.add(entryOf(i, packs));
    expect(flushes).toBeGreaterThan(0);
    const { key, bytes } = await w.finish();
    expect(key).toBe(objectKeys.manifest('b1', 'disk0'));
    const stored = [...store.objects.entries()].filter(([k]) => k.startsWith('manifests/b1/')).reduce((n, [, b]) => n + b.length, 0);
    expect(bytes).toBe(stored);
    const r = (await ManifestReader.open(store, keys, 'b1', 'disk0'))!;
    expect(r.info).toMatchObject({ version: 3, from: 0, to: count, chunkSize: 4096 });
    expect(r.pieces()).toHaveLength(Math.ceil(count / 128));
    let next = 0;
    for await (const batch of r.batches()) {
      expect(batch.firstChunk).toBe(next);
      for (let i = 0; i < batch.count; i++, next++) {
        const e = entryOf(next, packs);
        expect(batch.id(i)).toBe(e?.id ?? null);
        const loc = batch.location(i);
        if (e) expect(loc).toEqual({ pack: { id: e.packId, size: 5000 }, key: objectKeys.pack(e.packId), offset: e.offset, length: e.length });
      }
    }
    expect(next).toBe(count);
    // A cursor walks it in step, from any chunk on.
    const c = new ManifestCursor(r, 300);
    for (const i of [300, 301, 555, 999]) {
      expect((await c.at(i))!.id).toBe(entryOf(i, packs)?.id ?? null);
    }
    expect(await c.at(1000)).toBeUndefined();
  });

  it('refuses a head whose pieces leave a gap, and a piece stored for another place', async () => {
    const store = new MemoryObjectStore();
    const w = new ManifestWriter({ store, keys, backupId: 'b2', manifestId: 'd', sizeBytes: 10 * 4096, chunkSize: 4096, pieceEntries: 4 });
    for (let i = 0; i < 10; i++) await w.add(null);
    await w.finish();
    // Swap two pieces: each is sealed for its own key, so neither opens in the other's place.
    const [k0, k4] = [pieceKey('b2', 'd', 0), pieceKey('b2', 'd', 4)];
    const p0 = store.objects.get(k0)!;
    store.objects.set(k0, store.objects.get(k4)!);
    store.objects.set(k4, p0);
    const r = (await ManifestReader.open(store, keys, 'b2', 'd'))!;
    await expect(async () => {
      for await (const _ of r.batches()) {
        /* read */
      }
    }).rejects.toThrow(/failed authentication/);
    // A head with a gap.
    const head = JSON.parse((await open(keys, store.objects.get(r.key)!, 'manifest:b2/d')).toString()) as { pieces: number[][] };
    head.pieces[1]![1] = 5;
    store.objects.set(r.key, await seal(keys, Buffer.from(JSON.stringify(head)), 'manifest:b2/d'));
    await expect(ManifestReader.open(store, keys, 'b2', 'd')).rejects.toThrow(/piece 1 starts at chunk 5, the pieces before it end at 4/);
    // A missing piece is named.
    store.objects.delete(k0);
    store.objects.set(
      r.key,
      await seal(
        keys,
        Buffer.from(
          JSON.stringify({
            ...head,
            pieces: [
              [0, 0, 4, 1],
              [0, 4, 4, 1],
              [0, 8, 2, 1],
            ],
          }),
        ),
        'manifest:b2/d',
      ),
    );
    const r2 = (await ManifestReader.open(store, keys, 'b2', 'd'))!;
    await expect(async () => {
      for await (const _ of r2.batches()) {
        /* read */
      }
    }).rejects.toThrow(new RegExp(`piece ${k0} is missing`));
    expect(piecePurpose(k0)).toBe(`manifest-piece:${k0}`);
  });

  it('stores at most 48 bytes per chunk for random chunk ids (printed), 32 chunks per pack, 1 in 64 a zero', async () => {
    const store = new MemoryObjectStore();
    const count = 262_144;
    const w = new ManifestWriter({ store, keys, backupId: 'size', manifestId: 'd', sizeBytes: count * 262_144, chunkSize: 262_144 });
    let pack = hex(16);
    let stored = 0;
    for (let i = 0; i < count; i++) {
      if (i % 64 === 63) {
        await w.add(null);
        continue;
      }
      if (stored++ % 32 === 0) w.packLanded((pack = hex(16)), 8_400_000);
      await w.add({ id: hex(32), packId: pack, offset: (i * 262_000) % 8_000_000, length: 262_000 });
    }
    const { bytes } = await w.finish();
    console.log(`manifest v3: ${count} entries, ${stored} stored, ${bytes} bytes: ${(bytes / stored).toFixed(2)} bytes per stored chunk`);
    expect(bytes / stored).toBeLessThanOrEqual(48);
  });

  it('writes and reads 16 million entries in bounded memory', async () => {
    // Every 16th chunk stored, the rest zeros: 1 million ids; the store keeps only what
    // zstd left of the pieces, so what grows with the disk would show in the heap.
    const store = new MemoryObjectStore();
    const count = 16 * 1024 * 1024;
    const pack = hex(16);
    const w = new ManifestWriter({ store, keys, backupId: 'big', manifestId: 'disk0', sizeBytes: count * 4096, chunkSize: 4096 });
    w.packLanded(pack, 0xffff_fff0);
    let peakHeap = 0;
    const sample = () => {
      peakHeap = Math.max(peakHeap, process.memoryUsage().heapUsed);
    };
    const idOf = (i: number) => (i >>> 0).toString(16).padStart(8, '0').repeat(8);
    const startRss = process.memoryUsage().rss;
    for (let i = 0; i < count; i++) {
      const wait = w.add(i % 16 === 0 ? { id: idOf(i), packId: pack, offset: i % 1_000_000, length: 4000 } : null);
      if (wait) await wait;
      if (i % 1_000_000 === 0) sample();
    }
    const { bytes } = await w.finish();
    let seen = 0;
    let stored = 0;
    const r = (await ManifestReader.open(store, keys, 'big', 'disk0'))!;
    for await (const b of r.batches()) {
      for (let i = 0; i < b.count; i += 16) {
        expect(b.id(i)).toBe(idOf(b.firstChunk + i));
        stored++;
      }
      seen += b.count;
      if (b.firstChunk % 1_048_576 === 0) sample();
    }
    expect(seen).toBe(count);
    expect(stored).toBe(count / 16);
    const rss = process.memoryUsage().rss;
    // The stored manifest itself (ids are incompressible) is in the store's map; the heap beyond it is bounded.
    console.log(
      `manifest v3: ${count} entries (1 in 16 stored, ids of a repeating pattern: the bytes per chunk are measured by bench/big-disk.ts), ${bytes} sealed bytes; peak heap ${(peakHeap / 2 ** 20).toFixed(0)} MiB, RSS ${(startRss / 2 ** 20).toFixed(0)} -> ${(rss / 2 ** 20).toFixed(0)} MiB`,
    );
    expect(peakHeap - bytes).toBeLessThan(256 * 2 ** 20);
    expect(ENTRY_BYTES).toBeLessThanOrEqual(48);
  }, 1_200_000);
});
