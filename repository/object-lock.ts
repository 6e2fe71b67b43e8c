/**
 * S3 Object Lock as the control plane sees it: an object's retention (mode and
 * retain-until, read by HEAD) and the bucket's lock configuration, for garbage collection
 * and lock extension; extending a retention (PutObjectRetention), for the one function
 * allowed to (functions/gc/extend-locks.ts; cdk/lib/function-access.ts grants
 * s3:PutObjectRetention to it alone).
 */
import { GetObjectLockConfigurationCommand, HeadObjectCommand, PutObjectRetentionCommand, S3ServiceException, type S3Client } from '@aws-sdk/client-s3';
import { StorageUnavailable } from '../contracts/errors.ts';

export type LockMode = 'GOVERNANCE' | 'COMPLIANCE';

/** An object version's retention: it cannot be deleted or overwritten before `until`. */
export interface ObjectRetention {
  mode: LockMode;
  until: Date;
}

/** A bucket's Object Lock: null when the bucket has none; `mode` and `days` when it has a default retention. */
export type BucketLock = { mode?: LockMode; days?: number } | null;

/** Reads retention (garbage collection, lock extension). */
export interface RetentionReader {
  /** The object's retention; null when it has none, undefined when the object does not exist. */
  retention(key: string): Promise<ObjectRetention | null | undefined>;
}

/** Reads and extends retention: lock extension only. */
export interface LockExtender extends RetentionReader {
  /** The bucket's Object Lock configuration. */
  bucketLock(): Promise<BucketLock>;
  /** Sets the object's retention (S3 refuses a shorter one with AccessDenied). */
  extend(key: string, retention: ObjectRetention): Promise<void>;
}

const status = (err: unknown) => (err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined);

/** The retention HEAD reports for `key` in `bucket` (null: none; undefined: no such object). */
export async function headRetention(client: S3Client, bucket: string, key: string): Promise<ObjectRetention | null | undefined> {
  let out;
  try {
    out = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  } catch (err) {
    if (status(err) === 404) return undefined;
    throw new StorageUnavailable(`HEAD of s3://${bucket}/${key} (its Object Lock retention) failed: ${(err as Error).message}`, err);
  }
  if (!out.ObjectLockMode || !out.ObjectLockRetainUntilDate) return null;
  return { mode: out.ObjectLockMode as LockMode, until: out.ObjectLockRetainUntilDate };
}

/** LockExtender over one S3 bucket. */
export class S3ObjectLocks implements LockExtender {
  private readonly client: S3Client;
  readonly bucket: string;
  constructor(client: S3Client, bucket: string) {
    this.client = client;
    this.bucket = bucket;
  }

  retention(key: string) {
    return headRetention(this.client, this.bucket, key);
  }

  async bucketLock(): Promise<BucketLock> {
    let out;
    try {
      out = await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }));
    } catch (err) {
      // No configuration; or an S3-compatible store that has no Object Lock at all, so nothing in it is locked.
      if ((err as Error).name === 'ObjectLockConfigurationNotFoundError' || (err as Error).name === 'NotImplemented' || status(err) === 501) return null;
      throw new StorageUnavailable(`reading the Object Lock configuration of s3://${this.bucket} failed: ${(err as Error).message}`, err);
    }
    if (out.ObjectLockConfiguration?.ObjectLockEnabled !== 'Enabled') return null;
    const d = out.ObjectLockConfiguration.Rule?.DefaultRetention;
    const days = d?.Days ?? (d?.Years !== undefined ? d.Years * 365 : undefined);
    return { ...(d?.Mode ? { mode: d.Mode as LockMode } : {}), ...(days !== undefined ? { days } : {}) };
  }

  async extend(key: string, r: ObjectRetention): Promise<void> {
    try {
      await this.client.send(new PutObjectRetentionCommand({ Bucket: this.bucket, Key: key, Retention: { Mode: r.mode, RetainUntilDate: r.until } }));
    } catch (err) {
      throw new StorageUnavailable(
        `extending the Object Lock retention of s3://${this.bucket}/${key} to ${r.until.toISOString()} (${r.mode}) failed: ${(err as Error).message}`,
        err,
      );
    }
  }
}
