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

/** Runs `fn`, sampling the live heap every 250 ms (a full collection each time); prints and returns the peak above the start. */
export async function peakHeap(label: string, fn: () => Promise<void>): Promise<number> {
  const base = liveHeap();
  let peak = base;
  const sample = () => {
    peak = Math.max(peak, liveHeap());
  };
  const timer = setInterval(sample, 250);
  try {
    await fn();
  } finally {
    clearInterval(timer);
    sample();
  }
  console.log(`${label}, peak live heap +${MiB(peak - base)}`);
  return peak - base;
}
