/** Retry, concurrency and bandwidth wrappers around the ObjectStore interface. */
import { describe, expect, it } from 'vitest';
import { StorageUnavailable } from '../contracts/errors.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { objectCrc32, objectSha256, type ObjectInfo, type ObjectStore, type PutChecksum } from '../core/object-store.ts';
import { isRetryable, RetryCounter, withBandwidthLimit, withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';
import { countForTask, withTaskRetries } from '../mover/retry-accounting.ts';
import { summarizeRun } from '../functions/backup/summarize.ts';
import type { RetryInfo } from '../core/store-wrappers.ts';

type Op = 'put' | 'get' | 'head';

/** A memory store whose next N calls of an op fail with a configurable error; counts every call. */
class FaultyStore extends MemoryObjectStore {
  readonly calls: Record<Op, number> = { put: 0, get: 0, head: 0 };
  private readonly faults: Record<Op, { left: number; error: () => unknown }> = {
    put: { left: 0, error: () => new Error('unset') },
    get: { left: 0, error: () => new Error('unset') },
    head: { left: 0, error: () => new Error('unset') },
  };
  /** Makes the next `n` calls of `op` throw `error()`. */
  failNext(op: Op, n: number, error: () => unknown): this {
    this.faults[op] = { left: n, error };
    return this;
  }
  private trip(op: Op): void {
    this.calls[op]++;
    const f = this.faults[op];
    if (f.left > 0) {
      f.left--;
      throw f.error();
    }
  }
  override async put(key: string, body: Uint8Array, checksum?: PutChecksum): Promise<void> {
    this.trip('put');
    return super.put(key, body, checksum);
  }
  override async get(key: string): Promise<Buffer | undefined> {
    this.trip('get');
    return super.get(key);
  }
  override async head(key: string): Promise<ObjectInfo | undefined> {
    this.trip('head');
    return super.head(key);
  }
}

const sdkError = (name: string, status: number) => Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });
const connError = (code: string) => Object.assign(new Error(`connect ${code}`), { code });
const storageError = (cause: unknown) => () => new StorageUnavailable('PUT s3://b/k failed', cause);

/** A sleep that only records what it was asked to wait. */
function recordingSleep() {
  const sleeps: number[] = [];
  return { sleeps, sleep: async (ms: number) => void sleeps.push(ms) };
}

describe('withRetry', () => {
  const transient = [
    ['503', sdkError('ServiceUnavailable', 503)],
    ['ECONNRESET', connError('ECONNRESET')],
    ['SlowDown', sdkError('SlowDown', 503)],
  ] as const;
  for (const [label, cause] of transient) {
    it(`succeeds after 2 transient failures (${label}) and stores the data`, async () => {
      const inner = new FaultyStore().failNext('put', 2, storageError(cause));
      const { sleeps, sleep } = recordingSleep();
      const retries: RetryInfo[] = [];
      const store = withRetry(inner, { sleep, random: () => 1, onRetry: (i) => retries.push(i) });
      const body = Buffer.from('data');
      await store.put('k', body, { sha256: objectSha256(body) });
      expect(inner.calls.put).toBe(3);
      expect((await inner.get('k'))?.toString()).toBe('data');
      expect(sleeps).toEqual([200, 400]);
      expect(retries.map((r) => [r.op, r.key, r.attempt, r.delayMs])).toEqual([
        ['put', 'k', 1, 200],
        ['put', 'k', 2, 400],
      ]);
      expect(retries[0]!.error).toBeInstanceOf(StorageUnavailable);
    });
  }

  it('logs every retry through the injected logger (operation, key, attempt, cause) and counts it', async () => {
    const inner = new FaultyStore();
    await inner.put('h', Buffer.from('x'));
    inner.failNext('put', 2, storageError(sdkError('SlowDown', 503))).failNext('head', 1, storageError(connError('ECONNRESET')));
    const lines: [string, Record<string, unknown> | undefined][] = [];
    const counter = new RetryCounter();
    const store = withRetry(inner, { sleep: async () => {}, random: () => 0.5, logger: { info: (e, f) => lines.push([e, f]) }, counter });
    await store.put('packs/ab/p1', Buffer.from('data'));
    await store.head('h');
    expect(lines).toEqual([
      ['storage.retry', expect.objectContaining({ op: 'put', key: 'packs/ab/p1', attempt: 1, attempts: 5, delayMs: 100, cause: '503 SlowDown' })],
      ['storage.retry', expect.objectContaining({ op: 'put', key: 'packs/ab/p1', attempt: 2, cause: '503 SlowDown' })],
      ['storage.retry', expect.objectContaining({ op: 'head', key: 'h', attempt: 1, cause: 'ECONNRESET' })],
    ]);
    expect(counter).toMatchObject({ total: 3, byOp: { put: 2, head: 1 } });
  });

  it('counts each retry for the mover task that made the request, and the run summary adds them up', async () => {
    const inner = new FaultyStore();
    const store = withRetry(inner, { sleep: async () => {}, onRetry: countForTask });
    const task = (n: number) =>
      withTaskRetries(async () => {
        inner.failNext('put', n, storageError(connError('EPIPE')));
        await store.put(`k${n}`, Buffer.from('x'));
        return { diskId: `d${n}`, stats: { bytesStored: 1 } as Record<string, number> };
      });
    const a = await task(2);
    const b = await task(1);
    expect([a.stats.storageRetries, b.stats.storageRetries]).toEqual([2, 1]);
    const stats = (n: number) => ({
      bytesScanned: 0,
      bytesNew: 0,
      bytesZero: 0,
      bytesUploaded: 0,
      bytesStored: 0,
      chunks: 0,
      zeroChunks: 0,
      parentChunks: 0,
      dedupedChunks: 0,
      uploadedChunks: 0,
      seconds: 0,
      storageRetries: n,
    });
    const summary = summarizeRun({
      runId: 'r',
      policyId: 'p',
      backups: [
        {
          vmId: 'v',
          backupId: 'b',
          status: 'committed' as const,
          runId: 'r',
          policyId: 'p',
          parentBackupId: null,
          startedAt: '2026-11-23T00:00:00Z',
          disks: [
            { diskId: 'd', sizeBytes: 0, manifestKey: 'm', stats: stats(2) },
            { diskId: 'e', sizeBytes: 0, manifestKey: 'm', stats: stats(1) },
          ],
        },
      ],
    });
    expect(summary.totals.storageRetries).toBe(3);
  });

  it('retries get and head too', async () => {
    const inner = new FaultyStore();
    await inner.put('k', Buffer.from('abc'));
    inner.failNext('get', 1, storageError(connError('ETIMEDOUT'))).failNext('head', 1, storageError(sdkError('TimeoutError', 0)));
    const store = withRetry(inner, { sleep: async () => {} });
    expect((await store.get('k'))?.toString()).toBe('abc');
    expect((await store.head('k'))?.size).toBe(3);
    expect(inner.calls).toMatchObject({ get: 2, head: 2 });
  });

  it('throws a 403 AccessDenied-caused StorageUnavailable at once, with no retry', async () => {
    const inner = new FaultyStore().failNext('put', 1, storageError(sdkError('AccessDenied', 403)));
    const { sleeps, sleep } = recordingSleep();
    const store = withRetry(inner, { sleep });
    await expect(store.put('k', Buffer.from('x'))).rejects.toMatchObject({ name: 'Mover.StorageUnavailable', cause: { name: 'AccessDenied' } });
    expect(inner.calls.put).toBe(1);
    expect(sleeps).toEqual([]);
  });

  it('does not retry a transient-looking error that is not marked retryable', async () => {
    const inner = new FaultyStore().failNext('put', 1, () => sdkError('SlowDown', 503));
    const store = withRetry(inner, { sleep: async () => {} });
    await expect(store.put('k', Buffer.from('x'))).rejects.toMatchObject({ name: 'SlowDown' });
    expect(inner.calls.put).toBe(1);
  });

  it('gives up after `attempts` and rethrows the last error', async () => {
    let n = 0;
    const inner = new FaultyStore().failNext('put', 10, () => new StorageUnavailable(`failure ${++n}`, sdkError('InternalError', 500)));
    const store = withRetry(inner, { attempts: 3, sleep: async () => {} });
    await expect(store.put('k', Buffer.from('x'))).rejects.toThrow('failure 3');
    expect(inner.calls.put).toBe(3);
    expect(await inner.get('k')).toBeUndefined();
  });

  it('backs off exponentially with full jitter, capped at maxDelayMs', async () => {
    for (const [r, expected] of [
      [1, [100, 200, 400, 800, 1000]],
      [0.5, [50, 100, 200, 400, 500]],
    ] as const) {
      const inner = new FaultyStore().failNext('put', 10, storageError(sdkError('Throttling', 429)));
      const { sleeps, sleep } = recordingSleep();
      const store = withRetry(inner, { attempts: 6, baseDelayMs: 100, maxDelayMs: 1000, sleep, random: () => r });
      await expect(store.put('k', Buffer.from('x'))).rejects.toBeInstanceOf(StorageUnavailable);
      expect(inner.calls.put).toBe(6);
      expect(sleeps).toEqual(expected);
    }
  });

  it('treats head/get returning undefined as a result, not a failure', async () => {
    const inner = new FaultyStore();
    const { sleeps, sleep } = recordingSleep();
    const store = withRetry(inner, { sleep });
    expect(await store.head('nope')).toBeUndefined();
    expect(await store.get('nope')).toBeUndefined();
    expect(inner.calls).toMatchObject({ head: 1, get: 1 });
    expect(sleeps).toEqual([]);
  });

  it('passes the checksum through, so a bad digest still fails', async () => {
    const store = withRetry(new MemoryObjectStore(), { sleep: async () => {} });
    await expect(store.put('k', Buffer.from('x'), { sha256: objectSha256(Buffer.from('y')) })).rejects.toThrow(/BadDigest/);
    await expect(store.put('k', Buffer.from('x'), { crc32: objectCrc32(Buffer.from('y')) })).rejects.toThrow(/BadDigest/);
  });

  it('walks the cause chain and ignores errors without a transient cause', () => {
    expect(isRetryable(new StorageUnavailable('x', new Error('wrapper', { cause: connError('EPIPE') })))).toBe(true);
    expect(isRetryable(new StorageUnavailable('x', connError('EAI_AGAIN')))).toBe(true);
    expect(isRetryable(new StorageUnavailable('x'))).toBe(false);
    expect(isRetryable(new StorageUnavailable('x', sdkError('NoSuchBucket', 404)))).toBe(false);
    expect(isRetryable(undefined)).toBe(false);
  });

  it('rejects nonsensical options', () => {
    expect(() => withRetry(new MemoryObjectStore(), { attempts: 0 })).toThrow(/attempts.*got 0/);
  });
});

describe('withConcurrencyLimit', () => {
  it('keeps at most `limit` operations in flight, in FIFO order, and completes them all', async () => {
    let inFlight = 0;
    let peak = 0;
    const started: string[] = [];
    const release: (() => void)[] = [];
    const slow: ObjectStore = {
      put: async (key) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        started.push(key);
        await new Promise<void>((ok) => release.push(ok));
        inFlight--;
      },
      get: async () => undefined,
      list: async function* () {},
      head: async () => undefined,
    };
    const store = withConcurrencyLimit(slow, 2);
    const done: string[] = [];
    const all = Promise.all(Array.from({ length: 6 }, (_, i) => store.put(`k${i}`, Buffer.alloc(1)).then(() => void done.push(`k${i}`))));
    for (let i = 0; i < 6; i++) {
      await new Promise((ok) => setImmediate(ok));
      expect(inFlight).toBeLessThanOrEqual(2);
      expect(release.length).toBeGreaterThan(0);
      release.shift()!();
    }
    await all;
    expect(peak).toBe(2);
    expect(started).toEqual(['k0', 'k1', 'k2', 'k3', 'k4', 'k5']);
    expect(done).toHaveLength(6);
  });

  it('frees the slot when an operation fails', async () => {
    const inner = new FaultyStore().failNext('put', 3, () => new Error('boom'));
    const store = withConcurrencyLimit(inner, 1);
    const results = await Promise.allSettled(Array.from({ length: 4 }, (_, i) => store.put(`k${i}`, Buffer.from('x'))));
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected', 'fulfilled']);
  });

  it('rejects a limit that is not a positive whole number', () => {
    expect(() => withConcurrencyLimit(new MemoryObjectStore(), 0)).toThrow(RangeError);
    expect(() => withConcurrencyLimit(new MemoryObjectStore(), 1.5)).toThrow(/limit.*1\.5/);
  });
});

describe('withBandwidthLimit', () => {
  /** A clock that moves only when the wrapper sleeps. */
  function fakeTime() {
    const t = { clock: 0, slept: 0 };
    const opts = {
      now: () => t.clock,
      sleep: async (ms: number) => {
        t.slept += ms;
        t.clock += ms;
      },
    };
    return { t, opts };
  }

  it('holds 10 puts of 100 KB at 200 KB/s to ~5 s of fake time, less one burst', async () => {
    const { t, opts } = fakeTime();
    const inner = new MemoryObjectStore();
    const store = withBandwidthLimit(inner, 200_000, opts);
    for (let i = 0; i < 10; i++) await store.put(`k${i}`, Buffer.alloc(100_000));
    // 1 MB at 200 KB/s is 5 s; the default burst (one second's worth) passes at once.
    expect(t.slept).toBeGreaterThanOrEqual(5000 - 1000 - 1);
    expect(t.slept).toBeLessThanOrEqual(5000 + 1);
    expect(inner.objects.size).toBe(10);
  });

  it('shares the budget between concurrent puts and gets; head is free', async () => {
    const { t, opts } = fakeTime();
    const inner = new MemoryObjectStore();
    await inner.put('big', Buffer.alloc(100_000));
    const store = withBandwidthLimit(inner, 100_000, { ...opts, burstBytes: 1 });
    await Promise.all([store.put('a', Buffer.alloc(100_000)), store.get('big'), store.head('big'), store.head('missing')]);
    expect(t.slept).toBeGreaterThanOrEqual(2000 - 1);
    const before = t.slept;
    expect(await store.head('big')).toMatchObject({ size: 100_000 });
    expect(await store.get('missing')).toBeUndefined();
    expect(t.slept).toBe(before);
  });

  it('passes the checksum through on put', async () => {
    const { opts } = fakeTime();
    const store = withBandwidthLimit(new MemoryObjectStore(), 1_000_000, opts);
    const body = Buffer.from('hello');
    await store.put('ok', body, { sha256: objectSha256(body) });
    await store.put('ok2', body, { crc32: objectCrc32(body) });
    await expect(store.put('bad', body, { sha256: objectSha256(Buffer.from('other')) })).rejects.toThrow(/BadDigest/);
    await expect(store.put('bad', body, { crc32: objectCrc32(Buffer.from('other')) })).rejects.toThrow(/BadDigest/);
  });

  it('throws RangeError naming the option and value for a zero, negative or non-finite limit', () => {
    expect(() => withBandwidthLimit(new MemoryObjectStore(), 0)).toThrow(RangeError);
    expect(() => withBandwidthLimit(new MemoryObjectStore(), 0)).toThrow(/bytesPerSecond.*got 0/);
    expect(() => withBandwidthLimit(new MemoryObjectStore(), -5)).toThrow(/bytesPerSecond.*got -5/);
    expect(() => withBandwidthLimit(new MemoryObjectStore(), Number.POSITIVE_INFINITY)).toThrow(/got Infinity/);
    expect(() => withBandwidthLimit(new MemoryObjectStore(), 1000, { burstBytes: 0 })).toThrow(/burstBytes.*got 0/);
  });
});

describe('every wrapper passes the whole interface through', () => {
  const wrappers: [string, (s: ObjectStore) => ObjectStore][] = [
    ['withRetry', (s) => withRetry(s, { sleep: async () => {} })],
    ['withConcurrencyLimit', (s) => withConcurrencyLimit(s, 2)],
    ['withBandwidthLimit', (s) => withBandwidthLimit(s, 1e9)],
    ['all three, as the mover stacks them', (s) => withBandwidthLimit(withConcurrencyLimit(withRetry(s, { sleep: async () => {} }), 2), 1e9)],
  ];
  const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));

  for (const [label, wrap] of wrappers) {
    it(`${label}: a range GET, a GET into a buffer, and a listing in key order`, async () => {
      const inner = new MemoryObjectStore();
      await inner.put('packs/ab/x', body);
      await inner.put('index/2', Buffer.from('two'));
      await inner.put('index/1', Buffer.from('one'));
      const store = wrap(inner);
      expect((await store.get('packs/ab/x', { range: { offset: 100, length: 50 } }))!.equals(body.subarray(100, 150))).toBe(true);
      const into = Buffer.alloc(2000);
      const read = await store.get('packs/ab/x', { into });
      expect(read!.equals(body)).toBe(true);
      expect(read!.buffer).toBe(into.buffer); // read into the caller's buffer, not a copy
      const listed: { key: string; size: number }[] = [];
      for await (const o of store.list('index/')) listed.push(o);
      expect(listed).toEqual([
        { key: 'index/1', size: 3 },
        { key: 'index/2', size: 3 },
      ]);
    });
  }

  it('withRetry retries a listing that failed before yielding anything', async () => {
    const inner = new MemoryObjectStore();
    await inner.put('index/1', Buffer.from('one'));
    let failures = 2;
    const flaky: ObjectStore = {
      put: (k, b, s) => inner.put(k, b, s),
      get: (k, o) => inner.get(k, o),
      head: (k) => inner.head(k),
      list: (prefix) => {
        if (failures-- > 0) throw new StorageUnavailable(`LIST s3://b/${prefix} failed`, connError('ECONNRESET'));
        return inner.list(prefix);
      },
    };
    const retries: RetryInfo[] = [];
    const listed: string[] = [];
    for await (const o of withRetry(flaky, { sleep: async () => {}, onRetry: (i) => retries.push(i) }).list('index/')) listed.push(o.key);
    expect(listed).toEqual(['index/1']);
    expect(retries.map((r) => [r.op, r.key, r.attempt])).toEqual([
      ['list', 'index/', 1],
      ['list', 'index/', 2],
    ]);
  });

  it('withBandwidthLimit charges a range GET for the bytes it returned, not the whole object', async () => {
    const inner = new MemoryObjectStore();
    await inner.put('big', Buffer.alloc(1_000_000));
    let slept = 0;
    let clock = 0;
    const store = withBandwidthLimit(inner, 100_000, {
      burstBytes: 1,
      now: () => clock,
      sleep: async (ms) => {
        slept += ms;
        clock += ms;
      },
    });
    await store.get('big', { range: { offset: 0, length: 10_000 } });
    expect(slept).toBeGreaterThan(50);
    expect(slept).toBeLessThan(200); // 10 KB at 100 KB/s: 0.1 s, not the 10 s of the whole object
  });
});
