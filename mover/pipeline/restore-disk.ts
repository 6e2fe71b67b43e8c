/**
 * Restore one disk from its manifest into a file or a block device: parallel download;
 * open (decrypt, decompress), check the keyed id and write at offset on the chunk pool's
 * worker threads. All-zero chunks stay holes in a file; on a device they are written as
 * zeros, or skipped when the device is known to read as zeros already.
 */
import { open as openFile, stat, truncate } from 'node:fs/promises';
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../core/errors.ts';
import { decodeManifest, keys, sealedCapacity, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from './chunk-pool.ts';

export interface RestoreDiskOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  diskId: string;
  target: string;
  /** Chunks downloaded and opened at once (default 8). */
  parallelism?: number;
  /** Worker threads for opening chunks (default: the process-wide pool). */
  pool?: ChunkPool;
  /**
   * 'file': the target is created or truncated, zero chunks become holes and the file is
   * cut to the disk's size. 'device': the target exists (a block device, or a file standing
   * in for one) and is written in place, never truncated. Default: 'device' when the target
   * is a block device, else 'file'.
   */
  targetKind?: 'file' | 'device';
  /** With a 'device' target: it reads as zeros already (freshly provisioned), so zero chunks are not written. */
  targetZeroed?: boolean;
  onProgress?: (bytesDone: number, sizeBytes: number) => void;
}

/** A chunk body as an ArrayBuffer the caller owns alone (so it can be transferred to a worker). */
function ownedArrayBuffer(body: Buffer): ArrayBuffer {
  const ab = body.buffer;
  if (ab instanceof ArrayBuffer && body.byteOffset === 0 && body.byteLength === ab.byteLength) return ab;
  return new Uint8Array(body).buffer as ArrayBuffer; // a copy: the body shares its ArrayBuffer
}

export async function restoreDisk(o: RestoreDiskOptions): Promise<{ sizeBytes: number; bytesDownloaded: number }> {
  const manifestKey = keys.manifest(o.backupId, o.diskId);
  const sealed = await o.store.get(manifestKey);
  if (!sealed) throw new Corrupt(`manifest ${manifestKey} of disk '${o.diskId}' is missing from the repository`);
  const m = await decodeManifest(o.keys, sealed, o.backupId, o.diskId);
  const kind = o.targetKind ?? ((await stat(o.target).catch(() => undefined))?.isBlockDevice() ? 'device' : 'file');
  const writeZeros = kind === 'device' && !o.targetZeroed;
  const zeros = writeZeros ? Buffer.alloc(m.chunkSize) : undefined;
  const pool = o.pool ?? sharedChunkPool();
  const fh = await openFile(o.target, kind === 'device' ? 'r+' : 'w');
  let bytesDownloaded = 0;
  let done = 0;
  // Chunks are downloaded into shared slots, reused (at most `parallelism` exist): the
  // worker opens them in place, and nothing chunk-sized is allocated per chunk.
  const freeSlots: SharedSlot[] = [];
  const allSlots: SharedSlot[] = [];
  const takeSlot = () => freeSlots.pop() ?? (allSlots[allSlots.length] = pool.share(sealedCapacity(m.chunkSize)));
  // Workers write through fh.fd: the file is closed only after every started chunk settled,
  // also when one failed (a closed fd number may be reused by the next open file).
  const started = new Set<Promise<void>>();
  const track = (p: Promise<void>) => {
    started.add(p);
    return p.finally(() => started.delete(p));
  };
  try {
    await mapLimit(m.chunks, o.parallelism ?? 8, (id, index) => track((async () => {
      const offset = index * m.chunkSize;
      const length = Math.min(m.chunkSize, m.sizeBytes - offset);
      if (id === null) {
        if (zeros) await fh.write(zeros, 0, length, offset);
      } else {
        const key = keys.chunk(id);
        const slot = takeSlot();
        let opened;
        try {
          const body = await o.store.get(key, { into: slot.bytes });
          if (!body) throw new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} is missing from the repository`);
          bytesDownloaded += body.length;
          const write = { fd: fh.fd, offset };
          opened = await (body.buffer === slot.bytes.buffer && body.byteOffset === 0
            ? pool.openSlot(o.keys, slot, body.length, id, length, write)
            : pool.open(o.keys, ownedArrayBuffer(body), id, length, write)); // a store that ignored `into`
        } catch (err) {
          if (err instanceof Corrupt) throw err.message.startsWith(`disk '${o.diskId}'`) ? err : new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} is damaged: ${err.message}`, err);
          throw new Error(`disk '${o.diskId}': writing ${length} bytes at offset ${offset} of ${o.target} failed: ${(err as Error).message}`, { cause: err });
        } finally {
          freeSlots.push(slot);
        }
        if (!opened.ok) throw new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} does not match its id (swapped or wrong length)`);
      }
      done += length;
      o.onProgress?.(done, m.sizeBytes);
    })()));
  } finally {
    await Promise.allSettled(started);
    for (const slot of allSlots) pool.unshare(slot);
    await fh.close();
  }
  if (kind === 'file') await truncate(o.target, m.sizeBytes);
  return { sizeBytes: m.sizeBytes, bytesDownloaded };
}
