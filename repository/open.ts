/**
 * Opening a repository: the one place that picks how its master key is unwrapped (KMS in
 * AWS, a key file in the embedded stack), loads it and derives the keys. Movers,
 * functions and the embedded stack all open repositories here, and read and write them
 * through the `Repository` it returns (restic's `internal/repository`, kopia's content
 * manager): manifests as streams, chunks by location, the index.
 */
import type { ObjectStore } from '../core/object-store.ts';
import { chunkId, deriveKeys, open, type RepositoryKeys } from './format.ts';
import { KeyFileWrapper, KmsKeyWrapper, loadMasterKey, type KeyWrapper, type KmsClientLike } from './keyring.ts';
import { ManifestReader } from './manifest/reader.ts';
import type { ManifestHead } from './manifest/head.ts';
import { ManifestWriter, putHead, type ManifestWriterOptions } from './manifest/writer.ts';
import { readChunk, type ChunkLocation } from './packs.ts';
import { PackWriter, type PackWriterOptions } from './pack-writer.ts';
import type { PackBuffer } from './pack-buffer.ts';
import { IndexCache, RepositoryIndex } from './repository-index.ts';

/** How a repository's master key is unwrapped: by a KMS key (AWS), or by a local key file (embedded stack). */
export type KeySource = { kms: KmsClientLike; kmsKeyId: string } | { keyFile: string };

/** The wrapper of `bucket`'s master key for `source`; `create` makes a missing key file (the embedded stack's first start). */
export function keyWrapper(source: KeySource, bucket: string, opts: { create?: boolean } = {}): Promise<KeyWrapper> {
  if ('kms' in source) return Promise.resolve(new KmsKeyWrapper({ client: source.kms, keyId: source.kmsKeyId, repository: bucket }));
  return KeyFileWrapper.load(source.keyFile, opts);
}

/** An open repository: its store and keys, and what reads and writes its objects. */
export class Repository {
  readonly store: ObjectStore;
  /** The derived keys, for the chunk pool's workers (which seal and open on their own threads); callers use the methods. */
  readonly keys: RepositoryKeys;
  /** The master key, when the repository was opened from it (not by `withKeys`). */
  readonly masterKey: Buffer | undefined;
  /** The repository's index as this process keeps it, up to date on each `refresh()` (spilled to `indexDir` when given). */
  readonly index: IndexCache;

  constructor(store: ObjectStore, key: Buffer | RepositoryKeys, o: { indexDir?: string } = {}) {
    this.store = store;
    this.masterKey = Buffer.isBuffer(key) ? key : undefined;
    this.keys = Buffer.isBuffer(key) ? deriveKeys(key) : key;
    this.index = new IndexCache(store, this.keys, o.indexDir ? { dir: o.indexDir } : {});
  }

  /**
   * `r` as a Repository: itself when it is one, else one over its store and derived keys
   * (a caller that was handed `{ store, keys }`, until every task's dependencies hand out Repositories).
   */
  static of(r: { store: ObjectStore; keys: RepositoryKeys }): Repository {
    return r instanceof Repository ? r : new Repository(r.store, r.keys);
  }

  /** A disk's (or a segment's) manifest as a stream, any version; undefined when it does not exist. */
  openManifest(backupId: string, diskId: string): Promise<ManifestReader | undefined> {
    return ManifestReader.open(this.store, this.keys, backupId, diskId);
  }

  /** A manifest as a stream from its sealed head already read (`sealed`, the object at the manifest's key); throws Corrupt when it does not open. */
  manifestFromSealed(sealed: Uint8Array, backupId: string, diskId: string): Promise<ManifestReader> {
    return ManifestReader.fromSealed(this.store, this.keys, sealed, backupId, diskId);
  }

  /** A manifest written as a stream (format 3). */
  manifestWriter(o: Omit<ManifestWriterOptions, 'store' | 'keys'>): ManifestWriter {
    return new ManifestWriter({ ...o, store: this.store, keys: this.keys });
  }

  /** Stores a format-3 manifest head naming pieces already stored (JoinSegments); returns its sealed bytes. */
  putManifestHead(head: ManifestHead): Promise<number> {
    return putHead(this.store, this.keys, head);
  }

  /** A writer of packs (and their index objects) into this repository. */
  packWriter<B extends PackBuffer>(o: Omit<PackWriterOptions<B>, 'store' | 'keys'>): PackWriter<B> {
    return new PackWriter<B>({ ...o, store: this.store, keys: this.keys });
  }

  /** A chunk's stored envelope at `loc` (a range of its pack); undefined when the object is missing. */
  readChunk(loc: ChunkLocation, into?: Uint8Array): Promise<Buffer | undefined> {
    return readChunk(this.store, loc, into);
  }

  /** The plaintext of a sealed envelope (a chunk's: `purpose` is its id); throws Corrupt when it does not open. */
  open(sealed: Uint8Array, purpose: string): Promise<Buffer> {
    return open(this.keys, sealed, purpose);
  }

  /** The keyed id of a chunk's plaintext. */
  chunkId(plaintext: Uint8Array): string {
    return chunkId(this.keys, plaintext);
  }

  /** The repository's index, read now (not kept: a function's one look; a mover refreshes `index`). */
  loadIndex(): Promise<RepositoryIndex> {
    return RepositoryIndex.load(this.store, this.keys);
  }
}

/**
 * Opens the repository in `bucket` through `store`: its master key unwrapped as `keys`
 * says. With `create`, a repository without a key gets one (and a missing key file is made).
 */
export async function openRepository(o: {
  store: ObjectStore;
  bucket: string;
  keys: KeySource;
  create?: boolean;
  indexDir?: string;
}): Promise<Repository & { readonly masterKey: Buffer }> {
  const create = o.create === true;
  const masterKey = await loadMasterKey(o.store, await keyWrapper(o.keys, o.bucket, { create }), { create });
  return new Repository(o.store, masterKey, o.indexDir ? { indexDir: o.indexDir } : {}) as Repository & { readonly masterKey: Buffer };
}
