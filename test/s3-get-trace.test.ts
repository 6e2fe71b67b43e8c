/**
 * The S3 adapter's GET trace (core/s3-store.ts `onGet`, the mover's LIFEBOAT_S3_TRACE), against
 * the local S3 endpoint behind the bench's delayed link: every GET that returned a body is
 * reported once, with its key, range and byte count, its first byte between its start and its
 * end; a GET of a missing key is not.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDelayedLink, type DelayedLink } from '../bench/delayed-link.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client, type GetTrace } from '../core/s3-store.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';

let dir: string;
let s3: LocalS3;
let link: DelayedLink;
const traced: GetTrace[] = [];
let store: S3ObjectStore;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-s3-trace-'));
  s3 = await startLocalS3({ directory: dir, buckets: ['repo'] });
  link = await startDelayedLink(s3.url, 20);
  const client = s3Client({ region: 'us-east-1', endpoint: link.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  store = new S3ObjectStore(client, 'repo', { onGet: (t) => traced.push(t) });
});
afterAll(async () => {
  await link.close();
  await s3.close();
  await rm(dir, { recursive: true, force: true });
});

it('reports each GET that returned a body once, with its range, its bytes and its first byte between its start and its end', async () => {
  const body = randomBytes(3 * 1024 * 1024);
  await store.put('packs/a', body);
  const [whole, part, missing] = await Promise.all([
    store.get('packs/a'),
    store.get('packs/a', { range: { offset: 1000, length: 5000 } }),
    store.get('packs/none'),
  ]);
  expect(whole?.equals(body)).toBe(true);
  expect(part?.equals(body.subarray(1000, 6000))).toBe(true);
  expect(missing).toBeUndefined();
  expect(traced.map((t) => [t.key, t.range, t.bytes]).sort((a, b) => Number(a[2]) - Number(b[2]))).toEqual([
    ['packs/a', { offset: 1000, length: 5000 }, 5000],
    ['packs/a', undefined, body.length],
  ]);
  for (const t of traced) {
    expect(t.startMs).toBeLessThanOrEqual(t.headersMs);
    expect(t.headersMs).toBeLessThanOrEqual(t.endMs);
  }
});
