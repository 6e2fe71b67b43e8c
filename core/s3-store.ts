import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  NoSuchKey,
  NotFound,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type PutObjectCommandInput,
  type PutObjectCommandOutput,
} from '@aws-sdk/client-s3';
import { finished, Readable } from 'node:stream';
import type { BuildMiddleware } from '@smithy/types';
import type { StorageEndpoint } from '../contracts/endpoints.ts';
import { StorageUnavailable } from '../contracts/errors.ts';
import type { GetOptions, ListedKey, ObjectInfo, ObjectStore, PutChecksum } from './object-store.ts';

/**
 * Credentials for the local servers of the embedded stack: s3rver accepts only its fixed
 * pair, dynalite and the local Step Functions API accept any. Never used against AWS.
 */
export const LOCAL_ENDPOINT_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

/** Settings of an S3-compatible endpoint: its quirks are settings, not code forks. */
export interface S3Endpoint {
  endpoint?: string;
  region: string;
  forcePathStyle?: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** A profile of the AWS shared config files to take credentials from (unset: the default chain). */
  profile?: string;
  /** Flexible checksums on requests: only when an operation requires one (default), or whenever supported. */
  checksums?: 'when-required' | 'when-supported';
  /** How long a connection may take to open (default {@link DEFAULT_S3_TIMEOUTS}). */
  connectTimeoutMs?: number;
  /**
   * How long a request may go with no byte moving either way, before or during its
   * response body (default {@link DEFAULT_S3_TIMEOUTS}): a stalled request or a dead
   * connection fails as a TimeoutError (retryable) instead of waiting for ever. Idle time,
   * not total time, so a large PUT over a slow link is not cut.
   */
  requestTimeoutMs?: number;
  /** Attempts of the SDK's own retry (default: the SDK's, 3). */
  maxAttempts?: number;
}

/** Deadlines of every S3 request when the endpoint sets none. */
export const DEFAULT_S3_TIMEOUTS = { connectTimeoutMs: 10_000, requestTimeoutMs: 60_000 } as const;

/**
 * The client settings for a repository's endpoint (contracts/endpoints.ts), or for the stack's
 * own S3 (`own`: its region, and its URL outside AWS) when the repository names none. Path
 * style is the default with a URL. Credentials are the caller's own to add.
 */
export function endpointSettings(e: StorageEndpoint | undefined, own: { region: string; url?: string | undefined }): S3Endpoint {
  const url = e ? e.url : own.url;
  return {
    region: e?.region ?? own.region,
    ...(url ? { endpoint: url } : {}),
    forcePathStyle: e?.pathStyle ?? !!url,
    ...(e?.checksums ? { checksums: e.checksums } : {}),
  };
}

export function s3Client(e: S3Endpoint): S3Client {
  return new S3Client({
    region: e.region,
    ...(e.endpoint ? { endpoint: e.endpoint } : {}),
    forcePathStyle: e.forcePathStyle ?? false,
    ...(e.credentials ? { credentials: e.credentials } : e.profile ? { profile: e.profile } : {}),
    // No `Expect: 100-continue` (the SDK's default for bodies of 2 MiB or more): every 8 MiB
    // pack PUT would wait a round trip for the go-ahead before its body (bench/MEASUREMENTS.md).
    expectContinueHeader: false,
    requestChecksumCalculation: e.checksums === 'when-supported' ? 'WHEN_SUPPORTED' : 'WHEN_REQUIRED',
    responseChecksumValidation: e.checksums === 'when-supported' ? 'WHEN_SUPPORTED' : 'WHEN_REQUIRED',
    // Without deadlines one stalled response keeps a task alive with no progress until its
    // 12 h Step Functions timeout; the socket's idle timeout also covers a body that stops.
    requestHandler: {
      connectionTimeout: e.connectTimeoutMs ?? DEFAULT_S3_TIMEOUTS.connectTimeoutMs,
      socketTimeout: e.requestTimeoutMs ?? DEFAULT_S3_TIMEOUTS.requestTimeoutMs,
    },
    ...(e.maxAttempts ? { maxAttempts: e.maxAttempts } : {}),
  });
}

const isMissing = (err: unknown) =>
  err instanceof NoSuchKey || err instanceof NotFound || (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 404);

/**
 * A build-step middleware that sets x-amz-content-sha256: the hex of a known base64 SHA-256
 * of the body, or UNSIGNED-PAYLOAD (the body is then covered by its CRC-32 only).
 */
const payloadHash =
  (value: string): BuildMiddleware<PutObjectCommandInput, PutObjectCommandOutput> =>
  (next) =>
  async (args) => {
    const request = args.request as { headers?: Record<string, string> };
    if (request.headers) request.headers['x-amz-content-sha256'] = value;
    return next(args);
  };

/**
 * A response body read into one buffer: `into` when given and large enough (the result is
 * a view of it), else a new buffer that owns its whole ArrayBuffer (transferable to a
 * worker thread without a copy). With a Content-Length each network read is copied in
 * once; the SDK's `transformToByteArray` collects the pieces and concatenates them, which
 * costs a second copy and garbage per object (~20% of the restore's main-thread time,
 * profiled).
 */
export async function collectBody(body: AsyncIterable<Uint8Array>, contentLength: number | undefined, what: string, into?: Uint8Array): Promise<Buffer> {
  if (contentLength === undefined) {
    const parts: Uint8Array[] = [];
    for await (const d of body) parts.push(d);
    const all = Buffer.concat(parts);
    return Buffer.from(all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength));
  }
  const out = into && into.byteLength >= contentLength ? Buffer.from(into.buffer, into.byteOffset, contentLength) : Buffer.from(new ArrayBuffer(contentLength));
  const at = body instanceof Readable ? await readFlowing(body, out, what) : await readIterating(body, out, what);
  if (at !== contentLength) throw new Error(`${what}: the body ended after ${at} of ${contentLength} bytes`);
  return out;
}

const tooLong = (what: string, length: number) => new Error(`${what}: the body is longer than its Content-Length ${length}`);

async function readIterating(body: AsyncIterable<Uint8Array>, out: Buffer, what: string): Promise<number> {
  let at = 0;
  for await (const d of body) {
    if (at + d.byteLength > out.length) throw tooLong(what, out.length);
    out.set(d, at);
    at += d.byteLength;
  }
  return at;
}

/**
 * A Node stream (the SDK's body on Node: the HTTP response) read with 'data' events: each
 * network read is copied into `out` as it arrives, without the async iterator's buffering
 * and promise per read. The bytes read once it ended; rejects when it fails or is cut short.
 */
function readFlowing(body: Readable, out: Buffer, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let at = 0;
    let failure: Error | undefined;
    body.on('data', (d: Uint8Array) => {
      if (failure) return;
      if (at + d.byteLength > out.length) {
        failure = tooLong(what, out.length);
        body.destroy(failure);
        return;
      }
      out.set(d, at);
      at += d.byteLength;
    });
    finished(body, (err) => (err ? reject(failure ?? err) : resolve(at)));
  });
}

/** Every object under `prefix` in `bucket`, in key order (ListObjectsV2, 1,000 keys a request). */
export async function* listBucket(client: S3Client, bucket: string, prefix: string): AsyncIterable<ListedKey & { lastModified: Date }> {
  let token: string | undefined;
  do {
    let out;
    try {
      out = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    } catch (err) {
      throw new StorageUnavailable(`LIST s3://${bucket}/${prefix} failed: ${(err as Error).message}`, err);
    }
    for (const o of out.Contents ?? []) yield { key: o.Key!, size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
}

/**
 * One GET as it went: when it was sent, when its response's headers arrived (its first
 * byte, near enough) and when its body was read, in ms of `performance.now()`; for finding
 * the requests a task waits on one after another (a round trip each over a WAN).
 */
export interface GetTrace {
  key: string;
  range?: { offset: number; length: number };
  startMs: number;
  headersMs: number;
  endMs: number;
  bytes: number;
}

/** ObjectStore over one S3 bucket; SDK errors become StorageUnavailable naming the key. */
export class S3ObjectStore implements ObjectStore {
  private readonly client: S3Client;
  readonly bucket: string;
  private readonly onGet: ((t: GetTrace) => void) | undefined;
  /** `onGet`: told of every GET that returned a body (a debug trace: mover/repository-access.ts LIFEBOAT_S3_TRACE). */
  constructor(client: S3Client, bucket: string, o: { onGet?: (t: GetTrace) => void } = {}) {
    this.client = client;
    this.bucket = bucket;
    this.onGet = o.onGet;
  }

  async put(key: string, body: Uint8Array, checksum?: PutChecksum): Promise<void> {
    try {
      const command = new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        Body: body,
        ContentLength: body.byteLength,
        ...(checksum && 'sha256' in checksum ? { ChecksumSHA256: checksum.sha256 } : {}),
        ...(checksum && 'crc32' in checksum ? { ChecksumCRC32: checksum.crc32 } : {}),
      });
      // The SigV4 signer hashes the whole body on the calling thread unless
      // x-amz-content-sha256 is already set: with the caller's SHA-256 it is that same hash;
      // with a CRC-32 the payload is unsigned (see PutChecksum), so the body is never hashed here.
      if (checksum) {
        const value = 'sha256' in checksum ? Buffer.from(checksum.sha256, 'base64').toString('hex') : 'UNSIGNED-PAYLOAD';
        command.middlewareStack.add(payloadHash(value), { step: 'build', name: 'lifeboatPayloadHash' });
      }
      await this.client.send(command);
    } catch (err) {
      throw new StorageUnavailable(`PUT s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    try {
      const r = opts.range;
      if (r && (!Number.isSafeInteger(r.offset) || r.offset < 0 || !Number.isSafeInteger(r.length) || r.length <= 0))
        throw new RangeError(`GET s3://${this.bucket}/${key}: bad range ${JSON.stringify(r)}`);
      const startMs = performance.now();
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: key, ...(r ? { Range: `bytes=${r.offset}-${r.offset + r.length - 1}` } : {}) }),
      );
      const headersMs = performance.now();
      const body = await collectBody(
        out.Body as unknown as AsyncIterable<Uint8Array>,
        out.ContentLength,
        `GET s3://${this.bucket}/${key}${r ? ` bytes ${r.offset}+${r.length}` : ''}`,
        opts.into,
      );
      this.onGet?.({ key, ...(r ? { range: r } : {}), startMs, headersMs, endMs: performance.now(), bytes: body.length });
      return body;
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw new StorageUnavailable(`GET s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ListedKey> {
    for await (const o of listBucket(this.client, this.bucket, prefix)) yield { key: o.key, size: o.size };
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key, ChecksumMode: 'ENABLED' }));
      // Real S3 returns the SHA-256 it checked on upload; stores that keep none (s3rver) return nothing.
      const sha256 = out.ChecksumSHA256 && !out.ChecksumSHA256.includes('-') ? out.ChecksumSHA256 : undefined;
      return { size: out.ContentLength ?? 0, ...(sha256 ? { sha256 } : {}) };
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw new StorageUnavailable(`HEAD s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
  }
}
