/** The embedded stack's S3 endpoint (s3rver + local/s3-server.ts): conditional writes as S3 answers them, aws-chunked de-framing. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, collectBody, probeConditionalWrites, s3Client } from '../core/s3-store.ts';
import { deriveKeys } from '../core/format.ts';
import { deframeAwsChunked, startLocalS3, type LocalS3 } from '../local/s3-server.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';

describe('local S3 endpoint', () => {
  let s3: LocalS3;
  let dir: string;
  let store: S3ObjectStore;
  const client = () => s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-local-s3-'));
    s3 = await startLocalS3({ directory: dir, buckets: ['repo'] });
    store = new S3ObjectStore(client(), 'repo', { conditionalWrites: true });
  });
  afterAll(async () => {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('honours If-None-Match: * — the first write creates, a second is refused and changes nothing', async () => {
    const first = randomBytes(1000);
    expect(await store.putIfAbsent!('chunks/ab/one', first)).toBe('created');
    expect(await store.putIfAbsent!('chunks/ab/one', randomBytes(2000))).toBe('exists');
    expect(await store.get('chunks/ab/one')).toEqual(first);
    expect(await probeConditionalWrites(client(), 'repo')).toBe(true);
  });

  it('lets exactly one of many concurrent conditional writes of a key create it', async () => {
    const bodies = Array.from({ length: 6 }, () => randomBytes(200_000));
    const outcomes = await Promise.all(bodies.map((b) => store.putIfAbsent!('chunks/cd/raced', b)));
    expect(outcomes.filter((o) => o === 'created')).toHaveLength(1);
    const stored = await store.get('chunks/cd/raced');
    expect(stored).toEqual(bodies[outcomes.indexOf('created')]);
  });

  it('still overwrites on a plain PUT, and counts requests per bucket', async () => {
    const before = s3.requests.get('repo') ?? 0;
    await store.put('chunks/ef/plain', Buffer.from('a'));
    await store.put('chunks/ef/plain', Buffer.from('bb'));
    expect((await store.head('chunks/ef/plain'))?.size).toBe(2);
    expect((s3.requests.get('repo') ?? 0) - before).toBe(3);
  });
});

describe('S3 adapter: response bodies', () => {
  const pieces = async function* (parts: Buffer[]) {
    for (const p of parts) yield p;
  };
  const parts = [randomBytes(70_000), randomBytes(1), randomBytes(65_536)];
  const whole = Buffer.concat(parts);

  it('reads a body into one buffer that owns its ArrayBuffer (transferable without a copy)', async () => {
    for (const length of [whole.length, undefined]) {
      const out = await collectBody(pieces(parts), length, 'GET x');
      expect(out).toEqual(whole);
      expect(out.byteOffset).toBe(0);
      expect(out.buffer.byteLength).toBe(whole.length);
    }
  });

  it('fails on a body shorter or longer than its Content-Length, naming the request', async () => {
    await expect(collectBody(pieces(parts), whole.length + 1, 'GET s3://b/k')).rejects.toThrow(/GET s3:\/\/b\/k: the body ended after 135537 of 135538 bytes/);
    await expect(collectBody(pieces(parts), whole.length - 1, 'GET s3://b/k')).rejects.toThrow(/longer than its Content-Length/);
  });
});

describe('aws-chunked de-framing', () => {
  const frame = (data: Buffer, sizes: number[]) => {
    const parts: Buffer[] = [];
    let at = 0;
    for (const n of sizes) {
      parts.push(Buffer.from(`${n.toString(16)};chunk-signature=${'0'.repeat(64)}\r\n`), data.subarray(at, at + n), Buffer.from('\r\n'));
      at += n;
    }
    parts.push(Buffer.from(`0;chunk-signature=${'0'.repeat(64)}\r\n\r\n`));
    return Buffer.concat(parts);
  };

  it('recovers the payload for any split into chunks (property)', () => {
    for (let trial = 0; trial < 200; trial++) {
      const data = randomBytes(Math.floor(Math.random() * 5000));
      const sizes: number[] = [];
      for (let left = data.length; left > 0;) {
        const n = Math.min(left, 1 + Math.floor(Math.random() * 1500));
        sizes.push(n);
        left -= n;
      }
      expect(deframeAwsChunked(frame(data, sizes))).toEqual(data);
    }
  });

  it('rejects damaged framing with an error instead of storing garbage (fuzz)', () => {
    const good = frame(randomBytes(3000), [1000, 1000, 1000]);
    let rejected = 0;
    for (let trial = 0; trial < 300; trial++) {
      const bad = Buffer.from(good.subarray(0, Math.floor(Math.random() * good.length)));
      try {
        const out = deframeAwsChunked(bad);
        // A truncation can only succeed if it kept the closing zero-size chunk header.
        expect(bad.includes('0;chunk-signature')).toBe(true);
        expect(out.length).toBe(3000);
      } catch (err) {
        expect((err as Error).message).toMatch(/^aws-chunked: /);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(0);
  });
});

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('two movers writing the same chunks at once (real local S3)', () => {
  let s3: LocalS3;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-race-'));
    s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: ['race-cond', 'race-head'] });
  });
  afterAll(async () => {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  for (const conditionalWrites of [true, false]) {
    it(`never corrupts a chunk, ${conditionalWrites ? 'with conditional writes' : 'with HEAD then PUT'}: both backups restore byte-identical`, async () => {
      const bucket = conditionalWrites ? 'race-cond' : 'race-head';
      const keys = deriveKeys(randomBytes(32));
      const CHUNK = 64 * 1024;
      const data = Buffer.concat([randomBytes(CHUNK * 24), Buffer.alloc(CHUNK * 2), Buffer.alloc(CHUNK * 6, 'lifeboat ')]);
      // Two movers: separate clients and stores, the same data (two VMs cloned from one template), at once.
      const mover = () => new S3ObjectStore(s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS }), bucket, { conditionalWrites });
      const reader = { sizeBytes: data.length, read: async (buf: Buffer, offset: number, length: number) => data.copy(buf, 0, offset, offset + length), close: async () => {} };
      const [a, b] = await Promise.all(['vm-a', 'vm-b'].map((vm) => backupDisk({
        store: mover(), keys, reader, disk: { diskId: 'disk0', path: vm, sizeBytes: data.length }, backupId: vm, chunkSize: CHUNK, parallelism: 4,
      })));
      // Every non-zero chunk was stored by one of them or found stored by the other; identical chunks in one disk dedup too.
      const stored = a!.stats.uploadedChunks + b!.stats.uploadedChunks;
      expect(stored).toBeGreaterThanOrEqual(25);
      expect(stored + a!.stats.dedupedChunks + b!.stats.dedupedChunks).toBe(2 * 30);
      for (const vm of ['vm-a', 'vm-b']) {
        const target = join(dir, `${bucket}-${vm}.raw`);
        await restoreDisk({ store: mover(), keys, backupId: vm, diskId: 'disk0', target });
        // (a digest comparison: toEqual walks a 2 MiB buffer element by element, for seconds)
        expect(sha256(await readFile(target))).toBe(sha256(data));
      }
    });
  }
});
