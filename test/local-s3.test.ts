import { Readable } from 'node:stream';
/**
 * The embedded stack's S3 endpoint (s3rver + local/s3-server.ts): conditional writes as S3
 * answers them (movers do not use them; kept for S3 parity), aws-chunked de-framing, the
 * S3 adapter against it, and two movers backing up the same data at once.
 */
import { Repository } from '../repository/open.ts';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, collectBody, s3Client } from '../core/s3-store.ts';
import { deriveKeys, objectKeys, packIdOfKey } from '../repository/format.ts';
import { objectCrc32, objectSha256 } from '../core/object-store.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { readPackTrailer } from '../repository/pack-trailer.ts';
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
    store = new S3ObjectStore(client(), 'repo');
  });
  afterAll(async () => {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A conditional PUT (`If-None-Match: *`) with the raw S3 client: 'created', or the HTTP status it was refused with. */
  const putIfAbsent = async (c: S3Client, key: string, body: Buffer): Promise<'created' | number> => {
    try {
      await c.send(new PutObjectCommand({ Bucket: 'repo', Key: key, Body: body, IfNoneMatch: '*' }));
      return 'created';
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === undefined) throw err;
      return status;
    }
  };

  it('honours If-None-Match: * — the first write creates, a second is refused (412) and changes nothing', async () => {
    const c = client();
    const first = randomBytes(1000);
    expect(await putIfAbsent(c, 'cond/one', first)).toBe('created');
    expect(await putIfAbsent(c, 'cond/one', randomBytes(2000))).toBe(412);
    expect(await store.get('cond/one')).toEqual(first);
  });

  it('lets exactly one of many concurrent conditional writes of a key create it (the others: 412, or 409 while it is in progress)', async () => {
    const c = client();
    const bodies = Array.from({ length: 6 }, () => randomBytes(200_000));
    const outcomes = await Promise.all(bodies.map((b) => putIfAbsent(c, 'cond/raced', b)));
    expect(outcomes.filter((o) => o === 'created')).toHaveLength(1);
    for (const o of outcomes) expect(['created', 412, 409]).toContain(o);
    const stored = await store.get('cond/raced');
    expect(stored).toEqual(bodies[outcomes.indexOf('created')]);
  });

  /** A client and a store over it, and the headers of the last request it signed (as sent). */
  const capturing = () => {
    const c = client();
    const sent: { headers: Record<string, string> } = { headers: {} };
    c.middlewareStack.add(
      (next) => async (args) => {
        sent.headers = { ...(args.request as { headers: Record<string, string> }).headers };
        return next(args);
      },
      { step: 'finalizeRequest', name: 'captureHeaders', priority: 'low' },
    );
    return { store: new S3ObjectStore(c, 'repo'), sent };
  };

  it('signs a PUT with the SHA-256 the caller gives, and the object reads back intact', async () => {
    const { store: signing, sent } = capturing();
    const body = randomBytes(100_000);
    await signing.put('signed', body, { sha256: objectSha256(body) });
    expect(sent.headers['x-amz-content-sha256']).toBe(Buffer.from(objectSha256(body), 'base64').toString('hex'));
    expect((await signing.get('signed'))!.equals(body)).toBe(true);
  });

  it('sends a PUT with a CRC-32 as an unsigned payload with x-amz-checksum-crc32, and the object reads back intact', async () => {
    const { store, sent } = capturing();
    const body = randomBytes(100_000);
    await store.put('crc', body, { crc32: objectCrc32(body) });
    expect(sent.headers['x-amz-content-sha256']).toBe('UNSIGNED-PAYLOAD');
    expect(sent.headers['x-amz-checksum-crc32']).toBe(objectCrc32(body));
    expect(Buffer.from(objectCrc32(body), 'base64').readUInt32BE()).toBe(crc32(body));
    expect((await store.get('crc'))!.equals(body)).toBe(true);
  });

  it('sends a pack-sized PUT at once, without waiting for a 100 Continue (a round trip per pack over a WAN)', async () => {
    const { store, sent } = capturing();
    const body = randomBytes(3 * 1024 * 1024); // over the SDK's 2 MiB threshold for Expect: 100-continue
    await store.put('big', body, { crc32: objectCrc32(body) });
    expect(sent.headers['content-length']).toBe(String(body.length));
    expect(Object.keys(sent.headers).map((h) => h.toLowerCase())).not.toContain('expect');
    expect((await store.get('big'))!.equals(body)).toBe(true);
  });

  it('reads a range of an object, and lists a prefix in key order with sizes', async () => {
    const body = randomBytes(50_000);
    await store.put('ranged/x', body);
    await store.put('ranged/a', Buffer.from('a'));
    expect((await store.get('ranged/x', { range: { offset: 1000, length: 300 } }))!.equals(body.subarray(1000, 1300))).toBe(true);
    // A range past the end returns what there is (callers check the length).
    expect((await store.get('ranged/x', { range: { offset: 49_990, length: 100 } }))!.equals(body.subarray(49_990))).toBe(true);
    const listed: { key: string; size: number }[] = [];
    for await (const o of store.list('ranged/')) listed.push(o);
    expect(listed).toEqual([
      { key: 'ranged/a', size: 1 },
      { key: 'ranged/x', size: 50_000 },
    ]);
  });

  it('lists a prefix of more than 1,000 keys in pages (ListObjectsV2 continuation tokens), each key once in key order', async () => {
    // Keys in folders, so a page ends inside one and the next starts in it again.
    const keys = Array.from({ length: 1_100 }, (_, i) => `paged/${String(i % 7)}/k${String(i).padStart(4, '0')}`).sort();
    for (let i = 0; i < keys.length; i += 100) await Promise.all(keys.slice(i, i + 100).map((k) => store.put(k, Buffer.from(k))));
    const lists = s3.requestKinds.get('LIST') ?? 0;
    const listed: string[] = [];
    for await (const o of store.list('paged/')) listed.push(o.key);
    expect(listed).toEqual(keys);
    expect((s3.requestKinds.get('LIST') ?? 0) - lists).toBe(2);

    // Smaller pages, as a client asks for them: IsTruncated and a token until the last.
    const pages: { n: number; truncated: boolean }[] = [];
    let token: string | undefined;
    do {
      const out = await client().send(new ListObjectsV2Command({ Bucket: 'repo', Prefix: 'paged/3/', MaxKeys: 60, ContinuationToken: token }));
      pages.push({ n: out.KeyCount ?? 0, truncated: out.IsTruncated ?? false });
      if (token) expect(out.ContinuationToken).toBe(token);
      token = out.NextContinuationToken;
    } while (token);
    expect(pages).toEqual([
      { n: 60, truncated: true },
      { n: 60, truncated: true },
      { n: 37, truncated: false },
    ]);
    // A token that is not the endpoint's own is refused, as S3 refuses one.
    const bad = await client()
      .send(new ListObjectsV2Command({ Bucket: 'repo', Prefix: 'paged/', ContinuationToken: 'bm90LWEtdG9rZW4' }))
      .then(
        () => 'listed',
        (e: { name?: string; $metadata?: { httpStatusCode?: number } }) => `${e.$metadata?.httpStatusCode} ${e.name}`,
      );
    expect(bad).toBe('400 InvalidArgument');
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

  it('reads a Node stream body (an HTTP response) into the buffer given, and fails on one that is cut, shorter or longer', async () => {
    const into = Buffer.alloc(whole.length + 10);
    const out = await collectBody(Readable.from(parts), whole.length, 'GET x', into);
    expect(out.equals(whole) && out.buffer === into.buffer).toBe(true);
    await expect(collectBody(Readable.from(parts), whole.length + 1, 'GET s3://b/k')).rejects.toThrow(/the body ended after 135537 of 135538 bytes/);
    await expect(collectBody(Readable.from(parts), whole.length - 1, 'GET s3://b/k')).rejects.toThrow(
      /GET s3:\/\/b\/k: the body is longer than its Content-Length/,
    );
    const cut = new Readable({ read() {} });
    cut.push(parts[0]);
    setImmediate(() => cut.destroy(new Error('socket hang up')));
    await expect(collectBody(cut, whole.length, 'GET x')).rejects.toThrow(/socket hang up/);
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
      for (let left = data.length; left > 0; ) {
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

describe('two movers backing up the same data at once (real local S3)', () => {
  let s3: LocalS3;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-race-'));
    s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: ['race'] });
  });
  afterAll(async () => {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('never corrupts anything: every pack reads back whole, and both backups restore byte-identical', async () => {
    const bucket = 'race';
    const keys = deriveKeys(randomBytes(32));
    const CHUNK = 64 * 1024;
    const data = Buffer.concat([randomBytes(CHUNK * 24), Buffer.alloc(CHUNK * 2), Buffer.alloc(CHUNK * 6, 'lifeboat ')]);
    // Two movers: separate clients and stores, the same data (two VMs cloned from one template), at once.
    const mover = () =>
      new S3ObjectStore(s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS }), bucket);
    const reader = {
      sizeBytes: data.length,
      read: async (buf: Buffer, offset: number, length: number) => data.copy(buf, 0, offset, offset + length),
      close: async () => {},
    };
    const results = await Promise.all(
      ['vm-a', 'vm-b'].map((vm) =>
        backupDisk({
          repository: new Repository(mover(), keys),
          reader,
          disk: { diskId: 'disk0', path: vm, sizeBytes: data.length },
          backupId: vm,
          chunkSize: CHUNK,
          parallelism: 4,
          packBytes: 256 * 1024,
        }),
      ),
    );
    for (const r of results) {
      // Each mover stored every non-zero chunk or found it stored (by itself, or by the other through the index).
      expect(r.stats.zeroChunks).toBe(2);
      expect(r.stats.uploadedChunks + r.stats.dedupedChunks + r.stats.parentChunks).toBe(30);
    }
    expect(results[0]!.stats.uploadedChunks + results[1]!.stats.uploadedChunks).toBeGreaterThanOrEqual(30);

    // Random pack ids: the two writers never wrote one key; every pack's trailer opens and lists what the manifests say.
    const store = mover();
    const packs = new Map<string, Buffer>();
    for await (const o of store.list('packs/')) packs.set(o.key, (await store.get(o.key))!);
    expect(packs.size).toBeGreaterThanOrEqual(2);
    for (const [key, body] of packs) expect(readPackTrailer(keys, body, packIdOfKey(key)!).pack.size).toBe(body.length);
    for (const vm of ['vm-a', 'vm-b']) {
      const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(vm, 'disk0')))!, vm, 'disk0', store);
      for (const p of m.packs!) expect(packs.get(objectKeys.pack(p.id))?.length).toBe(p.size);
      const target = join(dir, `${vm}.raw`);
      await restoreDisk({ repository: new Repository(store, keys), backupId: vm, diskId: 'disk0', target });
      // (a digest comparison: toEqual walks a 2 MiB buffer element by element, for seconds)
      expect(sha256(await readFile(target))).toBe(sha256(data));
    }
  });
});
