/**
 * The functions' S3 retries are the SDK's own (functions/commons/clients.ts), and never
 * silent: each request that needed another attempt is a `storage.retry` line and a count.
 * Faults come from the fault proxy in front of the embedded S3.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { createClients, controlPlaneStorageRetries } from '../functions/commons/clients.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';

let dir: string;
let s3: LocalS3;
let proxy: FaultProxy;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-cp-retries-'));
  s3 = await startLocalS3({ directory: dir, buckets: ['repo'] });
  proxy = await startFaultProxy({ target: s3.url, seed: 5 });
  process.env.POWERTOOLS_METRICS_DISABLED = 'true';
});
afterAll(async () => {
  await proxy.close();
  await s3.close();
  await rm(dir, { recursive: true, force: true });
});

it("logs and counts every retry the SDK makes of a function's S3 request", async () => {
  const lines: Record<string, unknown>[] = [];
  const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    for (const l of String(chunk).split('\n')) if (l.includes('"storage.retry"')) lines.push(JSON.parse(l) as Record<string, unknown>);
    return true;
  });
  proxy.setRules([
    { method: 'PUT', path: /\/repo\/a$/, times: 1, fault: { kind: 'status', status: 503, code: 'SlowDown' } },
    { method: 'GET', path: /\/repo\/a$/, times: 1, fault: { kind: 'reset' } },
  ]);
  const before = controlPlaneStorageRetries();
  const body = randomBytes(2048);
  try {
    // The functions' clients, as the embedded stack makes them (the catalog is not used here).
    const store = createClients({ tableName: 'catalog', region: 'us-east-1', dynamodbEndpoint: 'http://127.0.0.1:9', s3Endpoint: proxy.url }).store(
      'repo',
      undefined,
    );
    await store.put('a', body);
    expect((await store.get('a'))?.equals(body)).toBe(true);
    expect(await store.get('missing')).toBeUndefined(); // a 404 is an answer, not a retry or a failure
  } finally {
    write.mockRestore();
  }
  expect(proxy.injected.map((f) => f.kind)).toEqual(['status', 'reset']);
  const after = controlPlaneStorageRetries();
  expect({ retries: after.retries - before.retries, exhausted: after.exhausted - before.exhausted }).toEqual({ retries: 2, exhausted: 0 });
  expect(lines).toEqual([
    expect.objectContaining({ message: 'storage.retry', op: 'PutObject', bucket: 'repo', key: 'a', attempts: 2, retries: 1 }),
    expect.objectContaining({ message: 'storage.retry', op: 'GetObject', bucket: 'repo', key: 'a', attempts: 2, retries: 1 }),
  ]);
});
