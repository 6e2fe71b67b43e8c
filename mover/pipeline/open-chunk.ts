/**
 * Opening one chunk for a restore, the same on a worker thread (chunk-worker.ts) and on
 * the main thread (ChunkPool.openHere): decrypt, decompress, check its length and keyed
 * id, and copy it to where the caller wants it (a place in a shared buffer the restore
 * writes to its target in large runs: restore-disk.ts).
 */
import { chunkId, openSync, type RepositoryKeys } from '../../repository/format.ts';

/**
 * Chunks at least this long are decompressed straight into their place: below it, reading
 * the frame's header and resetting the decoder cost more than the copy they save (1 KiB
 * chunks: ~20 against ~27 µs a chunk; 512 KiB: ~630 against ~590 µs).
 */
const IN_PLACE_BYTES = 64 * 1024;

/** This thread's buffer for plaintexts that are copied out before openChunk returns. */
let plainScratch = Buffer.alloc(0);

/**
 * Opens `body` as chunk `id` of `length` bytes: 'mismatch' when it opens to other bytes
 * (swapped, or the wrong length). With `into` (exactly `length` bytes), the checked
 * plaintext ends up there, and `plain` is then valid only until the next call. A frame
 * of a large chunk that declares `length` bytes is decompressed straight into `into` (no copy); one that
 * then fails its check leaves `into` holding other bytes, which the caller must not use.
 * Throws Corrupt when it fails authentication or does not decompress.
 */
export function openChunk(
  keys: RepositoryKeys,
  body: Uint8Array,
  id: string,
  length: number,
  into: Uint8Array | undefined,
): { mismatch: true } | { mismatch: false; plain: Buffer } {
  if (into && into.length !== length) throw new RangeError(`a chunk of ${length} bytes cannot be opened into ${into.length} bytes`);
  // Otherwise into this thread's reused buffer, one byte larger than the chunk (so a longer
  // plaintext shows), then copied: `into`'s neighbours are other chunks.
  if (into && plainScratch.length < length + 1) plainScratch = Buffer.allocUnsafeSlow(length + 1);
  const plain = openSync(
    keys,
    body,
    id,
    into
      ? { expectedLength: length, into: plainScratch.subarray(0, length + 1), ...(length >= IN_PLACE_BYTES ? { exactInto: into } : {}) }
      : { expectedLength: length },
  );
  if (plain.length !== length || chunkId(keys, plain) !== id) return { mismatch: true };
  if (into && (plain.buffer !== into.buffer || plain.byteOffset !== into.byteOffset)) into.set(plain);
  return { mismatch: false, plain };
}
