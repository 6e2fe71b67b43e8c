/**
 * Garbage collection paced by the chunks' bytes. Each seal and open leaves chunk-sized
 * garbage outside the isolate's small JS heap (the cipher's output) behind tiny wrapper
 * objects; V8 alone gets round to it only after tens of MiB piled up, and the allocator
 * keeps those pages (a fully resident arena per worker). A young-generation collection
 * every few MiB of chunks (under a millisecond) frees them; a full one now and then what
 * got older.
 *
 * The pace is in bytes, not chunks: what piles up is as large as the chunks, and a
 * collection costs about the same whatever it frees. Counted in chunks, a disk of small
 * chunks paid a full collection every 64 KiB (most of its worker's time: bench/MEASUREMENTS.md).
 *
 * On a worker, a young collection every 8 MiB (16 chunks of 512 KiB) and a full one every
 * 32 MiB was the fastest of the paces tried (bench/MEASUREMENTS.md). The main thread's heap
 * is large (the AWS SDK), so it gets young collections only.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let collect: ((options: { type: 'minor' | 'major' }) => void) | undefined;

/** V8's collector of this thread (exposed once). */
function collector(): (options: { type: 'minor' | 'major' }) => void {
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as (options: { type: 'minor' | 'major' }) => void;
  }
  return collect;
}

/** A full collection of this thread's heap now. */
export function collectGarbage(): void {
  collector()({ type: 'major' });
}

/**
 * A function to call after each chunk with its bytes: it collects once `every` bytes went
 * by since the last collection, a full collection every `fullEvery`-th time (never when unset).
 */
export function pacedCollector(every: number, fullEvery?: number): (bytes: number) => void {
  const gc = collector();
  let since = 0;
  let collections = 0;
  return (bytes) => {
    since += bytes;
    if (since < every) return;
    since = 0;
    gc({ type: fullEvery && ++collections % fullEvery === 0 ? 'major' : 'minor' });
  };
}
