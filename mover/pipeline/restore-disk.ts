/**
 * Restore one disk from its manifest into a file or a block device. The manifest is read
 * as a stream of entries in disk order (read-runs.ts), a bounded window at a time; in each
 * window the neighbouring chunks of a pack are one range GET (a run). Runs are read into
 * one buffer shared with the chunk pool's workers (byte-arena.ts), as many at once as fit
 * in `inFlightBytes`: enough to keep a link a WAN round trip long busy, and the memory a
 * restore holds whatever the disk's size. Each chunk is opened (decrypted, decompressed,
 * its keyed id checked) and written at its offset on a worker; runs are taken in disk
 * order, so the target is written front to back. All-zero chunks stay holes in a file; on
 * a device they are written as zeros, or skipped when the device reads as zeros already.
 * The target is flushed as the restore goes and once more at its end: a restore that
 * returned is on the target's storage, not only in the page cache.
 */
import { open as openFile, stat, type FileHandle } from 'node:fs/promises';
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, sealedCapacity, type RepositoryKeys } from '../../repository/format.ts';
import { ManifestReader } from '../../repository/manifest/reader.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { readChunk } from '../../repository/packs.ts';
import { RepositoryIndex } from '../../repository/repository-index.ts';
import { ByteArena } from './byte-arena.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from './chunk-pool.ts';
import { readerEntries, planWindows, type ReadRun, type RunChunk } from '../../repository/read-runs.ts';

export interface RestoreDiskOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  diskId: string;
  target: string;
  /**
   * Bytes of runs being downloaded or opened at once (default 32 MiB): one shared buffer
   * of this size. A link's bandwidth times its round trip must fit for the link to stay busy.
   */
  inFlightBytes?: number;
  /** The most bytes one range GET reads (default 16 MiB; at least one stored chunk). */
  maxRunBytes?: number;
  /** Chunks of a pack at most this far apart are read by one GET, the gap with them (default 2 MiB). */
  maxGapBytes?: number;
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

/**
 * A gap of up to 2 MiB between two chunks of a pack is read through: at 50 MB/s and a 40 ms
 * round trip, 2 MiB cost about what a second GET's round trip costs. Planned on the bench's
 * incremental backups (2 GiB, 8 MiB packs), it makes one GET per pack referenced (115 and
 * 104 GETs, against 142 and 136 with 1 MiB gaps), reading 7% more bytes than the chunks'.
 */
export const RESTORE_DEFAULTS = Object.freeze({ inFlightBytes: 32 * 1024 * 1024, maxRunBytes: 16 * 1024 * 1024, maxGapBytes: 2 * 1024 * 1024 });

/** Manifest entries planned at once: about 2 GiB of disk at 512 KiB chunks, a few hundred KiB of plan. */
const WINDOW_ENTRIES = 4096;

/** Chunks queued per worker before the main thread opens one itself. */
const MAIN_THREAD_BACKLOG = 2;

/**
 * Bytes written between two flushes (fdatasync) of the target during a restore. Measured
 * on the 2 GiB bench restore (1.3 GB written), alternating runs: one flush at the end
 * only took 0.4-0.6 s longer than none; flushing every 256 MiB on the way took the same
 * time as none (7.90 and 7.42 s against 8.29 and 7.51 s).
 */
const FLUSH_BYTES = 256 * 1024 * 1024;

/** The most bytes of zeros written to a device at once. */
const ZERO_WRITE_BYTES = 8 * 1024 * 1024;

export async function restoreDisk(o: RestoreDiskOptions): Promise<{ sizeBytes: number; bytesDownloaded: number; requests: number }> {
  const reader = await ManifestReader.open(o.store, o.keys, o.backupId, o.diskId);
  if (!reader) throw new Corrupt(`manifest ${objectKeys.manifest(o.backupId, o.diskId)} of disk '${o.diskId}' is missing from the repository`);
  const kind = o.targetKind ?? ((await stat(o.target).catch(() => undefined))?.isBlockDevice() ? 'device' : 'file');
  const settings = restoreSettings(o);
  const pool = o.pool ?? sharedChunkPool();
  const restore = new DiskRestore(o, reader.info, pool, settings, await openFile(o.target, kind === 'device' ? 'r+' : 'w'));
  try {
    await restore.write(reader, kind === 'device' && !o.targetZeroed);
    if (kind === 'file') await restore.fh.truncate(reader.info.sizeBytes);
    await restore.flushed();
  } finally {
    await restore.close();
  }
  return { sizeBytes: reader.info.sizeBytes, bytesDownloaded: restore.bytesDownloaded, requests: restore.requests };
}

/** The tuning of one restore, checked: RESTORE_DEFAULTS and what the caller set. */
function restoreSettings(o: RestoreDiskOptions): typeof RESTORE_DEFAULTS {
  const settings = { ...RESTORE_DEFAULTS, ...definedOf(o) };
  for (const [k, v] of Object.entries(settings))
    if (!Number.isSafeInteger(v) || v < 0 || (v === 0 && k !== 'maxGapBytes'))
      throw new RangeError(`restore of disk '${o.diskId}': ${k} must be a whole number of bytes above 0, got ${v}`);
  return settings;
}

type ManifestInfo = ManifestReader['info'];

/** One disk's restore in progress: the target, the shared arena, what was downloaded, written and flushed. */
class DiskRestore {
  bytesDownloaded = 0;
  requests = 1;
  private readonly maxChunk: number;
  private readonly maxRunBytes: number;
  private readonly arena: ByteArena;
  private readonly shared: SharedSlot;
  private done = 0;
  // What is written is flushed to the target as the restore goes (one flush at a time), so
  // the last flush, which the restore waits for, has little left to write.
  private unflushed = 0;
  private flushing: Promise<void> | undefined;
  private flushFailure: unknown;
  // Slots for reading another copy of a damaged chunk (rare: one per such chunk being read).
  private readonly spareSlots: SharedSlot[] = [];
  private readonly allSpares: SharedSlot[] = [];
  private index: Promise<RepositoryIndex> | undefined;
  // Workers write through fh.fd: the file is closed only after every started chunk settled,
  // also when one failed (a closed fd number may be reused by the next open file).
  private readonly started = new Set<Promise<unknown>>();
  private failure: { err: unknown } | undefined;

  private readonly o: RestoreDiskOptions;
  private readonly m: ManifestInfo;
  private readonly pool: ChunkPool;
  private readonly settings: typeof RESTORE_DEFAULTS;
  readonly fh: FileHandle;

  constructor(o: RestoreDiskOptions, m: ManifestInfo, pool: ChunkPool, settings: typeof RESTORE_DEFAULTS, fh: FileHandle) {
    this.o = o;
    this.m = m;
    this.pool = pool;
    this.settings = settings;
    this.fh = fh;
    this.maxChunk = sealedCapacity(m.chunkSize);
    this.maxRunBytes = Math.max(this.maxChunk, Math.min(settings.maxRunBytes, settings.inFlightBytes));
    this.arena = new ByteArena(Math.max(settings.inFlightBytes, this.maxRunBytes));
    this.shared = pool.share(this.arena.capacity);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.started.add(p);
    return p.finally(() => this.started.delete(p));
  }

  private lengthAt(index: number): number {
    return Math.min(this.m.chunkSize, this.m.sizeBytes - index * this.m.chunkSize);
  }

  private progressed(bytes: number): void {
    this.done += bytes;
    this.o.onProgress?.(this.done, this.m.sizeBytes);
  }

  private written(length: number): void {
    this.progressed(length);
    this.unflushed += length;
    if (this.unflushed >= FLUSH_BYTES && !this.flushing) {
      this.unflushed = 0;
      // A failed flush fails the restore at its end (Linux reports a writeback error to one flush only).
      this.flushing = this.track(this.fh.datasync())
        .catch((err: unknown) => {
          this.flushFailure ??= err;
        })
        .finally(() => {
          this.flushing = undefined;
        });
    }
  }

  /** Plans the manifest a window at a time and restores its runs, as many in flight as the arena holds; zero chunks are written only when `writeZeros`. */
  async write(reader: ManifestReader, writeZeros: boolean): Promise<void> {
    const { m } = this;
    const zeros = writeZeros ? Buffer.alloc(Math.max(m.chunkSize, Math.floor(ZERO_WRITE_BYTES / m.chunkSize) * m.chunkSize)) : undefined;
    for await (const w of planWindows(readerEntries(reader), {
      maxRunBytes: this.maxRunBytes,
      maxGapBytes: this.settings.maxGapBytes,
      windowEntries: WINDOW_ENTRIES,
    })) {
      for (const [first, count] of adjacent(w.zeros, zeros ? zeros.length / m.chunkSize : Infinity)) {
        const bytes = Math.min(count * m.chunkSize, m.sizeBytes - first * m.chunkSize);
        if (zeros) await this.fh.write(zeros, 0, bytes, first * m.chunkSize);
        this.progressed(bytes);
      }
      for (const run of w.runs) {
        if (run.length > this.arena.capacity) {
          const c = run.chunks[0]!;
          throw new Corrupt(
            `disk '${this.o.diskId}' offset ${c.indexes[0]! * m.chunkSize}: the manifest says chunk ${c.id} is stored in ${c.length} bytes of ${run.key}, more than a chunk of ${m.chunkSize} bytes seals to (${this.maxChunk}): the manifest is damaged; restore an older backup`,
          );
        }
        const base = await this.arena.take(run.length);
        if (this.failure) {
          this.arena.give(base, run.length);
          break;
        }
        void this.track(
          this.restoreRun(run, base)
            .catch((err: unknown) => {
              this.failure ??= { err };
            })
            .finally(() => this.arena.give(base, run.length)),
        );
      }
      if (this.failure) break;
    }
    await Promise.allSettled(this.started);
    if (this.failure) throw this.failure.err;
  }

  /** Restored means on the target's storage, not in the page cache. */
  async flushed(): Promise<void> {
    await this.fh.datasync().catch((err: unknown) => {
      this.flushFailure ??= err;
    });
    if (this.flushFailure)
      throw new Error(`disk '${this.o.diskId}': flushing ${this.o.target} to storage failed: ${(this.flushFailure as Error).message}`, {
        cause: this.flushFailure,
      });
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.started);
    this.pool.unshare(this.shared);
    for (const slot of this.allSpares) this.pool.unshare(slot);
    await this.fh.close();
  }

  /** Opens the chunk at `at` in `slot` into the target at chunk `i`: undefined, or why it is not this chunk. */
  private async openAt(id: string, slot: SharedSlot, at: number, length: number, i: number): Promise<string | undefined> {
    const { o, pool } = this;
    const offset = i * this.m.chunkSize;
    try {
      // On this thread while every worker has another chunk queued behind the one it opens,
      // else on a worker. After opening one here, yield to the event loop: the workers'
      // replies wait there, and without it this thread kept every chunk to itself.
      const write = { fd: this.fh.fd, offset };
      let opened;
      if (pool.backlog >= pool.size * MAIN_THREAD_BACKLOG) {
        opened = pool.openHere(o.keys, slot, length, id, this.lengthAt(i), write, at);
        await new Promise<void>((ok) => setImmediate(ok));
      } else {
        opened = await pool.openSlot(o.keys, slot, length, id, this.lengthAt(i), write, at);
      }
      return opened.ok ? undefined : 'it does not match its id (swapped or wrong length)';
    } catch (err) {
      if (err instanceof Corrupt) return err.message;
      throw new Error(`disk '${o.diskId}': writing ${this.lengthAt(i)} bytes at offset ${offset} of ${o.target} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** Opens the chunk at `at` in `slot` into every index in `indexes`: undefined, or why it is not this chunk. */
  private async openAll(id: string, slot: SharedSlot, at: number, length: number, indexes: number[]): Promise<string | undefined> {
    for (const i of indexes) {
      const problem = await this.openAt(id, slot, at, length, i);
      if (problem !== undefined) return problem;
    }
    return undefined;
  }

  /**
   * Another copy of chunk `c` the repository's index lists (a later backup stored it
   * again after a deep verification quarantined the damaged one), opened into each of its
   * indexes; false when there is none that opens.
   */
  private async fromOtherCopy(c: RunChunk, key: string): Promise<boolean> {
    const { o, pool } = this;
    for (const alt of (await (this.index ??= RepositoryIndex.load(o.store, o.keys))).otherCopies(c.id, { key, offset: c.offset, length: c.length })) {
      if (alt.length > this.maxChunk) continue;
      const slot = this.spareSlots.pop() ?? (this.allSpares[this.allSpares.length] = pool.share(this.maxChunk));
      try {
        this.requests++;
        const copy = await readChunk(o.store, alt, slot.bytes).catch(() => undefined);
        if (!copy) continue;
        if (copy.buffer !== slot.bytes.buffer) slot.bytes.set(copy);
        if ((await this.openAll(c.id, slot, 0, copy.length, c.indexes)) === undefined) {
          this.bytesDownloaded += copy.length;
          return true;
        }
      } finally {
        this.spareSlots.push(slot);
      }
    }
    return false;
  }

  /** Reads `run` into the arena at `base` and restores its chunks (from another copy where one is damaged). */
  private async restoreRun(run: ReadRun, base: number): Promise<void> {
    const { shared } = this;
    this.requests++;
    const body = await this.o.store.get(run.key, {
      into: shared.bytes.subarray(base, base + run.length),
      ...(run.packed ? { range: { offset: run.offset, length: run.length } } : {}),
    });
    if (body) {
      this.bytesDownloaded += body.length;
      if (body.buffer !== shared.bytes.buffer) shared.bytes.set(body.subarray(0, run.length), base); // a store that ignored `into`
    }
    await mapLimit(run.chunks, Math.max(1, this.pool.size * 2), async (c) => {
      // A chunk's own bytes in the pack (the run holds several chunks).
      const where = run.packed ? `${run.key} bytes ${c.offset}+${c.length}` : run.key;
      const problem = !body
        ? 'it is missing from the repository'
        : body.length < c.at + c.length
          ? `the read of bytes ${run.offset}+${run.length} returned ${body.length} bytes (the pack is shorter than its manifest says)`
          : await this.openAll(c.id, shared, base + c.at, c.length, c.indexes);
      if (problem !== undefined && !(await this.fromOtherCopy(c, run.key))) {
        throw new Corrupt(
          `disk '${this.o.diskId}' offset ${c.indexes[0]! * this.m.chunkSize}: chunk ${c.id} in ${where} is damaged: ${problem}; ` +
            'deep-verify the backup to quarantine the chunk (the next backup of a VM holding the data stores it again), or restore an older backup',
        );
      }
      for (const i of c.indexes) this.written(this.lengthAt(i));
    });
  }
}

/** Sorted indexes as runs of neighbours: [first, count], each at most `most` long. */
function* adjacent(indexes: readonly number[], most: number): Generator<[number, number]> {
  let first = -1;
  let count = 0;
  for (const i of indexes) {
    if (count > 0 && i === first + count && count < most) count++;
    else {
      if (count > 0) yield [first, count];
      first = i;
      count = 1;
    }
  }
  if (count > 0) yield [first, count];
}

/** The tuning options the caller set. */
function definedOf(o: RestoreDiskOptions): Partial<typeof RESTORE_DEFAULTS> {
  return Object.fromEntries((['inFlightBytes', 'maxRunBytes', 'maxGapBytes'] as const).filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
}
