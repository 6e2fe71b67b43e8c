/**
 * The live heap a piece of code holds: sampled after a full collection, so what is counted
 * is what is still referenced (the memory tests of streaming readers and of the restore).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
/** A full collection (what is still referenced is what the code holds). */
const gc = runInNewContext('gc') as () => void;

export const MiB = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

export function liveHeap(): number {
  gc();
  return process.memoryUsage().heapUsed;
}

/**
 * Runs `fn`, sampling the live heap every 250 ms (a full collection each time), or less
 * often while a collection takes long: the next sample waits at least 4 times as long as
 * the last one took, so sampling costs at most a fifth of the time. On a loaded machine a
 * full collection can take a second: sampled every 250 ms, the code measured got almost
 * nothing of it. Prints and returns the peak above the start.
 */
export async function peakHeap(label: string, fn: () => Promise<void>): Promise<number> {
  const base = liveHeap();
  let peak = base;
  let timer: NodeJS.Timeout | undefined;
  const sample = () => {
    const started = performance.now();
    peak = Math.max(peak, liveHeap());
    return performance.now() - started;
  };
  const next = (took: number) => {
    timer = setTimeout(() => next(sample()), Math.max(250, 4 * took));
  };
  next(0);
  try {
    await fn();
  } finally {
    clearTimeout(timer);
    sample();
  }
  console.log(`${label}, peak live heap +${MiB(peak - base)}`);
  return peak - base;
}
