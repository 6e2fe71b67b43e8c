import { GetObjectCommand, HeadObjectCommand, NoSuchKey, NotFound, PutObjectCommand, S3Client, S3ServiceException, type PutObjectCommandInput, type PutObjectCommandOutput } from '@aws-sdk/client-s3';
import type { BuildMiddleware } from '@smithy/types';
import { StorageUnavailable } from './errors.ts';
import type { ObjectInfo, ObjectStore } from './object-store.ts';

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
}

export function s3Client(e: S3Endpoint): S3Client {
  return new S3Client({
    region: e.region,
    ...(e.endpoint ? { endpoint: e.endpoint } : {}),
    forcePathStyle: e.forcePathStyle ?? false,
    ...(e.credentials ? { credentials: e.credentials } : {}),
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

const isMissing = (err: unknown) =>
  err instanceof NoSuchKey || err instanceof NotFound || (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 404);

/** A build-step middleware that sets x-amz-content-sha256 (hex) from a known base64 SHA-256 of the body. */
const signedPayloadHash = (sha256Base64: string): BuildMiddleware<PutObjectCommandInput, PutObjectCommandOutput> => (next) => async (args) => {
  const request = args.request as { headers?: Record<string, string> };
  if (request.headers) request.headers['x-amz-content-sha256'] = Buffer.from(sha256Base64, 'base64').toString('hex');
  return next(args);
};

/** ObjectStore over one S3 bucket; SDK errors become StorageUnavailable naming the key. */
export class S3ObjectStore implements ObjectStore {
  private readonly client: S3Client;
  readonly bucket: string;
  constructor(client: S3Client, bucket: string) {
    this.client = client;
    this.bucket = bucket;
  }

  async put(key: string, body: Uint8Array, sha256?: string): Promise<void> {
    try {
      const command = new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.byteLength, ...(sha256 ? { ChecksumSHA256: sha256 } : {}) });
      // The SigV4 signer hashes the whole body on the calling thread unless
      // x-amz-content-sha256 is already set; the caller's SHA-256 (computed off the main
      // thread by the chunk pool) is that same hash, so the body is not hashed again.
      if (sha256) command.middlewareStack.add(signedPayloadHash(sha256), { step: 'build', name: 'lifeboatSignedPayloadHash' });
      await this.client.send(command);
    } catch (err) {
      throw new StorageUnavailable(`PUT s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      const bytes = await out.Body!.transformToByteArray(); // a fresh array: wrapped, not copied
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw new StorageUnavailable(`GET s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
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
