/** Retry, concurrency and bandwidth wrappers around the ObjectStore interface. */
import { describe, expect, it } from 'vitest';
import { StorageUnavailable } from '../core/errors.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { withBandwidthLimit, withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';

/** Fails the next `failures` calls with `error`, then behaves like the memory store. */
class FaultyStore extends MemoryObjectStore {
  calls = 0;
  failures: number;
  error: () => unknown;
  constructor(failures: number, error: () => unknown) {
    super();
    this.failures = failures;
    this.error = error;
  }
  override async put(key: string, body: Uint8Array, sha256?: string) {
    this.calls++;
    if (this.failures-- > 0) throw this.error();
    return super.put(key, body, sha256);
  }
}

const sdkError = (name: string, status: number) => Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });
const connError = (code: string) => Object.assign(new Error(code), { code });
const wrapped = (cause: unknown) => () => new StorageUnavailable('PUT failed', cause);

describe('withRetry', () => {
  for (const [label, cause] of [['503', sdkError('ServiceUnavailable', 503)], ['ECONNRESET', connError('ECONNRESET')], ['SlowDown', sdkError('SlowDown', 503)]] as const) {
    it(`retries a transient failure (${label}) and stores the data`, async () => {
      const inner = new FaultyStore(2, wrapped(cause));
      const sleeps: number[] = [];
      const store = withRetry(inner, { sleep: async (ms) => void sleeps.push(ms), random: () => 1 });
      await store.put('k', Buffer.from('data'));
      expect(inner.calls).toBe(3);
      expect((await inner.get('k'))?.toString()).toBe('data');
      expect(sleeps).toEqual([200, 400]);
    });
  }

  it('does not retry an access-denied failure', async () => {
    const inner = new FaultyStore(1, wrapped(sdkError('AccessDenied', 403)));
    const store = withRetry(inner, { sleep: async () => {} });
    await expect(store.put('k', Buffer.from('x'))).rejects.toMatchObject({ name: 'Mover.StorageUnavailable' });
    expect(inner.calls).toBe(1);
  });

  it('gives up after the configured attempts with the last error, backing off with capped full jitter', async () => {
    const inner = new FaultyStore(10, wrapped(sdkError('InternalError', 500)));
    const sleeps: number[] = [];
    const store = withRetry(inner, { attempts: 6, baseDelayMs: 100, maxDelayMs: 1000, sleep: async (ms) => void sleeps.push(ms), random: () => 0.5 });
    await expect(store.put('k', Buffer.from('x'))).rejects.toBeInstanceOf(StorageUnavailable);
    expect(inner.calls).toBe(6);
    expect(sleeps).toEqual([50, 100, 200, 400, 500]);
  });

  it('treats a missing object as a result, not a failure', async () => {
    const inner = new MemoryObjectStore();
    let heads = 0;
    const counting: ObjectStore = { ...inner, put: inner.put.bind(inner), get: inner.get.bind(inner), head: async (k) => (heads++, inner.head(k)) };
    expect(await withRetry(counting, { sleep: async () => {} }).head('nope')).toBeUndefined();
    expect(heads).toBe(1);
  });
});

describe('withConcurrencyLimit', () => {
  it('keeps at most the limit in flight and completes everything', async () => {
    let inFlight = 0;
    let peak = 0;
    const release: (() => void)[] = [];
    const slow: ObjectStore = {
      put: async () => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await new Promise<void>((ok) => release.push(ok));
        inFlight--;
      },
      get: async () => undefined,
      head: async () => undefined,
    };
    const store = withConcurrencyLimit(slow, 2);
    const all = Promise.all(Array.from({ length: 6 }, (_, i) => store.put(`k${i}`, Buffer.alloc(1))));
    for (let done = 0; done < 6; done++) {
      await new Promise((ok) => setImmediate(ok));
      expect(inFlight).toBeLessThanOrEqual(2);
      release.shift()!();
    }
    await all;
    expect(peak).toBe(2);
  });
});

describe('withBandwidthLimit', () => {
  it('holds sustained throughput to the limit', async () => {
    let clock = 0;
    let slept = 0;
    const store = withBandwidthLimit(new MemoryObjectStore(), 200_000, {
      now: () => clock,
      sleep: async (ms) => {
        slept += ms;
        clock += ms;
      },
    });
    for (let i = 0; i < 10; i++) await store.put(`k${i}`, Buffer.alloc(100_000));
    // 1 MB at 200 kB/s is 5 s, less the one-second burst allowance.
    expect(slept).toBeGreaterThanOrEqual(4000 - 1);
    expect(slept).toBeLessThanOrEqual(4000 + 1);
  });

  it('rejects a limit that is not a positive number, naming the value', () => {
    expect(() => withBandwidthLimit(new MemoryObjectStore(), 0)).toThrow(/got 0/);
    expect(() => withBandwidthLimit(new MemoryObjectStore(), -5)).toThrow(RangeError);
  });
});
