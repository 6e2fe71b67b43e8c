/**
 * Opening one chunk for a restore, the same on a worker thread (chunk-worker.ts) and on
 * the main thread (ChunkPool.openHere): decrypt, decompress, check its length and keyed
 * id, and write it at its offset under the pool's write lock.
 */
import { writeSync } from 'node:fs';
import { chunkId, openSync, type RepositoryKeys } from '../../repository/format.ts';

/**
 * Runs `write` holding the lock word `lock` (0 free, 1 held; waiters sleep in
 * Atomics.wait): one writer at a time per pool, see ChunkPool's writeLock.
 */
export function withWriteLock(lock: Int32Array | undefined, write: () => void): void {
  if (!lock) return write();
  while (Atomics.compareExchange(lock, 0, 0, 1) !== 0) Atomics.wait(lock, 0, 1);
  try {
    write();
  } finally {
    Atomics.store(lock, 0, 0);
    Atomics.notify(lock, 0, 1);
  }
}

/** This thread's buffer for plaintexts that are written before openChunk returns. */
let plainScratch = Buffer.alloc(0);

/**
 * Opens `body` as chunk `id` of `length` bytes: 'mismatch' when it opens to other bytes
 * (swapped, or the wrong length); with `write`, writes the plaintext at `write.offset` of
 * `write.fd` (and `plain` is then valid only until the next call). Throws Corrupt when it fails authentication or does not decompress.
 */
export function openChunk(
  keys: RepositoryKeys,
  body: Uint8Array,
  id: string,
  length: number,
  write: { fd: number; offset: number } | undefined,
  lock: Int32Array | undefined,
): { mismatch: true } | { mismatch: false; plain: Buffer } {
  // Written here and now: decompressed into this thread's reused buffer (no chunk-sized garbage).
  if (write && plainScratch.length < length + 1) plainScratch = Buffer.allocUnsafeSlow(length + 1);
  const plain = openSync(keys, body, id, write ? { expectedLength: length, into: plainScratch.subarray(0, length + 1) } : { expectedLength: length });
  if (plain.length !== length || chunkId(keys, plain) !== id) return { mismatch: true };
  if (write) {
    withWriteLock(lock, () => {
      for (let done = 0; done < plain.length; ) done += writeSync(write.fd, plain, done, plain.length - done, write.offset + done);
    });
  }
  return { mismatch: false, plain };
}
