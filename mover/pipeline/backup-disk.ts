/**
 * One disk's transfer: read → zero check → keyed id → skip what the parent has →
 * skip what the repository has → seal (zstd + AES-GCM) → PUT, with a bounded number of
 * chunks in flight, then the manifest, last. Memory is bounded by `parallelism` chunks.
 */
import { Corrupt } from '../../core/errors.ts';
import { chunkId, decodeManifest, encodeManifest, isZero, keys, objectSha256, seal, type Manifest, type RepositoryKeys } from '../../core/format.ts';
import type { DiskRef, DiskResult, TransferStats } from '../../core/jobs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { DiskReader } from '../sources/source.ts';

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
  parallelism?: number;
  signal?: AbortSignal;
  onProgress?: (p: { bytesScanned: number; sizeBytes: number; bytesStored: number }) => void;
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
  for (const [id, size] of Object.entries(parent.storedSizes)) known.set(id, { size, sha256: parent.storedSha256?.[id] });
  return known;
}

export async function backupDisk(o: BackupDiskOptions): Promise<DiskResult> {
  const started = performance.now();
  const { chunkSize, disk } = o;
  const count = Math.ceil(disk.sizeBytes / chunkSize);
  const parent = await loadParentChunks(o);
  const stats: TransferStats = { bytesScanned: 0, bytesNew: 0, bytesZero: 0, bytesUploaded: 0, bytesStored: 0, chunks: count, zeroChunks: 0, parentChunks: 0, dedupedChunks: 0, uploadedChunks: 0, seconds: 0 };
  const manifest: Manifest = { version: 1, backupId: o.backupId, diskId: disk.diskId, sizeBytes: disk.sizeBytes, chunkSize, chunks: new Array(count).fill(null), storedSizes: {}, storedSha256: {} };
  const inFlight = new Set<string>();
  const record = (id: string, c: KnownChunk) => {
    manifest.storedSizes[id] = c.size;
    if (c.sha256) manifest.storedSha256[id] = c.sha256;
  };

  const process = async (index: number, data: Buffer) => {
    if (isZero(data)) {
      stats.zeroChunks++;
      stats.bytesZero += data.length;
      return;
    }
    const id = chunkId(o.keys, data);
    manifest.chunks[index] = id;
    const known = parent.get(id);
    if (known) {
      stats.parentChunks++;
      record(id, known);
      return;
    }
    stats.bytesNew += data.length;
    if (manifest.storedSizes[id] !== undefined || inFlight.has(id)) {
      stats.dedupedChunks++;
      return;
    }
    inFlight.add(id);
    const key = keys.chunk(id);
    // Seal before looking: an object already stored under this id is trusted only when it
    // has the size this chunk seals to (sealing is size-deterministic; the nonce is random,
    // so the bytes differ between writers), so a partial object left by a killed writer on
    // a non-atomic store (s3rver writes in place) is overwritten, never referenced.
    const sealed = await seal(o.keys, data, id);
    const sha256 = objectSha256(sealed);
    const existing = await o.store.head(key);
    if (existing && existing.size === sealed.length) {
      stats.dedupedChunks++;
      record(id, { size: existing.size, ...(existing.sha256 ? { sha256: existing.sha256 } : {}) });
      return;
    }
    await o.store.put(key, sealed, sha256);
    record(id, { size: sealed.length, sha256 });
    stats.uploadedChunks++;
    stats.bytesUploaded += data.length;
    stats.bytesStored += sealed.length;
  };

  const parallelism = o.parallelism ?? 8;
  const pool: Buffer[] = [];
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for (let i = 0; i < count; i++) {
    o.signal?.throwIfAborted();
    if (failure) break;
    const offset = i * chunkSize;
    const length = Math.min(chunkSize, disk.sizeBytes - offset);
    const buf = length === chunkSize ? (pool.pop() ?? Buffer.allocUnsafe(chunkSize)) : Buffer.allocUnsafe(length);
    const n = await o.reader.read(buf, offset, length);
    if (n !== length) throw new Corrupt(`disk '${disk.diskId}' ended early: read ${n} of ${length} bytes at offset ${offset} (was the image truncated?)`);
    stats.bytesScanned += length;
    const p = process(i, buf).catch((err) => { failure ??= err; }).finally(() => {
      running.delete(p);
      if (buf.length === chunkSize) pool.push(buf); // read buffers are reused: memory stays at `parallelism` chunks
    });
    running.add(p);
    if (running.size >= parallelism) await Promise.race(running);
    o.onProgress?.({ bytesScanned: stats.bytesScanned, sizeBytes: disk.sizeBytes, bytesStored: stats.bytesStored });
  }
  await Promise.all(running);
  if (failure) throw failure;
  // Chunks deduplicated against another chunk still in flight got their size when it landed.
  for (const id of manifest.chunks) if (id !== null && manifest.storedSizes[id] === undefined) throw new Corrupt(`chunk ${id} of disk '${disk.diskId}' has no stored size`);

  const manifestKey = keys.manifest(o.backupId, disk.diskId);
  const sealedManifest = await encodeManifest(o.keys, manifest);
  await o.store.put(manifestKey, sealedManifest, objectSha256(sealedManifest));
  stats.bytesStored += sealedManifest.length;
  stats.seconds = (performance.now() - started) / 1000;
  return { diskId: disk.diskId, sizeBytes: disk.sizeBytes, manifestKey, stats };
}
