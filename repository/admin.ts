/**
 * The control plane's side of a repository: listing and deleting objects, which movers
 * are never allowed to do. Prune deletes manifests of expired backups; garbage
 * collection lists chunks and deletes unreferenced ones. Narrow, like ObjectStore.
 */
import { DeleteObjectsCommand, type S3Client } from '@aws-sdk/client-s3';
import { StorageUnavailable } from '../contracts/errors.ts';
import type { MemoryObjectStore } from '../core/memory-store.ts';
import { listBucket } from '../core/s3-store.ts';
import type { ObjectRetention, RetentionReader } from './object-lock.ts';

export interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
}

export interface DeleteOutcome {
  deleted: string[];
  /** Keys the store refused to delete (Object Lock, permissions), with its reason. */
  failed: { key: string; reason: string }[];
}

export interface RepositoryAdmin {
  /** Every object under `prefix`, in key order. */
  list(prefix: string): AsyncIterable<ListedObject>;
  delete(keys: string[]): Promise<DeleteOutcome>;
}

/** RepositoryAdmin over one S3 bucket: ListObjectsV2 and DeleteObjects (1,000 keys a request). */
export class S3RepositoryAdmin implements RepositoryAdmin {
  private readonly client: S3Client;
  readonly bucket: string;
  constructor(client: S3Client, bucket: string) {
    this.client = client;
    this.bucket = bucket;
  }

  list(prefix: string): AsyncIterable<ListedObject> {
    return listBucket(this.client, this.bucket, prefix);
  }

  async delete(keys: string[]): Promise<DeleteOutcome> {
    const outcome: DeleteOutcome = { deleted: [], failed: [] };
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      let out;
      try {
        out = await this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: false } }));
      } catch (err) {
        throw new StorageUnavailable(`DELETE of ${batch.length} objects in s3://${this.bucket} failed: ${(err as Error).message}`, err);
      }
      const failed = new Set<string>();
      for (const e of out.Errors ?? []) {
        failed.add(e.Key!);
        outcome.failed.push({ key: e.Key!, reason: `${e.Code ?? 'Error'}: ${e.Message ?? ''}`.trim() });
      }
      for (const k of batch) if (!failed.has(k)) outcome.deleted.push(k);
    }
    return outcome;
  }
}

/** RepositoryAdmin over a MemoryObjectStore (tests); `modified` overrides an object's time, `locks` sets its retention. */
export class MemoryRepositoryAdmin implements RepositoryAdmin, RetentionReader {
  readonly store: MemoryObjectStore;
  readonly modified = new Map<string, Date>();
  readonly locks = new Map<string, ObjectRetention>();
  constructor(store: MemoryObjectStore) {
    this.store = store;
  }
  async *list(prefix: string): AsyncIterable<ListedObject> {
    for (const key of [...this.store.objects.keys()].filter((k) => k.startsWith(prefix)).sort()) {
      const body = this.store.objects.get(key);
      if (body) yield { key, size: body.length, lastModified: this.modified.get(key) ?? new Date() };
    }
  }
  async delete(keys: string[]): Promise<DeleteOutcome> {
    for (const k of keys) this.store.objects.delete(k);
    return { deleted: [...keys], failed: [] };
  }
  async retention(key: string) {
    return this.store.objects.has(key) ? (this.locks.get(key) ?? null) : undefined;
  }
}
