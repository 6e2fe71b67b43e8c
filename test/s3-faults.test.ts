/**
 * Storage faults that must end in an error or a retry, never in a hang: a PUT cut off
 * mid-body at the embedded S3 (the key must stay writable), and a stalled response to a
 * mover's request (its deadline fails it, the retry wrapper tries again). Faults come from
 * the fault proxy (test/helpers/fault-proxy.ts) or a raw socket.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { withRetry, type RetryInfo } from '../core/store-wrappers.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';

/** Rejects when `p` takes longer than `ms`: a hang becomes a failure naming `what`. */
const within = <T>(ms: number, what: string, p: Promise<T>): Promise<T> =>
  Promise.race([p, new Promise<never>((_, no) => setTimeout(() => no(new Error(`${what} did not finish within ${ms} ms`)), ms).unref())]);

/** Sends a PUT of `key` announcing `length` bytes, writes half of them and closes the connection. */
async function cutPut(url: string, key: string, length: number): Promise<void> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await new Promise<void>((ok, no) => socket.once('connect', ok).once('error', no));
  socket.write(`PUT /repo/${key} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`);
  socket.write(randomBytes(length / 2));
  // Long enough for the server to have started on the request before the cut.
  await new Promise((ok) => setTimeout(ok, 200));
  socket.destroy();
}

describe('storage faults end in an error or a retry, never a hang', () => {
  let s3: LocalS3;
  let dir: string;
  let proxy: FaultProxy;
  const client = (endpoint: string, timeouts: { requestTimeoutMs?: number; connectTimeoutMs?: number } = {}) =>
    s3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS, ...timeouts });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-s3-faults-'));
    s3 = await startLocalS3({ directory: dir, buckets: ['repo'] });
    proxy = await startFaultProxy({ target: s3.url, seed: 17 });
  });
  afterAll(async () => {
    await proxy.close();
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('lets a PUT of a key complete promptly after another PUT of that key was cut off mid-body', async () => {
    await cutPut(s3.url, 'wedge/a', 4 * 1024 * 1024);
    const store = new S3ObjectStore(client(s3.url), 'repo');
    const body = randomBytes(64 * 1024);
    await within(5000, 'the PUT after the cut one', store.put('wedge/a', body));
    expect((await store.get('wedge/a'))?.equals(body)).toBe(true);
  });

  it('keeps a key writable when the fault proxy cuts a PUT of it mid-body', async () => {
    proxy.setRules([{ method: 'PUT', path: /wedge\/b$/, times: 1, fault: { kind: 'cut-put' } }]);
    const store = new S3ObjectStore(client(proxy.url, { requestTimeoutMs: 2000 }), 'repo');
    const body = randomBytes(1024 * 1024);
    // The SDK's own retry or ours sends it again; neither may wait on the cut one.
    await within(8000, 'a PUT after a cut one', withRetry(store, { baseDelayMs: 10 }).put('wedge/b', body));
    expect(proxy.injected.filter((f) => f.kind === 'cut-put')).toHaveLength(1);
    expect((await new S3ObjectStore(client(s3.url), 'repo').get('wedge/b'))?.equals(body)).toBe(true);
  });

  it('fails a GET whose response stalls mid-body after the request timeout, and the retry wrapper reads it again', async () => {
    const body = randomBytes(256 * 1024);
    await new S3ObjectStore(client(s3.url), 'repo').put('stall/a', body);
    proxy.setRules([{ method: 'GET', path: /stall\/a$/, times: 1, fault: { kind: 'stall', at: 'mid-body' } }]);
    const retries: RetryInfo[] = [];
    const store = withRetry(new S3ObjectStore(client(proxy.url, { requestTimeoutMs: 300 }), 'repo'), { baseDelayMs: 10, onRetry: (r) => retries.push(r) });
    const got = await within(5000, 'a GET whose first response stalls', store.get('stall/a'));
    expect(got?.equals(body)).toBe(true);
    expect(retries).toHaveLength(1);
    expect(proxy.injected.filter((f) => f.kind === 'stall')).toHaveLength(1);
  });

  it('fails a request that gets no response at all after the request timeout, as a retryable StorageUnavailable', async () => {
    proxy.setRules([{ method: 'HEAD', path: /stall\/none$/, fault: { kind: 'stall' } }]);
    const store = new S3ObjectStore(client(proxy.url, { requestTimeoutMs: 300 }), 'repo');
    const err = await within(
      8000,
      'a HEAD that is never answered',
      store.head('stall/none').then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
    expect(err).toMatchObject({ name: 'Mover.StorageUnavailable', retryable: true, message: expect.stringContaining('HEAD s3://repo/stall/none') });
    proxy.setRules([]);
  });

  it('retries 503 SlowDown and reset connections injected by rule', async () => {
    const body = randomBytes(1000);
    proxy.setRules([
      { method: 'PUT', path: /flaky$/, times: 1, fault: { kind: 'status', status: 503 } },
      { method: 'PUT', path: /flaky$/, times: 1, fault: { kind: 'reset' } },
    ]);
    const store = new S3ObjectStore(
      s3Client({ region: 'us-east-1', endpoint: proxy.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS, maxAttempts: 1 }),
      'repo',
    );
    const retries: RetryInfo[] = [];
    await within(5000, 'a PUT through two faults', withRetry(store, { baseDelayMs: 10, onRetry: (r) => retries.push(r) }).put('flaky', body));
    expect(retries.map((r) => r.attempt)).toEqual([1, 2]);
    expect(proxy.injected.slice(-2).map((f) => f.kind)).toEqual(['status', 'reset']);
  });
});
