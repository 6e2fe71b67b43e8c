/**
 * A pack buffer that sealed chunks are written straight into (by the chunk pool's worker
 * threads, or by the calling thread), and its layout, kept here only:
 *
 * ```
 * 0            capacity         capacity + 4
 * | pack bytes | cursor (Int32) |
 * ```
 *
 * `capacity` is a multiple of 4 (the cursor is an aligned Int32). The cursor is the bytes
 * reserved so far: a sealer compresses first (the sealed size is then known), reserves its
 * place with `Atomics.add(cursor, 0, size)`, and writes its envelope there only when it
 * fits within `capacity`; else the pack is full for it and nothing is written. The cursor
 * only grows, so every reservation after one that did not fit does not fit either: the
 * chunks placed lie back to back from byte 0, and any number of threads may seal into one
 * pack at once. Only the pack writer (pack-writer.ts) resets the cursor, on a buffer no
 * sealer holds.
 */
import { sealSync, type RepositoryKeys, type SealOptions } from './format.ts';

const CURSOR_BYTES = 4;
/** The largest capacity: reservations past it must still read as positive 31-bit offsets for a while. */
const MAX_CAPACITY = 0x4000_0000;

/** A pack buffer's memory as the layout above divides it. */
export interface PackBuffer {
  /** The whole buffer: pack bytes and cursor (what is shared with the workers). */
  readonly sab: SharedArrayBuffer;
  /** The pack bytes, `capacity` of them. */
  readonly bytes: Buffer;
  /** One word: the bytes reserved so far. */
  readonly cursor: Int32Array;
  readonly capacity: number;
}

/** A sealed chunk's size, and where it was written in a pack buffer, or that it did not fit (nothing written). */
export type Placement = { fit: true; offset: number; sealedLength: number } | { fit: false; sealedLength: number };

/** A new pack buffer of at least `capacity` bytes of pack (rounded up to a multiple of 4), cursor at 0; memory is resident only once written. */
export function newPackBuffer(capacity: number): PackBuffer {
  if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity > MAX_CAPACITY)
    throw new RangeError(`a pack buffer of ${capacity} bytes cannot be made (at most ${MAX_CAPACITY})`);
  return packBufferOf(new SharedArrayBuffer(Math.ceil(capacity / 4) * 4 + CURSOR_BYTES));
}

/** The layout of a pack buffer's memory (as shared with a worker). */
export function packBufferOf(sab: SharedArrayBuffer): PackBuffer {
  const capacity = sab.byteLength - CURSOR_BYTES;
  if (capacity <= 0 || capacity % 4 !== 0) throw new RangeError(`a shared buffer of ${sab.byteLength} bytes is not a pack buffer`);
  return { sab, bytes: Buffer.from(sab, 0, capacity), cursor: new Int32Array(sab, capacity, 1), capacity };
}

/** Bytes reserved in `p` so far: placed, being written, or reserved past the end by chunks that did not fit. */
export const reserved = (p: PackBuffer): number => Atomics.load(p.cursor, 0);

/** Makes `p` empty again: only while no sealer holds it. */
export function resetPackBuffer(p: PackBuffer): void {
  Atomics.store(p.cursor, 0, 0);
}

/**
 * Seals `plaintext` (format.ts `sealSync`, the same bytes) straight into the next free
 * bytes of `p`, reserved once compression told its size. Safe on any number of threads at once.
 */
export function sealIntoPack(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string, opts: SealOptions, p: PackBuffer): Placement {
  let offset = -1;
  let needed = 0;
  const sealed = sealSync(keys, plaintext, purpose, opts, (size) => {
    needed = size;
    const at = Atomics.add(p.cursor, 0, size);
    // A cursor pushed past 2^31 by reservations that did not fit would read negative: full too.
    if (at < 0 || at + size > p.capacity) return undefined;
    offset = at;
    return p.bytes.subarray(at, at + size);
  });
  return sealed ? { fit: true, offset, sealedLength: sealed.length } : { fit: false, sealedLength: needed };
}
