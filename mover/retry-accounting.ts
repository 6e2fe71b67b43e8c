/**
 * Storage retries per task: the repository stores are shared by every task in flight, so
 * a retry is counted for the task whose async context made the request (an
 * AsyncLocalStorage), and the task's result reports them (`stats.storageRetries`), which
 * the Backup workflow's Summarize adds up into the run's `StorageRetries` metric.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { RetryCounter, type RetryInfo } from '../core/store-wrappers.ts';

const current = new AsyncLocalStorage<RetryCounter>();

/** `withRetry`'s onRetry: counts the retry for the task in flight (none: a registration write, say). */
export const countForTask = (info: RetryInfo): void => current.getStore()?.add(info.op);

/** Runs a task counting its storage retries; a result with `stats` gets `stats.storageRetries`. */
export async function withTaskRetries<T>(run: () => Promise<T>): Promise<T> {
  const counter = new RetryCounter();
  const out = await current.run(counter, run);
  const stats = (out as { stats?: unknown } | null)?.stats;
  if (stats && typeof stats === 'object') (stats as { storageRetries?: number }).storageRetries = counter.total;
  return out;
}
