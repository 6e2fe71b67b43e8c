/**
 * Garbage collection paced by the chunks. Each seal and open leaves chunk-sized garbage
 * outside the isolate's small JS heap (the cipher's output) behind tiny wrapper objects;
 * V8 alone gets round to it only after tens of MiB piled up, and the allocator keeps those
 * pages (a fully resident arena per worker). A young-generation collection every few chunks
 * (under a millisecond) frees them; a full one now and then what got older.
 *
 * On a worker, a young collection every 16 chunks and a full one every 64 was the fastest of
 * the paces tried (bench/MEASUREMENTS.md). The main thread's heap is large (the AWS SDK), so
 * it gets young collections only.
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

/** A function to call after each chunk: it collects every `every` calls, a full collection every `fullEvery`-th time (never when unset). */
export function pacedCollector(every: number, fullEvery?: number): () => void {
  const gc = collector();
  let since = 0;
  let collections = 0;
  return () => {
    if (++since < every) return;
    since = 0;
    gc({ type: fullEvery && ++collections % fullEvery === 0 ? 'major' : 'minor' });
  };
}
