/**
 * The export's read-ahead (mover/recovery/read-ahead.ts): interleaved sequential streams are
 * each followed, fetching comes in batches, random reads fetch nothing, and the streams
 * together stay within their budget.
 */
import { describe, expect, it } from 'vitest';
import { ReadAheadStreams, type ChunkRange } from '../mover/recovery/read-ahead.ts';
import { prng } from './helpers/prng.ts';

const CS = 1024 * 1024;
const READ = 256 * 1024;

/** Every chunk index the ranges cover, in order of fetching. */
const covered = (ranges: ChunkRange[]) => ranges.flatMap((r) => Array.from({ length: r.until - r.from }, (_, i) => r.from + i));

describe('read-ahead streams', () => {
  it('follows four interleaved sequential streams, each a window ahead, fetched in batches', () => {
    const ra = new ReadAheadStreams({ chunkBytes: CS, chunks: 4096, windowChunks: 16, budgetChunks: 128 });
    const starts = [0, 128, 256, 384].map((c) => c * CS);
    const ranges: ChunkRange[][] = [[], [], [], []];
    // As nbdcopy reads: four connections, their 256 KiB requests arriving in turn.
    for (let step = 0; step < 4 * 64; step++) {
      for (let s = 0; s < 4; s++) {
        const r = ra.next(starts[s]! + step * READ, READ);
        if (r) ranges[s]!.push(r);
      }
    }
    expect(ra.count).toBe(4);
    for (let s = 0; s < 4; s++) {
      const first = starts[s]! / CS;
      const chunks = covered(ranges[s]!);
      // Every chunk after the stream's first, up to its position plus the window, fetched once, in order.
      expect(chunks).toEqual(Array.from({ length: chunks.length }, (_, i) => first + 1 + i));
      expect(chunks[chunks.length - 1]).toBeGreaterThanOrEqual(first + 64 + 8 - 1);
      expect(chunks[chunks.length - 1]).toBeLessThanOrEqual(first + 64 + 16);
      // Batches of at least half a window once it runs (the first ones may be shorter).
      for (const r of ranges[s]!.slice(1)) expect(r.until - r.from).toBeGreaterThanOrEqual(8);
    }
  });

  it('takes requests that overtake each other as one stream', () => {
    const ra = new ReadAheadStreams({ chunkBytes: CS, chunks: 1024, windowChunks: 16, budgetChunks: 64 });
    const order = [0, 2, 1, 3, 5, 4, 7, 6, 9, 8, 10, 12, 11];
    const ranges = order.map((i) => ra.next(i * READ, READ)).filter((r) => r !== undefined);
    expect(ra.count).toBe(1);
    expect(covered(ranges)[0]).toBe(1);
  });

  it('fetches nothing for random reads, and nothing with a window of 0', () => {
    const rand = prng(7);
    const ra = new ReadAheadStreams({ chunkBytes: CS, chunks: 100_000, windowChunks: 16, budgetChunks: 64 });
    for (let i = 0; i < 500; i++) expect(ra.next(rand(100_000) * CS + 512, 4096)).toBeUndefined();
    expect(ra.count).toBe(8);
    const off = new ReadAheadStreams({ chunkBytes: CS, chunks: 100, windowChunks: 0, budgetChunks: 64 });
    for (let i = 0; i < 50; i++) expect(off.next(i * READ, READ)).toBeUndefined();
  });

  it('shares the budget among the streams and never runs past the disk', () => {
    const ra = new ReadAheadStreams({ chunkBytes: CS, chunks: 100, windowChunks: 32, budgetChunks: 16 });
    ra.next(0, READ);
    const one = ra.next(READ, READ)!;
    expect(one.until - one.from).toBeLessThanOrEqual(16);
    ra.next(50 * CS, READ);
    const two = ra.next(50 * CS + READ, READ)!;
    expect(two.until - two.from).toBeLessThanOrEqual(8);
    const end = ra.next(98 * CS, READ) ?? ra.next(98 * CS + READ, READ);
    expect(end === undefined || end.until <= 100).toBe(true);
  });
});
