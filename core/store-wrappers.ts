/**
 * Cross-cutting storage behaviour as wrappers: each implements ObjectStore around
 * another, so the upload loop stays free of retry, limit and throttling code.
 */
import type { ObjectInfo, ObjectStore } from './object-store.ts';

const TRANSIENT_STATUS = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_NAMES = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'InternalError', 'ServiceUnavailable', 'TimeoutError']);
const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN']);

/** True for throttling, 5xx and connection failures, anywhere along the `cause` chain. */
export function isTransient(err: unknown): boolean {
  for (let e = err as Record<string, unknown> | undefined, depth = 0; e && depth < 5; e = e.cause as Record<string, unknown> | undefined, depth++) {
    const status = (e.$metadata as { httpStatusCode?: number } | undefined)?.httpStatusCode;
    if (status !== undefined && TRANSIENT_STATUS.has(status)) return true;
    if (typeof e.name === 'string' && TRANSIENT_NAMES.has(e.name)) return true;
    if (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code)) return true;
  }
  return false;
}

export interface RetryOptions {
  attempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  onRetry?: (info: { op: string; key: string; attempt: number; delayMs: number; error: unknown }) => void;
}

/** Retries transient failures with exponential backoff and full jitter. */
export function withRetry(inner: ObjectStore, o: RetryOptions = {}): ObjectStore {
  const attempts = o.attempts ?? 5;
  const base = o.baseDelayMs ?? 200;
  const max = o.maxDelayMs ?? 10_000;
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((ok) => setTimeout(ok, ms)));
  const random = o.random ?? Math.random;
  const retry = async <T>(op: string, key: string, fn: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (attempt >= attempts || !isTransient(err)) throw err;
        const delayMs = random() * Math.min(max, base * 2 ** (attempt - 1));
        o.onRetry?.({ op, key, attempt, delayMs, error: err });
        await sleep(delayMs);
      }
    }
  };
  return {
    put: (key, body, sha256) => retry('put', key, () => inner.put(key, body, sha256)),
    get: (key) => retry('get', key, () => inner.get(key)),
    head: (key) => retry('head', key, () => inner.head(key)),
  };
}

/** At most `limit` operations in flight; the rest wait in order. */
export function withConcurrencyLimit(inner: ObjectStore, limit: number): ObjectStore {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency limit must be a positive whole number, got ${limit}`);
  let active = 0;
  const waiting: (() => void)[] = [];
  const run = async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= limit) await new Promise<void>((ok) => waiting.push(ok));
    else active++;
    try {
      return await fn();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
  return {
    put: (key, body, sha256) => run(() => inner.put(key, body, sha256)),
    get: (key) => run(() => inner.get(key)),
    head: (key) => run(() => inner.head(key)),
  };
}

export interface BandwidthOptions {
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Bytes that may pass at once after idle time (default: one second's worth). */
  burstBytes?: number;
}

/** A token bucket on bytes moved (PUT bodies, GET results); HEAD is free. For WAN links. */
export function withBandwidthLimit(inner: ObjectStore, bytesPerSecond: number, o: BandwidthOptions = {}): ObjectStore {
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) throw new RangeError(`bandwidth limit must be a positive number of bytes per second, got ${bytesPerSecond}`);
  const now = o.now ?? (() => performance.now());
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((ok) => setTimeout(ok, ms)));
  const burst = o.burstBytes ?? bytesPerSecond;
  let tokens = burst;
  let last = now();
  let queue = Promise.resolve();
  const take = (bytes: number) => {
    // Serialised, so concurrent transfers share the budget instead of each spending it.
    const turn = queue.then(async () => {
      const t = now();
      tokens = Math.min(burst, tokens + ((t - last) / 1000) * bytesPerSecond);
      last = t;
      tokens -= bytes;
      if (tokens < 0) await sleep((-tokens / bytesPerSecond) * 1000);
    });
    queue = turn;
    return turn;
  };
  return {
    put: async (key, body, sha256) => {
      await take(body.byteLength);
      return inner.put(key, body, sha256);
    },
    get: async (key) => {
      const body = await inner.get(key);
      if (body) await take(body.length);
      return body;
    },
    head: (key): Promise<ObjectInfo | undefined> => inner.head(key),
  };
}
