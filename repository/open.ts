/**
 * Opening a repository: the one place that picks how its master key is unwrapped (KMS in
 * AWS, a key file in the embedded stack), loads it and derives the keys. Movers,
 * functions and the embedded stack all open repositories here, and read and write them
 * through the `Repository` it returns (restic's `internal/repository`, kopia's content
 * manager): manifests as streams, chunks by location, the index.
 */
import { Corrupt } from '../contracts/errors.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { chunkId, deriveKeys, objectKeys, open, seal, type RepositoryKeys, type SealOptions } from './format.ts';
import { openHostConfig, sealHostConfig, type HostConfigArchive } from './host-config.ts';
import { KeyFileWrapper, KmsKeyWrapper, loadMasterKey, type KeyWrapper, type KmsClientLike } from './keyring.ts';
import { ManifestReader } from './manifest/reader.ts';
import type { ManifestHead } from './manifest/head.ts';
import { ManifestWriter, putHead, type ManifestWriterOptions } from './manifest/writer.ts';
import { decodeIndexObject, openIndexObject, putIndexObject, readChunk, sealIndex, type ChunkLocation, type IndexListing, type PackContents } from './packs.ts';
import { fetchPackTrailer, readPackTrailer } from './pack-trailer.ts';
import { parentBase, type ParentBase } from './parent-chunks.ts';
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

/**
 * An open repository: its store, and what reads and writes its objects. Its keys stay
 * inside: callers use the methods; only the chunk pool's workers get them (`workerKeys`).
 */
export class Repository {
  readonly store: ObjectStore;
  /** The repository's index as this process keeps it, up to date on each `refresh()` (spilled to `indexDir` when given). */
  readonly index: IndexCache;
  readonly #keys: RepositoryKeys;

  constructor(store: ObjectStore, key: Buffer | RepositoryKeys, o: { indexDir?: string } = {}) {
    this.store = store;
    this.#keys = Buffer.isBuffer(key) ? deriveKeys(key) : key;
    this.index = new IndexCache(store, this.#keys, o.indexDir ? { dir: o.indexDir } : {});
  }

  /**
   * The derived keys, for the one caller that must hold them: the chunk pool, which hands
   * them to its worker threads to seal and open chunks there (mover/pipeline/chunk-pool.ts).
   * Everything else seals, opens and hashes through this Repository's methods.
   */
  workerKeys(): RepositoryKeys {
    return this.#keys;
  }

  /** This repository's keys over another store (a DR copy that shares the key: replication writes its index objects). */
  on(store: ObjectStore): Repository {
    return new Repository(store, this.#keys);
  }

  /** A disk's (or a segment's) manifest as a stream, any version; undefined when it does not exist. */
  openManifest(backupId: string, diskId: string): Promise<ManifestReader | undefined> {
    return ManifestReader.open(this.store, this.#keys, backupId, diskId);
  }

  /** A disk's manifest in `backupId` as the base of an incremental backup (parent-chunks.ts); undefined when it does not exist. */
  async openParent(backupId: string, diskId: string, o: { chunkSize: number; from: number }): Promise<ParentBase | undefined> {
    const parent = await this.openManifest(backupId, diskId);
    return parent && parentBase(parent, o);
  }

  /** A manifest as a stream from its sealed head already read (`sealed`, the object at the manifest's key); throws Corrupt when it does not open. */
  manifestFromSealed(sealed: Uint8Array, backupId: string, diskId: string): Promise<ManifestReader> {
    return ManifestReader.fromSealed(this.store, this.#keys, sealed, backupId, diskId);
  }

  /** A manifest written as a stream (format 3). */
  manifestWriter(o: Omit<ManifestWriterOptions, 'store' | 'keys'>): ManifestWriter {
    return new ManifestWriter({ ...o, store: this.store, keys: this.#keys });
  }

  /** Stores a format-3 manifest head naming pieces already stored (JoinSegments); returns its sealed bytes. */
  putManifestHead(head: ManifestHead): Promise<number> {
    return putHead(this.store, this.#keys, head);
  }

  /** A writer of packs (and their index objects) into this repository. */
  packWriter<B extends PackBuffer>(o: Omit<PackWriterOptions<B>, 'store' | 'keys'>): PackWriter<B> {
    return new PackWriter<B>({ ...o, store: this.store, keys: this.#keys });
  }

  /** A chunk's stored envelope at `loc` (a range of its pack); undefined when the object is missing. */
  readChunk(loc: ChunkLocation, into?: Uint8Array): Promise<Buffer | undefined> {
    return readChunk(this.store, loc, into);
  }

  /** The plaintext of a sealed envelope (a chunk's: `purpose` is its id); throws Corrupt when it does not open. */
  open(sealed: Uint8Array, purpose: string): Promise<Buffer> {
    return open(this.#keys, sealed, purpose);
  }

  /** The keyed id of a chunk's plaintext. */
  chunkId(plaintext: Uint8Array): string {
    return chunkId(this.#keys, plaintext);
  }

  /** `plaintext` sealed for `purpose` (an object's own envelope; format.ts `seal`). */
  seal(plaintext: Uint8Array, purpose: string, opts?: SealOptions): Promise<Buffer> {
    return seal(this.#keys, plaintext, purpose, opts);
  }

  /** Whether `sealed` opens as chunk `id` and its plaintext hashes to `id` (a copy of a chunk checked before it is trusted). */
  async isIntactChunk(sealed: Uint8Array, id: string): Promise<boolean> {
    try {
      return chunkId(this.#keys, await open(this.#keys, sealed, id)) === id;
    } catch {
      return false;
    }
  }

  /** Stores a backup's VM configuration (`objectKeys.vmConfig`), sealed. */
  async putVmConfig(backupId: string, config: unknown): Promise<void> {
    await this.store.put(objectKeys.vmConfig(backupId), await seal(this.#keys, Buffer.from(JSON.stringify(config)), vmConfigPurpose(backupId)));
  }

  /** A backup's VM configuration; throws Corrupt when it is missing or does not open. */
  async readVmConfig(backupId: string): Promise<Record<string, unknown>> {
    const key = objectKeys.vmConfig(backupId);
    const sealed = await this.store.get(key);
    if (!sealed) throw new Corrupt(`VM config ${key} of backup ${backupId} is missing from the repository`);
    return JSON.parse((await this.openVmConfig(sealed, backupId)).toString('utf8')) as Record<string, unknown>;
  }

  /** The plaintext of a backup's sealed VM configuration (replication checks a copy opens); throws Corrupt when it does not open. */
  openVmConfig(sealed: Uint8Array, backupId: string): Promise<Buffer> {
    return open(this.#keys, sealed, vmConfigPurpose(backupId));
  }

  /** A host's configuration archive sealed for `objectKey`, with the plaintext's SHA-256 and size (host-config.ts). */
  sealHostConfig(archive: HostConfigArchive, objectKey: string): Promise<{ sealed: Buffer; sha256: string; bytes: number }> {
    return sealHostConfig(this.#keys, archive, objectKey);
  }

  /** A host's configuration archive stored at `objectKey`, checked against `sha256` when given (host-config.ts). */
  openHostConfig(sealed: Uint8Array, objectKey: string, sha256?: string): Promise<HostConfigArchive> {
    return openHostConfig(this.#keys, sealed, objectKey, sha256);
  }

  /** What a whole pack's trailer lists (`pack`, the pack's bytes); throws Corrupt when it does not open. */
  packTrailer(pack: Uint8Array, packId: string): PackContents {
    return readPackTrailer(this.#keys, pack, packId);
  }

  /** What a stored pack's trailer lists, read from the pack's end (`size`: the pack's); undefined when the pack is gone. */
  fetchPackTrailer(packId: string, size: number): Promise<PackContents | undefined> {
    return fetchPackTrailer(this.store, this.#keys, packId, size);
  }

  /** The packs a sealed index object lists, decoded; throws Corrupt when it does not open. */
  decodeIndexObject(sealed: Uint8Array, indexId: string): Promise<PackContents[]> {
    return decodeIndexObject(this.#keys, sealed, indexId);
  }

  /** A sealed index object in its binary form (GC's consolidation copies its packs as they are); throws Corrupt when it does not open. */
  openIndexObject(sealed: Uint8Array, indexId: string): Promise<IndexListing> {
    return openIndexObject(this.#keys, sealed, indexId);
  }

  /** An index object's plaintext (packs.ts `encodeIndex`, `joinIndexSections`) sealed as index object `indexId`. */
  sealIndex(indexId: string, plaintext: Uint8Array): Promise<Buffer> {
    return sealIndex(this.#keys, indexId, plaintext);
  }

  /** Writes an index object listing `packs` (a fresh id); its id and sealed size. */
  putIndexObject(packs: readonly PackContents[]): Promise<{ indexId: string; bytes: number }> {
    return putIndexObject(this.store, this.#keys, packs);
  }

  /** The repository's index, read now (not kept: a function's one look; a mover refreshes `index`). */
  loadIndex(): Promise<RepositoryIndex> {
    return RepositoryIndex.load(this.store, this.#keys);
  }
}

const vmConfigPurpose = (backupId: string) => `vm-config:${backupId}`;

/**
 * Opens the repository in `bucket` through `store`: its master key unwrapped as `keys`
 * says. With `create`, a repository without a key gets one (and a missing key file is made).
 */
export async function openRepository(o: { store: ObjectStore; bucket: string; keys: KeySource; create?: boolean; indexDir?: string }): Promise<Repository> {
  const create = o.create === true;
  const masterKey = await loadMasterKey(o.store, await keyWrapper(o.keys, o.bucket, { create }), { create });
  return new Repository(o.store, masterKey, o.indexDir ? { indexDir: o.indexDir } : {});
}
