import { randomBytes } from 'node:crypto';
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { zstdBound, zstdCompressInto, zstdContentSize, zstdDecompressExact, zstdDecompressInto } from '../repository/zstd.ts';
import { prng } from './helpers/prng.ts';

/** Log-like text, compressible about 3:1 (as the bench image's text runs). */
const text = (bytes: number, seed: number) => {
  const rand = prng(seed);
  let s = '';
  while (s.length < bytes) s += `2026-11-26 host-${rand(17)} id=${rand(1 << 30).toString(16)} backup restore chunk\n`;
  return Buffer.from(s.slice(0, bytes), 'latin1');
};

describe('zstd into caller buffers with reused contexts (repository/zstd.ts)', () => {
  it("writes the same frames as zlib's zstdCompressSync, call after call, at each level", () => {
    for (const level of [undefined, 1, 3, 9]) {
      const params = level === undefined ? {} : { params: { [constants.ZSTD_c_compressionLevel]: level } };
      for (const [i, size] of [512 * 1024, 4096, 100_000, 512 * 1024, 1].entries()) {
        const input = text(size, i + (level ?? 0));
        const out = Buffer.alloc(size + 64);
        const n = zstdCompressInto(input, out, level);
        expect(n).toBeDefined();
        expect(out.subarray(0, n).equals(zstdCompressSync(input, params))).toBe(true);
      }
    }
  });

  it('answers undefined when the frame does not fit, and the next frame is whole again', () => {
    const random = randomBytes(64 * 1024);
    expect(zstdCompressInto(random, Buffer.alloc(random.length))).toBeUndefined(); // random data does not shrink
    const input = text(200_000, 7);
    const out = Buffer.alloc(input.length);
    const n = zstdCompressInto(input, out);
    expect(n).toBeLessThan(input.length / 2);
    expect(zstdDecompressSync(out.subarray(0, n)).equals(input)).toBe(true);
  });

  it('fits any input, random included, into zstdBound bytes', () => {
    for (const size of [0, 1, 100, 4096, 65_537, 512 * 1024]) {
      const input = randomBytes(size);
      const n = zstdCompressInto(input, Buffer.alloc(zstdBound(size)));
      expect(n).toBeGreaterThan(size); // random data only grows
      expect(n).toBeLessThanOrEqual(zstdBound(size));
    }
  });

  it('decompresses into the buffer given; a longer output is reported, not cut silently', () => {
    const input = text(300_000, 3);
    const frame = zstdCompressSync(input);
    const out = Buffer.alloc(input.length + 1);
    const n = zstdDecompressInto(frame, out);
    expect(n).toBe(input.length);
    expect(out.subarray(0, n).equals(input)).toBe(true);
    expect(zstdDecompressInto(frame, Buffer.alloc(input.length - 1))).toBeUndefined();
    // The context is usable after a frame that did not fit.
    expect(zstdDecompressInto(frame, out)).toBe(input.length);
  });

  it('throws on bytes that are not zstd, and works again after', () => {
    const input = text(50_000, 9);
    const frame = zstdCompressSync(input);
    const damaged = Buffer.from(frame);
    damaged[0]! ^= 0xff; // the magic number
    expect(() => zstdDecompressInto(damaged, Buffer.alloc(input.length + 1))).toThrow();
    const out = Buffer.alloc(input.length + 1);
    expect(zstdDecompressInto(frame, out)).toBe(input.length);
    expect(out.subarray(0, input.length).equals(input)).toBe(true);
  });

  it('a frame cut short gives fewer bytes than its plaintext (callers check the length and the id)', () => {
    const input = text(300_000, 11);
    const frame = zstdCompressSync(input);
    const out = Buffer.alloc(input.length + 1);
    let n: number | undefined;
    try {
      n = zstdDecompressInto(frame.subarray(0, frame.length >> 1), out);
    } catch {
      n = -1; // or an error: either way not the plaintext
    }
    expect(n).not.toBe(input.length);
    expect(zstdDecompressInto(frame, out)).toBe(input.length);
  });

  it('reads the plaintext size a frame declares, for every size field width, and none from bytes that are not zstd', () => {
    for (const size of [0, 1, 200, 256, 300, 65_791, 100_000, 512 * 1024]) {
      const frame = zstdCompressSync(text(size, size));
      expect(zstdContentSize(frame)).toBe(size);
      const out = Buffer.alloc(size + 1);
      expect(zstdDecompressInto(frame, out)).toBe(size);
      // As the pipelines make frames (one call, ZSTD_e_end): the size is declared too.
      const scratch = Buffer.alloc(zstdBound(size));
      expect(zstdContentSize(scratch.subarray(0, zstdCompressInto(text(size, size), scratch, 3)))).toBe(size);
    }
    expect(zstdContentSize(Buffer.from('not a zstd frame'))).toBeUndefined();
    expect(zstdContentSize(randomBytes(3))).toBeUndefined();
  });

  it('decompresses a frame straight into a buffer of exactly its size, and says false or throws for one that is not that size', () => {
    const input = text(512 * 1024, 21);
    const scratch = Buffer.alloc(zstdBound(input.length));
    const frame = Buffer.from(scratch.subarray(0, zstdCompressInto(input, scratch, 1)!));
    expect(zstdContentSize(frame)).toBe(input.length);
    const exact = Buffer.alloc(input.length);
    expect(zstdDecompressExact(frame, exact)).toBe(true);
    expect(exact.equals(input)).toBe(true);
    // A buffer one byte short: never written past, and not a whole frame.
    const room = Buffer.alloc(input.length + 8, 0xee);
    let whole: boolean;
    try {
      whole = zstdDecompressExact(frame, room.subarray(0, input.length - 1));
    } catch {
      whole = false; // zstd may report the declared size as wrong: either way not whole
    }
    expect(whole).toBe(false);
    expect(room.subarray(input.length - 1).every((b) => b === 0xee)).toBe(true);
    // A frame cut short is not whole either, and the context decodes the next frame whole.
    let cut: boolean;
    try {
      cut = zstdDecompressExact(frame.subarray(0, frame.length >> 1), Buffer.alloc(input.length));
    } catch {
      cut = false;
    }
    expect(cut).toBe(false);
    exact.fill(0);
    expect(zstdDecompressExact(frame, exact)).toBe(true);
    expect(exact.equals(input)).toBe(true);
  });
});
