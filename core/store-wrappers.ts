/**
 * Cross-cutting storage behaviour as wrappers: each implements ObjectStore around
 * another (like restic's backend wrappers), so the upload loop stays free of retry,
 * limit and throttling code. Each preserves the interface exactly and passes `sha256`
 * through on put.
 */
import type { ListedKey, ObjectInfo, ObjectStore } from './object-store.ts';

const TRANSIENT_STATUS = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_NAMES = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'InternalError', 'ServiceUnavailable', 'TimeoutError']);
const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN']);
const MAX_CAUSE_DEPTH = 8;

const defaultSleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));

/** One link of an error chain looks transient: throttling, 5xx, timeout or a dropped connection. */
function looksTransient(e: Record<string, unknown>): boolean {
  const meta = e.$metadata;
  const status = meta && typeof meta === 'object' ? (meta as { httpStatusCode?: unknown }).httpStatusCode : undefined;
  if (typeof status === 'number' && TRANSIENT_STATUS.has(status)) return true;
  if (typeof e.name === 'string' && TRANSIENT_NAMES.has(e.name)) return true;
  if (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code)) return true;
  return false;
}

/**
 * True when `err` may succeed if tried again: it is marked `retryable === true` (the
 * LifeboatError family, e.g. StorageUnavailable) and something along its `cause` chain
 * looks transient — HTTP 429/500/502/503/504 (`$metadata.httpStatusCode`), an S3
 * throttling or internal error name, a `TimeoutError`, or a Node connection error code.
 * A StorageUnavailable caused by 403 AccessDenied is not retryable.
 */
export function isRetryable(err: unknown): boolean {
  if (!err || typeof err !== 'object' || (err as { retryable?: unknown }).retryable !== true) return false;
  const seen = new Set<unknown>();
  let e: unknown = (err as { cause?: unknown }).cause;
  for (let depth = 0; e && typeof e === 'object' && !seen.has(e) && depth < MAX_CAUSE_DEPTH; depth++) {
    seen.add(e);
    if (looksTransient(e as Record<string, unknown>)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** What `withRetry` reports before it sleeps and tries an operation again. */
export interface RetryInfo {
  /** The ObjectStore method: 'put', 'get', 'head' or 'list'. */
  op: 'put' | 'get' | 'head' | 'list';
  key: string;
  /** The attempt that failed, from 1. */
  attempt: number;
  /** How long it waits before the next attempt. */
  delayMs: number;
  error: unknown;
}

/** Where `withRetry` writes its line per retry (the mover's logger, a function's Powertools logger). */
export interface RetryLogger {
  info(event: string, fields?: Record<string, unknown>): void;
}

/** Counts retries; `withRetry` adds one per retry, so a task or a run can report how many its storage took. */
export class RetryCounter {
  total = 0;
  readonly byOp: Partial<Record<RetryInfo['op'], number>> = {};
  add(op: RetryInfo['op']): void {
    this.total++;
    this.byOp[op] = (this.byOp[op] ?? 0) + 1;
  }
}

/**
 * The link of an error's cause chain that made it retryable, in a few words: the HTTP
 * status and error name, or the connection error code (`503 SlowDown`, `ECONNRESET`).
 */
export function retryCause(err: unknown): string {
  const seen = new Set<unknown>();
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && !seen.has(e) && depth < MAX_CAUSE_DEPTH; depth++) {
    seen.add(e);
    const r = e as Record<string, unknown>;
    if (looksTransient(r)) {
      const status = (r.$metadata as { httpStatusCode?: number } | undefined)?.httpStatusCode;
      return [status, typeof r.code === 'string' ? r.code : undefined, r.name].filter((x) => x !== undefined && x !== 'Error').join(' ');
    }
    e = r.cause;
  }
  return (err as Error)?.message ?? String(err);
}

/** Settings of `withRetry`. */
export interface RetryOptions {
  /** Tries in all, the first included (default 5). */
  attempts?: number;
  /** Backoff of the first retry before jitter (default 200 ms); doubles per attempt. */
  baseDelayMs?: number;
  /** Cap of the backoff before jitter (default 10 000 ms). */
  maxDelayMs?: number;
  /** Waits `ms`; injectable for tests (default setTimeout). */
  sleep?: (ms: number) => Promise<void>;
  /** A number in [0, 1) for jitter; injectable for tests (default Math.random). */
  random?: () => number;
  /** Called before each retry, e.g. to count it for the task in flight. */
  onRetry?: (info: RetryInfo) => void;
  /** Gets a `storage.retry` line per retry: operation, key, attempt, wait and cause. Retries are never silent. */
  logger?: RetryLogger;
  /** Counts every retry of this store. */
  counter?: RetryCounter;
}

function checkPositive(option: string, value: number, opts: { integer?: boolean; allowZero?: boolean } = {}): void {
  const ok = Number.isFinite(value) && (opts.allowZero ? value >= 0 : value > 0) && (!opts.integer || Number.isInteger(value));
  if (!ok) throw new RangeError(`${option} must be a ${opts.integer ? 'whole' : 'finite'} number ${opts.allowZero ? '>= 0' : '> 0'}, got ${value}`);
}

/**
 * Retries operations that failed with a retryable error (see `isRetryable`), with
 * exponential backoff and full jitter: before attempt n+1 it sleeps
 * `random() * min(maxDelayMs, baseDelayMs * 2^(n-1))`. After the last attempt it rethrows
 * the last error; other errors are thrown at once. Not-found (undefined) is a result.
 */
export function withRetry(inner: ObjectStore, opts: RetryOptions = {}): ObjectStore {
  const attempts = opts.attempts ?? 5;
  const base = opts.baseDelayMs ?? 200;
  const max = opts.maxDelayMs ?? 10_000;
  checkPositive('attempts', attempts, { integer: true });
  checkPositive('baseDelayMs', base, { allowZero: true });
  checkPositive('maxDelayMs', max, { allowZero: true });
  const sleep = opts.sleep ?? defaultSleep;
  const random = opts.random ?? Math.random;
  const retry = async <T>(op: RetryInfo['op'], key: string, fn: () => Promise<T>): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (error) {
        if (attempt >= attempts || !isRetryable(error)) throw error;
        const delayMs = random() * Math.min(max, base * 2 ** (attempt - 1));
        opts.counter?.add(op);
        opts.logger?.info('storage.retry', {
          op,
          key,
          attempt,
          attempts,
          delayMs: Math.round(delayMs),
          cause: retryCause(error),
          message: (error as Error)?.message,
        });
        opts.onRetry?.({ op, key, attempt, delayMs, error });
        await sleep(delayMs);
      }
    }
  };
  return {
    put: (key, body, checksum) => retry('put', key, () => inner.put(key, body, checksum)),
    get: (key, o) => retry('get', key, () => inner.get(key, o)),
    head: (key) => retry('head', key, () => inner.head(key)),
    // A listing is retried while it has yielded nothing (a retry mid-way would repeat keys).
    list: async function* (prefix: string): AsyncIterable<ListedKey> {
      const first = await retry('list', prefix, async () => {
        const it = inner.list(prefix)[Symbol.asyncIterator]();
        return { it, next: await it.next() };
      });
      for (let n = first.next; !n.done; n = await first.it.next()) yield n.value;
    },
  };
}

/** At most `limit` operations in flight at once; the rest wait in FIFO order. */
export function withConcurrencyLimit(inner: ObjectStore, limit: number): ObjectStore {
  checkPositive('limit', limit, { integer: true });
  let active = 0;
  const waiting: (() => void)[] = [];
  const run = async <T>(fn: () => Promise<T>): Promise<T> => {
    // A finishing operation hands its slot straight to the next waiter, so `active` never drops in between.
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
    put: (key, body, checksum) => run(() => inner.put(key, body, checksum)),
    get: (key, o) => run(() => inner.get(key, o)),
    head: (key) => run(() => inner.head(key)),
    list: (prefix) => inner.list(prefix),
  };
}

/** Settings of `withBandwidthLimit`. */
export interface BandwidthOptions {
  /** Milliseconds on a monotonic clock; injectable for tests (default performance.now). */
  now?: () => number;
  /** Waits `ms`; injectable for tests (default setTimeout). */
  sleep?: (ms: number) => Promise<void>;
  /** Bytes that may pass at once after idle time (default: one second's worth). */
  burstBytes?: number;
}

/**
 * A token bucket on bytes moved, shared by PUT bodies (charged before the upload) and GET
 * results (charged after the download), so sustained throughput stays at or below
 * `bytesPerSecond`; HEAD is free. For WAN links. Throws RangeError on a non-positive or
 * non-finite `bytesPerSecond` or `burstBytes`.
 */
export function withBandwidthLimit(inner: ObjectStore, bytesPerSecond: number, opts: BandwidthOptions = {}): ObjectStore {
  checkPositive('bytesPerSecond', bytesPerSecond);
  const burst = opts.burstBytes ?? bytesPerSecond;
  checkPositive('burstBytes', burst);
  const now = opts.now ?? (() => performance.now());
  const sleep = opts.sleep ?? defaultSleep;
  let tokens = burst;
  let last = now();
  let queue: Promise<void> = Promise.resolve();
  const take = (bytes: number): Promise<void> => {
    // Serialised, so concurrent transfers share the budget instead of each spending it.
    const turn = queue.then(async () => {
      const t = now();
      tokens = Math.min(burst, tokens + ((t - last) / 1000) * bytesPerSecond);
      last = t;
      tokens -= bytes;
      if (tokens < 0) await sleep((-tokens / bytesPerSecond) * 1000);
    });
    queue = turn.catch(() => {});
    return turn;
  };
  return {
    put: async (key, body, checksum) => {
      await take(body.byteLength);
      return inner.put(key, body, checksum);
    },
    get: async (key, o) => {
      const body = await inner.get(key, o);
      if (body) await take(body.length);
      return body;
    },
    head: (key): Promise<ObjectInfo | undefined> => inner.head(key),
    list: (prefix) => inner.list(prefix),
  };
}
