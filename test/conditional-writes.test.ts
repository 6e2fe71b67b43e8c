/** Conditional writes (If-None-Match: *): the pipeline without HEADs, the wrappers, and the probe against s3rver (which ignores them). */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import S3rver from 's3rver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StorageUnavailable } from '../core/errors.ts';
import { chunkId, deriveKeys, keys as objectKeys } from '../core/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ObjectInfo } from '../core/object-store.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, probeConditionalWrites, s3Client } from '../core/s3-store.ts';
import { withBandwidthLimit, withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';
import { backupDisk, DedupStrategy } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const reader = (data: Buffer): DiskReader => ({ sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} });
const disk = (diskId: string, data: Buffer) => ({ diskId, path: 'mem', sizeBytes: data.length });

/** Counts requests, conditional writes included. */
class CountingStore extends MemoryObjectStore {
  puts = 0;
  heads = 0;
  conditional = 0;
  constructor() {
    super({ conditionalWrites: true });
    const inner = this.putIfAbsent!;
    (this as { putIfAbsent?: typeof inner }).putIfAbsent = (key, body, sha256) => {
      this.conditional++;
      return inner(key, body, sha256);
    };
  }
  override async put(key: string, body: Uint8Array, sha256?: string) {
    this.puts++;
    return super.put(key, body, sha256);
  }
  override async head(key: string): Promise<ObjectInfo | undefined> {
    this.heads++;
    return super.head(key);
  }
}

describe('backup with conditional writes', () => {
  it('uploads a new chunk with one conditional PUT and no HEAD', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 5);
    const r = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats.uploadedChunks).toBe(5);
    // The memory store's conditional write stores through put(): 5 chunks + the manifest.
    expect({ conditional: store.conditional, heads: store.heads, puts: store.puts }).toEqual({ conditional: 5, heads: 0, puts: 6 });
  });

  it('dedups a chunk another disk stored (refused write, then a HEAD checks its size)', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 3);
    await backupDisk({ store, keys, reader: reader(data), disk: disk('vm1', data), backupId: 'b1', chunkSize: CHUNK });
    store.heads = 0;
    const second = await backupDisk({ store, keys, reader: reader(data), disk: disk('vm2', data), backupId: 'b2', chunkSize: CHUNK });
    expect(second.stats).toMatchObject({ uploadedChunks: 0, dedupedChunks: 3 });
    expect(store.heads).toBe(3);
  });

  it('switches to HEAD first when duplicates are common, so a cloned VM\'s chunks are not sent only to be refused', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 48);
    await backupDisk({ store, keys, reader: reader(data), disk: disk('template', data), backupId: 'b1', chunkSize: CHUNK, parallelism: 4 });
    expect(store.conditional).toBe(48);
    store.conditional = 0;
    store.heads = 0;
    const clone = await backupDisk({ store, keys, reader: reader(data), disk: disk('clone', data), backupId: 'b2', chunkSize: CHUNK, parallelism: 4 });
    expect(clone.stats).toMatchObject({ uploadedChunks: 0, dedupedChunks: 48 });
    // Two refusals lift the duplicate rate over 10%; the chunks already in flight then are the only other refused writes.
    expect(store.conditional).toBeLessThanOrEqual(2 + 4);
    expect(store.heads).toBe(48);
  });

  it('DedupStrategy goes back to conditional writes when new data follows duplicates', () => {
    const d = new DedupStrategy();
    expect(d.headFirst()).toBe(false);
    for (let i = 0; i < 4; i++) d.record(true);
    expect(d.headFirst()).toBe(true);
    let n = 0;
    while (d.headFirst()) {
      d.record(false);
      n++;
    }
    expect(n).toBeGreaterThan(5);
    expect(n).toBeLessThan(40);
  });

  it('overwrites an object of the wrong size under the key (a partial upload), and restores', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 2);
    const key = objectKeys.chunk(chunkId(keys, data.subarray(0, CHUNK)));
    store.objects.set(key, Buffer.from('partial'));
    const r = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats.uploadedChunks).toBe(2);
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-cond-'));
    try {
      await restoreDisk({ store, keys, backupId: 'b1', diskId: 'd', target: join(dir, 'd.raw') });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('wrappers and conditional writes', () => {
  it('pass putIfAbsent through when the inner store has it, and do not invent it otherwise', async () => {
    const plain = new MemoryObjectStore();
    for (const wrap of [(s: MemoryObjectStore) => withRetry(s), (s: MemoryObjectStore) => withConcurrencyLimit(s, 2), (s: MemoryObjectStore) => withBandwidthLimit(s, 1e9)]) {
      expect(wrap(plain).putIfAbsent).toBeUndefined();
      const store = wrap(new MemoryObjectStore({ conditionalWrites: true }));
      expect(await store.putIfAbsent!('k', Buffer.from('a'))).toBe('created');
      expect(await store.putIfAbsent!('k', Buffer.from('b'))).toBe('exists');
      expect((await store.get('k'))!.toString()).toBe('a');
    }
  });

  it('retries a conditional write that failed transiently', async () => {
    const inner = new MemoryObjectStore({ conditionalWrites: true });
    const real = inner.putIfAbsent!;
    let failures = 1;
    (inner as { putIfAbsent?: typeof real }).putIfAbsent = async (key, body, sha256) => {
      if (failures-- > 0) throw new StorageUnavailable('PUT failed', Object.assign(new Error('reset'), { code: 'ECONNRESET' }));
      return real(key, body, sha256);
    };
    const store = withRetry(inner, { sleep: async () => {} });
    expect(await store.putIfAbsent!('k', Buffer.from('a'))).toBe('created');
  });
});

describe('conditional writes on s3rver', () => {
  let server: S3rver;
  let dir: string;
  let endpoint: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-s3rver-'));
    server = new S3rver({ port: 0, address: '127.0.0.1', directory: dir, silent: true, configureBuckets: [{ name: 'repo' }] });
    const { port } = await server.run();
    endpoint = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('the probe finds that s3rver ignores If-None-Match, so the mover keeps HEAD then PUT', async () => {
    const client = s3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
    expect(await probeConditionalWrites(client, 'repo')).toBe(false);
    // The adapter without the setting offers no conditional write; with it, s3rver overwrites (the quirk the probe detects).
    expect(new S3ObjectStore(client, 'repo').putIfAbsent).toBeUndefined();
    const forced = new S3ObjectStore(client, 'repo', { conditionalWrites: true });
    expect(await forced.putIfAbsent!('x', Buffer.from('1'))).toBe('created');
    expect(await forced.putIfAbsent!('x', Buffer.from('2'))).toBe('created');
  });

  it('signs a PUT with the SHA-256 the caller gives, and the object reads back intact', async () => {
    const client = s3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
    const store = new S3ObjectStore(client, 'repo');
    const body = randomBytes(100_000);
    const { objectSha256 } = await import('../core/format.ts');
    let signedHash: string | undefined;
    client.middlewareStack.add((next) => async (args) => {
      signedHash = (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'];
      return next(args);
    }, { step: 'finalizeRequest', name: 'captureSignedHash', priority: 'low' });
    await store.put('signed', body, objectSha256(body));
    expect(signedHash).toBe(Buffer.from(objectSha256(body), 'base64').toString('hex'));
    expect((await store.get('signed'))!.equals(body)).toBe(true);
  });
});
