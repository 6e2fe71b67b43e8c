/**
 * The embedded stack's S3 endpoint: s3rver (objects on the local filesystem) with a small
 * middleware in front of its routes that makes it behave like S3 where Lifeboat and its
 * peers depend on it:
 *
 * - **Conditional writes.** `PUT` with `If-None-Match: *` stores the object only when the key
 *   has none: 412 PreconditionFailed when it exists, 409 ConditionalRequestConflict while
 *   another conditional write of the key is in progress (as S3 answers since 2024). s3rver
 *   3.7 ignores the header and overwrites. Movers do not use it (packs have random ids);
 *   it is kept for S3 parity, for anyone else writing to the embedded stack.
 * - **aws-chunked bodies.** SigV4 streaming uploads (`x-amz-content-sha256:
 *   STREAMING-...`, which restic and minio-go send over plain http) are de-framed before
 *   s3rver stores them; s3rver 3.7.1 would keep the framing inside the object.
 * - **Atomic PUTs.** PUTs of one key run one after the other (s3rver writes in place, so
 *   two at once could interleave); each PUT's body is read whole before its turn, so a
 *   request cut off mid-body fails alone and never blocks the key.
 * - **Request counts** per bucket, for benchmarks and tests.
 * - **Object Lock** (s3-object-lock.ts): retention set on PUT and by PutObjectRetention,
 *   deletes and overwrites of locked objects refused, with an injectable clock.
 * - **Listings past 1,000 keys** (s3-list-pages.ts): ListObjectsV2's continuation tokens,
 *   which s3rver 3.7.1 makes with DES, gone from OpenSSL 3.
 *
 * The middleware runs inside s3rver's own Koa app (first in its chain), so there is no
 * second HTTP hop.
 */
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import S3rver from 's3rver';
import { readAll, s3Error, type Ctx } from './s3-front-http.ts';
import { pageTokens, untruncated } from './s3-list-pages.ts';
import { ObjectLock, type BucketObjectLock } from './s3-object-lock.ts';

export interface LocalS3Options {
  /** Where s3rver keeps buckets and objects. */
  directory: string;
  /** Buckets created at start (existing ones are kept). */
  buckets: string[];
  /** Port on 127.0.0.1 (0: any free port). */
  port?: number;
  /** Buckets (of `buckets`) with Object Lock and their default retention (s3-object-lock.ts). */
  objectLock?: Record<string, BucketObjectLock>;
  /** The clock Object Lock retention is judged by (default: the system's). */
  now?: () => Date;
  /** Whether requests may bypass GOVERNANCE retention (hold s3:BypassGovernanceRetention); default false. */
  governanceBypass?: boolean;
}

export interface LocalS3 {
  /** The endpoint URL (path-style). */
  readonly url: string;
  /** Requests per bucket since start. */
  readonly requests: Map<string, number>;
  /** Requests per kind since start, as S3 prices them: PUT (also POST, COPY), LIST, GET, HEAD, DELETE. */
  readonly requestKinds: Map<string, number>;
  close(): Promise<void>;
}

/** Removes aws-chunked framing (`<hex size>[;chunk-signature=...]\r\n<data>\r\n ... 0\r\n`), trailers dropped. */
export function deframeAwsChunked(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    if (eol < 0) throw new Error('aws-chunked: missing chunk header');
    const header = body.toString('latin1', at, eol);
    const size = parseInt(header.split(';')[0]!, 16);
    if (!Number.isFinite(size) || size < 0) throw new Error(`aws-chunked: bad chunk header '${header.slice(0, 80)}'`);
    at = eol + 2;
    if (size === 0) break;
    if (at + size > body.length) throw new Error(`aws-chunked: chunk of ${size} bytes runs past the body's end`);
    parts.push(body.subarray(at, at + size));
    at += size + 2;
  }
  return Buffer.concat(parts);
}

/** Starts s3rver with the middleware on 127.0.0.1. */
export async function startLocalS3(o: LocalS3Options): Promise<LocalS3> {
  const server = new S3rver({
    port: o.port ?? 0,
    address: '127.0.0.1',
    directory: o.directory,
    silent: true,
    configureBuckets: o.buckets.map((name) => ({ name })),
  });
  const requests = new Map<string, number>();
  const requestKinds = new Map<string, number>();
  const conditionalInFlight = new Set<string>();
  const objectPath = (bucket: string, key: string) => server.store.getResourcePath(bucket, key, 'object');
  const locked = Object.fromEntries(Object.entries(o.objectLock ?? {}).filter(([b]) => o.buckets.includes(b)));
  const lock = new ObjectLock(server.store, { buckets: locked, ...(o.now ? { now: o.now } : {}), ...(o.governanceBypass ? { governanceBypass: true } : {}) });

  const front = async (ctx: Ctx, next: () => Promise<void>) => {
    const [, bucket = '', ...rest] = ctx.path.split('/');
    requests.set(bucket || '(service)', (requests.get(bucket || '(service)') ?? 0) + 1);
    const key = decodeURIComponent(rest.join('/'));
    const kind = ctx.method === 'GET' && !key ? 'LIST' : ctx.method === 'POST' ? 'PUT' : ctx.method;
    requestKinds.set(kind, (requestKinds.get(kind) ?? 0) + 1);

    const streaming = String(ctx.request.headers['x-amz-content-sha256'] ?? '').startsWith('STREAMING-');
    if (streaming) {
      let body: Buffer;
      try {
        body = deframeAwsChunked(await readAll(ctx.req));
      } catch (err) {
        return s3Error(ctx, 400, 'IncompleteBody', (err as Error).message, key);
      }
      const decoded = ctx.request.headers['x-amz-decoded-content-length'];
      if (decoded !== undefined && Number(decoded) !== body.length)
        return s3Error(ctx, 400, 'IncompleteBody', `decoded ${body.length} bytes, x-amz-decoded-content-length says ${decoded}`, key);
      ctx.request.headers['content-length'] = String(body.length);
      delete ctx.request.headers['transfer-encoding'];
      ctx.req = Readable.from([body]);
    }

    return lock.handle(ctx, bucket, key, next, (id, write) => putInTurn(ctx, bucket, key, id, write));
  };
  /** A PUT (or a multipart completion): its body read whole, If-None-Match: * honoured, one writer per key. */
  const putInTurn = async (ctx: Ctx, bucket: string, key: string, id: string, write: () => Promise<void>): Promise<void> => {
    const streaming = String(ctx.request.headers['x-amz-content-sha256'] ?? '').startsWith('STREAMING-');
    // The whole body is read before the key's turn is taken: a client that stops sending
    // (cut off mid-body) then fails only its own request and never holds the key.
    if (!streaming) {
      let body: Buffer;
      try {
        body = await readAll(ctx.req);
      } catch (err) {
        return s3Error(ctx, 400, 'IncompleteBody', `the request body ended early: ${(err as Error).message}`, key);
      }
      ctx.req = Readable.from([body]);
    }
    const conditional = ctx.method === 'PUT' && ctx.get('if-none-match') === '*';
    if (conditional && conditionalInFlight.has(id))
      return s3Error(ctx, 409, 'ConditionalRequestConflict', 'A conditional request to this key is in progress', key);
    if (conditional) conditionalInFlight.add(id);
    try {
      await oneWriterPerKey(id, async () => {
        if (
          conditional &&
          (await stat(objectPath(bucket, key)).then(
            () => true,
            () => false,
          ))
        ) {
          return s3Error(ctx, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', key);
        }
        await write();
      });
    } finally {
      if (conditional) conditionalInFlight.delete(id);
    }
  };
  /**
   * s3rver writes an object in place (truncate, then stream), so two PUTs of one key at
   * once could interleave into a mix of both bodies; S3's PUTs are atomic. PUTs of a key
   * are therefore run one after the other here, each with its body already in memory.
   */
  const writers = new Map<string, Promise<void>>();
  const oneWriterPerKey = async (id: string, write: () => Promise<void>): Promise<void> => {
    const before = writers.get(id) ?? Promise.resolve();
    const mine = before.then(write);
    const settled = mine.then(
      () => {},
      () => {},
    );
    writers.set(id, settled);
    try {
      await mine;
    } finally {
      if (writers.get(id) === settled) writers.delete(id);
    }
  };
  // Koa composes its middleware when the server starts (run → listen → callback), so the
  // front goes first in the chain, before s3rver's logger, XML encoder and routes.
  server.middleware.unshift(front as (ctx: unknown, next: () => Promise<void>) => Promise<void>);
  // Listing pages: after s3rver's XML encoder (it sees the page as an object), just before its routes (the last).
  server.middleware.splice(server.middleware.length - 1, 0, pageTokens as (ctx: unknown, next: () => Promise<void>) => Promise<void>);
  untruncated(server.store);
  const { port } = await server.run();
  await lock.persistConfigured();
  return { url: `http://127.0.0.1:${port}`, requests, requestKinds, close: () => server.close() };
}
