/**
 * Restore one disk from its manifest into a file or a block device: parallel download of
 * runs of chunks (one range GET per run of a pack); open (decrypt, decompress), check the
 * keyed id and write at offset on the chunk pool's worker threads. All-zero chunks stay holes in a file; on a device they are written as
 * zeros, or skipped when the device is known to read as zeros already. The target is
 * flushed as the restore goes and once more at its end: a restore that returned is on the
 * target's storage, not only in the page cache.
 */
import { open as openFile, stat } from 'node:fs/promises';
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { keys, sealedCapacity, type RepositoryKeys } from '../../repository/format.ts';
import { ManifestReader } from '../../repository/manifest/reader.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { planReads, readChunk, type ChunkLocation } from '../../repository/packs.ts';
import { RepositoryIndex } from '../../repository/repository-index.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from './chunk-pool.ts';

export interface RestoreDiskOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  diskId: string;
  target: string;
  /** Runs of chunks downloaded at once (default 8; one 4 MiB buffer each). */
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

/** Chunks queued per worker before the main thread opens one itself. */
const MAIN_THREAD_BACKLOG = 2;

/**
 * Bytes written between two flushes (fdatasync) of the target during a restore. Measured
 * on the 2 GiB bench restore (1.3 GB written), alternating runs: one flush at the end
 * only took 0.4-0.6 s longer than none; flushing every 256 MiB on the way took the same
 * time as none (7.90 and 7.42 s against 8.29 and 7.51 s).
 */
const FLUSH_BYTES = 256 * 1024 * 1024;

/** The most bytes one range GET reads (a run of neighbouring chunks of a pack). */
const RUN_BYTES = 4 * 1024 * 1024;

export async function restoreDisk(o: RestoreDiskOptions): Promise<{ sizeBytes: number; bytesDownloaded: number }> {
  const manifestKey = keys.manifest(o.backupId, o.diskId);
  const reader = await ManifestReader.open(o.store, o.keys, o.backupId, o.diskId);
  if (!reader) throw new Corrupt(`manifest ${manifestKey} of disk '${o.diskId}' is missing from the repository`);
  const m = reader.info;
  const kind = o.targetKind ?? ((await stat(o.target).catch(() => undefined))?.isBlockDevice() ? 'device' : 'file');
  const writeZeros = kind === 'device' && !o.targetZeroed;
  const pool = o.pool ?? sharedChunkPool();
  const fh = await openFile(o.target, kind === 'device' ? 'r+' : 'w');
  let bytesDownloaded = 0;
  let done = 0;
  // What is written is flushed to the target as the restore goes (one flush at a time), so
  // the last flush, which the restore waits for, has little left to write.
  let unflushed = 0;
  let flushing: Promise<void> | undefined;
  let flushFailure: unknown;
  const written = (length: number) => {
    unflushed += length;
    if (unflushed >= FLUSH_BYTES && !flushing) {
      unflushed = 0;
      // A failed flush fails the restore at its end (Linux reports a writeback error to one flush only).
      flushing = track(fh.datasync()).catch((err: unknown) => { flushFailure ??= err; }).finally(() => { flushing = undefined; });
    }
  };
  const progress = (length: number) => {
    done += length;
    o.onProgress?.(done, m.sizeBytes);
  };
  // The manifest is restored a batch (a piece) at a time: the disk offsets of each chunk
  // in it (a chunk repeated within the batch is read once) and where each is stored.
  const offsets = new Map<string, number[]>();
  const located = new Map<string, ChunkLocation>();
  const zeroOffsets: number[] = [];
  const lengthAt = (offset: number) => Math.min(m.chunkSize, m.sizeBytes - offset);
  // Runs are downloaded into shared slots, reused (one per run in flight): the worker
  // opens each chunk where it lies in the run and writes it at its offset, so nothing
  // chunk- or run-sized is allocated or copied per chunk.
  const runBytes = Math.max(RUN_BYTES, sealedCapacity(m.chunkSize));
  const freeSlots: SharedSlot[] = [];
  const allSlots: SharedSlot[] = [];
  const takeSlot = () => freeSlots.pop() ?? (allSlots[allSlots.length] = pool.share(runBytes));
  let index: Promise<RepositoryIndex> | undefined;
  // Workers write through fh.fd: the file is closed only after every started chunk settled,
  // also when one failed (a closed fd number may be reused by the next open file).
  const started = new Set<Promise<unknown>>();
  const track = <T>(p: Promise<T>): Promise<T> => {
    started.add(p);
    return p.finally(() => started.delete(p));
  };

  /** Opens the chunk at `at` in `slot` into the target at `offset`: undefined, or why it is not this chunk. */
  const openAt = async (id: string, slot: SharedSlot, at: number, length: number, offset: number): Promise<string | undefined> => {
    try {
      // On this thread while every worker has another chunk queued behind the one it opens,
      // else on a worker. After opening one here, yield to the event loop: the workers'
      // replies wait there, and without it this thread kept every chunk to itself.
      const write = { fd: fh.fd, offset };
      let opened;
      if (pool.backlog >= pool.size * MAIN_THREAD_BACKLOG) {
        opened = pool.openHere(o.keys, slot, length, id, lengthAt(offset), write, at);
        await new Promise<void>((ok) => setImmediate(ok));
      } else {
        opened = await pool.openSlot(o.keys, slot, length, id, lengthAt(offset), write, at);
      }
      return opened.ok ? undefined : 'it does not match its id (swapped or wrong length)';
    } catch (err) {
      if (err instanceof Corrupt) return err.message;
      throw new Error(`disk '${o.diskId}': writing ${lengthAt(offset)} bytes at offset ${offset} of ${o.target} failed: ${(err as Error).message}`, { cause: err });
    }
  };

  /** Opens the chunk at `at` in `slot` into every offset in `targets`: undefined, or why it is not this chunk. */
  const openAll = async (id: string, slot: SharedSlot, at: number, length: number, targets: number[]): Promise<string | undefined> => {
    for (const offset of targets) {
      const problem = await openAt(id, slot, at, length, offset);
      if (problem !== undefined) return problem;
    }
    return undefined;
  };

  /**
   * Another copy of chunk `id` the repository's index lists (a later backup stored it
   * again after a deep verification quarantined the damaged one), opened into every
   * offset in `targets`; false when there is none that opens.
   */
  const fromOtherCopy = async (id: string, targets: number[]): Promise<boolean> => {
    // Also for a format-1 manifest: its quarantined chunk object may have been stored again in a pack.
    const here = located.get(id)!;
    for (const alt of (await (index ??= RepositoryIndex.load(o.store, o.keys))).otherCopies(id, here)) {
      if (alt.length > runBytes) continue;
      const slot = takeSlot();
      try {
        const copy = await readChunk(o.store, alt, slot.bytes).catch(() => undefined);
        if (!copy) continue;
        if (copy.buffer !== slot.bytes.buffer) slot.bytes.set(copy);
        if ((await openAll(id, slot, 0, copy.length, targets)) === undefined) {
          bytesDownloaded += copy.length;
          return true;
        }
      } finally {
        freeSlots.push(slot);
      }
    }
    return false;
  };

  /**
   * Chunk `id` from `slot` (undefined: its run could not be read) into every offset the
   * disk has it at, or else from another copy; else Corrupt naming the disk, the offset
   * and the object.
   */
  const restoreChunk = async (id: string, slot: SharedSlot | undefined, at: number, length: number, where: string, missing: string) => {
    const targets = offsets.get(id)!;
    const problem = slot ? await openAll(id, slot, at, length, targets) : missing;
    if (problem !== undefined && !(await fromOtherCopy(id, targets))) {
      throw new Corrupt(`disk '${o.diskId}' offset ${targets[0]}: chunk ${id} in ${where} is damaged: ${problem}; `
        + 'deep-verify the backup to quarantine the chunk (the next backup of a VM holding the data stores it again), or restore an older backup');
    }
    for (const offset of targets) {
      progress(lengthAt(offset));
      written(lengthAt(offset));
    }
  };

  try {
    const zeros = writeZeros ? Buffer.alloc(m.chunkSize) : undefined;
    for await (const batch of reader.batches()) {
      offsets.clear();
      located.clear();
      zeroOffsets.length = 0;
      for (let i = 0; i < batch.count; i++) {
        const id = batch.id(i);
        const offset = (batch.firstChunk + i) * m.chunkSize;
        if (id === null) {
          zeroOffsets.push(offset);
          continue;
        }
        const list = offsets.get(id);
        if (list) list.push(offset);
        else {
          offsets.set(id, [offset]);
          located.set(id, batch.location(i)!);
        }
      }
      if (zeros) for (const offset of zeroOffsets) await fh.write(zeros, 0, lengthAt(offset), offset);
      for (const offset of zeroOffsets) progress(lengthAt(offset));
      // Runs of neighbouring chunks of a pack are one range GET each (format 1: one GET per chunk).
      const runs = planReads((id) => located.get(id)!, offsets.keys(), { maxBytes: runBytes });
      // As many runs in flight as `parallelism`: each GET waits out a round trip to the
      // store, and a mover is often a WAN away from it. Measured on the 2 GiB bench restore
      // through an emulated 40 ms round trip (bench/delayed-link.ts), 8 runs in flight took
      // 7.1-8.1 s against 10.2-11.3 s with 4, and 6.9 s against 7.5 s on loopback (3
      // alternating pairs); peak RSS ~15 MiB more (8 slots of 4 MiB). 16 took 7.1 s and 272 MiB.
      await mapLimit(runs, Math.max(1, o.parallelism ?? 8), (run) => track((async () => {
        const slot = takeSlot();
        try {
          const body = await o.store.get(run.key, { into: slot.bytes, ...(run.packed ? { range: { offset: run.offset, length: run.length } } : {}) });
          if (body) bytesDownloaded += body.length;
          // A chunk's own bytes in the pack (the run read holds several chunks).
          const where = (c: { at: number; length: number }) => (run.packed ? `${run.key} bytes ${run.offset + c.at}+${c.length}` : run.key);
          const missing = !body ? 'it is missing from the repository' : `the read of bytes ${run.offset}+${run.length} returned ${body.length} bytes (the pack is shorter than its manifest says)`;
          const complete = body?.length === run.length;
          if (complete && body.buffer !== slot.bytes.buffer) slot.bytes.set(body); // a store that ignored `into`
          await mapLimit(run.chunks, Math.max(1, pool.size * 2), (c) => track(restoreChunk(c.id, complete ? slot : undefined, c.at, c.length, where(c), missing)));
        } finally {
          freeSlots.push(slot);
        }
      })()));
    }
    if (kind === 'file') await fh.truncate(m.sizeBytes);
    // Restored means on the target's storage, not in the page cache.
    await fh.datasync().catch((err: unknown) => { flushFailure ??= err; });
    if (flushFailure) throw new Error(`disk '${o.diskId}': flushing ${o.target} to storage failed: ${(flushFailure as Error).message}`, { cause: flushFailure });
  } finally {
    await Promise.allSettled(started);
    for (const slot of allSlots) pool.unshare(slot);
    await fh.close();
  }
  return { sizeBytes: m.sizeBytes, bytesDownloaded };
}
