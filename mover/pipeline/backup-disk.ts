/**
 * One disk's transfer: read → zero check → keyed id → skip what the parent has →
 * skip what the repository has → seal (zstd + AES-GCM) → PUT, with a bounded number of
 * chunks in flight, then the manifest, last. Memory is bounded by `parallelism` chunks.
 * The id and the sealing run on the chunk pool's worker threads; the main thread reads,
 * checks for zeros (memcmp) and does the requests.
 */
import { Corrupt } from '../../core/errors.ts';
import { chunkId, decodeManifest, encodeManifest, isZero, keys, objectSha256, sealedCapacity, type Manifest, type RepositoryKeys } from '../../core/format.ts';
import { segmentManifestId, type DiskRef, type DiskResult, type DiskSegment, type TransferStats } from '../../core/jobs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { DiskReader } from '../sources/source.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from './chunk-pool.ts';

export interface BackupDiskOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  reader: DiskReader;
  disk: DiskRef;
  backupId: string;
  chunkSize: number;
  /** The parent backup's manifest key for this disk, if any. */
  parentManifestKey?: string;
  parentBackupId?: string | null;
  /** Chunk ids quarantined by the control plane: never taken from the parent manifest (VmJob.healChunks). */
  healChunks?: ReadonlySet<string>;
  parallelism?: number;
  /** Worker threads for ids and sealing (default: the process-wide pool). */
  pool?: ChunkPool;
  /** zstd level for chunks (default: zstd's default, 3). */
  compressionLevel?: number;
  /** Conditional PUT or HEAD first, per chunk (default: a new DedupStrategy). */
  dedup?: DedupStrategy;
  /** Transfer only this chunk-aligned part of the disk, to a segment manifest (see keys.segmentId). */
  segment?: DiskSegment | null;
  signal?: AbortSignal;
  onProgress?: (p: { bytesScanned: number; sizeBytes: number; bytesStored: number }) => void;
}

/**
 * How a chunk the parent does not have is checked against the repository. A conditional
 * PUT (`If-None-Match: *`, where the store honours it) costs one request for a new chunk,
 * but a chunk that is already stored was sealed and sent for nothing; HEAD first costs a
 * request more for a new chunk and nothing else for a stored one. So: conditional PUTs
 * while few recent chunks turned out to be stored already (a first backup), HEAD first
 * once duplicates are common (a VM cloned from a template another VM's backup stored),
 * judged by a moving average of the outcomes.
 */
export class DedupStrategy {
  private rate = 0;
  private readonly threshold: number;
  private readonly weight: number;
  /** `threshold`: the duplicate rate above which HEAD goes first; `weight`: of each outcome in the moving average. */
  constructor(threshold = 0.1, weight = 1 / 16) {
    this.threshold = threshold;
    this.weight = weight;
  }
  /** Whether the next unknown chunk should be looked up with HEAD before sealing and sending it. */
  headFirst(): boolean {
    return this.rate > this.threshold;
  }
  /** Records whether an unknown chunk was found stored already. */
  record(stored: boolean): void {
    this.rate += this.weight * ((stored ? 1 : 0) - this.rate);
  }
}

interface KnownChunk {
  size: number;
  sha256?: string;
}

async function loadParentChunks(o: BackupDiskOptions): Promise<Map<string, KnownChunk>> {
  const known = new Map<string, KnownChunk>();
  if (!o.parentManifestKey || !o.parentBackupId) return known;
  const sealed = await o.store.get(o.parentManifestKey);
  if (!sealed) return known; // the parent was pruned: every chunk is checked against the repository instead
  const parent = await decodeManifest(o.keys, sealed, o.parentBackupId, o.disk.diskId);
  if (parent.chunkSize !== o.chunkSize) return known;
  for (const [id, size] of Object.entries(parent.storedSizes)) if (!o.healChunks?.has(id)) known.set(id, { size, sha256: parent.storedSha256?.[id] });
  return known;
}

export async function backupDisk(o: BackupDiskOptions): Promise<DiskResult> {
  const started = performance.now();
  const { chunkSize, disk } = o;
  const count = Math.ceil(disk.sizeBytes / chunkSize);
  const seg = o.segment ?? null;
  if (seg && (seg.offset % chunkSize !== 0 || seg.length <= 0 || seg.offset + seg.length > disk.sizeBytes)) {
    throw new Corrupt(`segment ${seg.index} of disk '${disk.diskId}' (offset ${seg.offset}, length ${seg.length}) is not a chunk-aligned part of its ${disk.sizeBytes} bytes`);
  }
  const firstChunk = seg ? seg.offset / chunkSize : 0;
  const endChunk = seg ? Math.ceil((seg.offset + seg.length) / chunkSize) : count;
  const manifestId = seg ? segmentManifestId(disk.diskId, seg.index) : disk.diskId;
  const parent = await loadParentChunks(o);
  const stats: TransferStats = { bytesScanned: 0, bytesNew: 0, bytesZero: 0, bytesUploaded: 0, bytesStored: 0, chunks: endChunk - firstChunk, zeroChunks: 0, parentChunks: 0, dedupedChunks: 0, uploadedChunks: 0, seconds: 0 };
  const manifest: Manifest = { version: 1, backupId: o.backupId, diskId: manifestId, sizeBytes: disk.sizeBytes, chunkSize, chunks: new Array(count).fill(null), storedSizes: {}, storedSha256: {} };
  const inFlight = new Set<string>();
  const record = (id: string, c: KnownChunk) => {
    manifest.storedSizes[id] = c.size;
    if (c.sha256) manifest.storedSha256[id] = c.sha256;
  };

  const pool = o.pool ?? sharedChunkPool();
  const dedup = o.dedup ?? new DedupStrategy();
  // Plaintext buffers are slots of chunkSize shared with the pool's workers (nothing is
  // copied or moved per chunk), reused: at most `parallelism` exist at once.
  const free: SharedSlot[] = [];
  const all: SharedSlot[] = [];
  const takeSlot = () => free.pop() ?? (all[all.length] = pool.share(chunkSize));
  // Sealed chunks are written into slots too, held until their upload is done: nothing
  // chunk-sized is allocated per chunk (buffers made on a worker and freed on the main
  // thread fragment the allocator: ~100 MiB of RSS more on the 2 GiB bench).
  const freeOut: SharedSlot[] = [];
  const takeOut = () => freeOut.pop() ?? (all[all.length] = pool.share(sealedCapacity(chunkSize)));

  const process = async (index: number, first: SharedSlot, length: number) => {
    let buf: SharedSlot | undefined = first;
    let out: SharedSlot | undefined;
    const release = (b: SharedSlot | undefined) => {
      if (b) free.push(b);
      buf = undefined;
    };
    try {
      if (isZero(buf.bytes.subarray(0, length))) {
        stats.zeroChunks++;
        stats.bytesZero += length;
        return;
      }
      // The id on this thread while every worker has work queued (sealing, or ids of chunks
      // read faster than the workers hash them), else on a worker: the main thread is
      // otherwise idle in an incremental, where hashing is most of the work.
      const id = pool.backlog >= pool.size ? chunkId(o.keys, buf.bytes.subarray(0, length)) : await pool.hashSlot(o.keys, buf, length);
      manifest.chunks[index] = id;
      const known = parent.get(id);
      if (known) {
        stats.parentChunks++;
        record(id, known);
        return;
      }
      stats.bytesNew += length;
      if (manifest.storedSizes[id] !== undefined || inFlight.has(id)) {
        stats.dedupedChunks++;
        return;
      }
      inFlight.add(id);
      const key = keys.chunk(id);
      // An object already stored under this id is trusted only when it has the size this
      // chunk seals to (sealing is size-deterministic; the nonce is random, so the bytes
      // differ between writers), so a partial object left by a killed writer on a
      // non-atomic store (s3rver writes in place) is overwritten, never referenced.
      out = takeOut();
      const sealing = pool.sealSlot(o.keys, buf, length, id, o.compressionLevel === undefined ? {} : { level: o.compressionLevel }, out);
      // With conditional writes a new chunk costs one request (no HEAD); otherwise (or while
      // duplicates are common: see DedupStrategy) HEAD while sealing, then PUT.
      const conditional = o.store.putIfAbsent && !dedup.headFirst() ? o.store.putIfAbsent.bind(o.store) : undefined;
      const [s, looked] = await Promise.all([sealing, conditional ? undefined : o.store.head(key)]);
      release(buf); // the plaintext is not needed for the upload
      const existing = !conditional ? looked : (await conditional(key, s.sealed, s.sha256)) === 'exists' ? await o.store.head(key) : null;
      dedup.record(existing != null);
      if (existing && existing.size === s.sealed.length) {
        stats.dedupedChunks++;
        record(id, { size: existing.size, ...(existing.sha256 ? { sha256: existing.sha256 } : {}) });
        return;
      }
      if (existing !== null) await o.store.put(key, s.sealed, s.sha256); // null: the conditional write created it
      record(id, { size: s.sealed.length, sha256: s.sha256 });
      stats.uploadedChunks++;
      stats.bytesUploaded += length;
      stats.bytesStored += s.sealed.length;
    } finally {
      release(buf);
      if (out) freeOut.push(out);
    }
  };

  const parallelism = o.parallelism ?? 8;
  const running = new Set<Promise<void>>();
  let failure: unknown;
  try {
    for (let i = firstChunk; i < endChunk; i++) {
      o.signal?.throwIfAborted();
      if (failure) break;
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, disk.sizeBytes - offset);
      const buf = takeSlot();
      const n = await o.reader.read(buf.bytes, offset, length);
      if (n !== length) {
        throw new Corrupt(`disk '${disk.diskId}' ended early: read ${n} of ${length} bytes at offset ${offset} (was the image truncated?)`);
      }
      stats.bytesScanned += length;
      const p = process(i, buf, length).catch((err) => { failure ??= err; }).finally(() => running.delete(p));
      running.add(p);
      if (running.size >= parallelism) await Promise.race(running);
      o.onProgress?.({ bytesScanned: stats.bytesScanned, sizeBytes: disk.sizeBytes, bytesStored: stats.bytesStored });
    }
  } finally {
    await Promise.allSettled(running);
    for (const slot of all) pool.unshare(slot); // the workers drop their references
  }
  if (failure) throw failure;
  // Chunks deduplicated against another chunk still in flight got their size when it landed.
  for (const id of manifest.chunks) if (id !== null && manifest.storedSizes[id] === undefined) throw new Corrupt(`chunk ${id} of disk '${disk.diskId}' has no stored size`);

  const manifestKey = keys.manifest(o.backupId, manifestId);
  const sealedManifest = await encodeManifest(o.keys, manifest);
  await o.store.put(manifestKey, sealedManifest, objectSha256(sealedManifest));
  stats.bytesStored += sealedManifest.length;
  stats.seconds = (performance.now() - started) / 1000;
  return { diskId: disk.diskId, sizeBytes: disk.sizeBytes, manifestKey, stats, ...(seg ? { segment: seg } : {}) };
}
