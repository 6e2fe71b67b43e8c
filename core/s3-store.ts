import { GetObjectCommand, HeadObjectCommand, NoSuchKey, NotFound, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
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
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.byteLength, ...(sha256 ? { ChecksumSHA256: sha256 } : {}) }));
    } catch (err) {
      throw new StorageUnavailable(`PUT s3://${this.bucket}/${key} failed: ${(err as Error).message}`, err);
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return Buffer.from(await out.Body!.transformToByteArray());
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
