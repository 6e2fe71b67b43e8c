/**
 * Restore one disk from its manifest into a file or a block device. The manifest is read
 * as a stream of entries in disk order (read-runs.ts), a bounded window at a time; in each
 * window the neighbouring chunks of a pack are one range GET (a run). Runs are read into
 * one buffer shared with the chunk pool's workers (byte-arena.ts), as many at once as fit
 * in `inFlightBytes` and fill at most CHUNKS_IN_FLIGHT disk chunks: enough to keep a link a
 * WAN round trip long busy, and the memory a restore holds whatever the disk's size and
 * however well its chunks compress. Each chunk is opened (decrypted, decompressed,
 * its keyed id checked) on a worker, or on this thread while the workers have a queue
 * (chunk-opener.ts: every core opens), into a second shared buffer, beside the chunks that
 * neighbour it on the disk, and each such run of neighbours is written with one write
 * (restore-target.ts); runs are taken in disk order, so the target is written front to
 * back. All-zero chunks stay holes in a file; on a device they are written as zeros, or
 * skipped when the device reads as zeros already. The target is flushed as the restore
 * goes and once more at its end: a restore that returned is on the target's storage, not
 * only in the page cache.
 */
import { stat } from 'node:fs/promises';
import { Budget, mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, sealedCapacity } from '../../repository/format.ts';
import type { ManifestReader, RepositoryIndex } from '../../repository/types.ts';
import type { Repository } from '../../repository/open.ts';
import { ByteArena } from './byte-arena.ts';
import { sharedChunkPool, type ChunkPool, type PlaceIn, type SharedSlot } from './chunk-pool.ts';
import { ChunkOpener } from './chunk-opener.ts';
import { RestoreTarget, WRITES_IN_FLIGHT } from './restore-target.ts';
import { readerEntries, planWindows, writeExtents, type ReadRun, type RunChunk, type WriteExtent } from '../../repository/read-runs.ts';

export interface RestoreDiskOptions {
  repository: Repository;
  backupId: string;
  diskId: string;
  target: string;
  /**
   * Bytes of runs being downloaded or opened at once (default 24 MiB): one shared buffer
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
export const RESTORE_DEFAULTS = Object.freeze({ inFlightBytes: 24 * 1024 * 1024, maxRunBytes: 16 * 1024 * 1024, maxGapBytes: 2 * 1024 * 1024 });

/** Manifest entries planned at once: about 2 GiB of disk at 512 KiB chunks, a few hundred KiB of plan. */
const WINDOW_ENTRIES = 4096;

/**
 * Disk chunks that runs being read or opened may fill at once, whatever their stored bytes.
 * `inFlightBytes` bounds the stored bytes in flight, but a run's plan and its chunks'
 * pending opens cost heap per chunk (about 1 KiB each, measured): with chunks that compress
 * to a few dozen bytes, 24 MiB of runs are hundreds of thousands of chunks, which held a
 * whole disk's plan in memory (820 MiB RSS for a bench restore of 512 Ki chunks of 1 KiB).
 * 4 windows' worth: at 4 KiB chunks and more, `inFlightBytes` binds first unless chunks
 * compress below 1.5 KiB each.
 */
const CHUNKS_IN_FLIGHT = 4 * WINDOW_ENTRIES;

/**
 * Chunks queued per worker before the main thread opens one itself (chunk-opener.ts). A
 * write run's chunks are asked for this many per worker and 2 more at once: enough to keep
 * every worker's queue and the main thread busy, and no more (a run of 1 KiB chunks holds
 * thousands).
 */
const QUEUED_PER_WORKER = 2;

/**
 * The most bytes of neighbouring chunks placed side by side and written at once (at least
 * one chunk), and how many such runs may be filled or written at once: as many as the
 * target writes at once, and 2 being filled meanwhile, so opening chunks does not wait for
 * the storage. The plaintext a restore holds besides its reads in flight is their product.
 */
const WRITE_RUN_BYTES = 4 * 1024 * 1024;
const WRITE_RUNS_IN_FLIGHT = WRITES_IN_FLIGHT + 2;

/** The most bytes of zeros written to a device at once. */
const ZERO_WRITE_BYTES = 8 * 1024 * 1024;

export async function restoreDisk(o: RestoreDiskOptions): Promise<{ sizeBytes: number; bytesDownloaded: number; requests: number; writes: number }> {
  const reader = await o.repository.openManifest(o.backupId, o.diskId);
  if (!reader) throw new Corrupt(`manifest ${objectKeys.manifest(o.backupId, o.diskId)} of disk '${o.diskId}' is missing from the repository`);
  const kind = o.targetKind ?? ((await stat(o.target).catch(() => undefined))?.isBlockDevice() ? 'device' : 'file');
  const settings = restoreSettings(o);
  const pool = o.pool ?? sharedChunkPool();
  const target = await RestoreTarget.open(o.target, kind, `disk '${o.diskId}'`);
  const restore = new DiskRestore(o, reader.info, pool, settings, target);
  try {
    await restore.write(reader, kind === 'device' && !o.targetZeroed);
    if (kind === 'file') await target.truncate(reader.info.sizeBytes);
    await target.flushed();
  } finally {
    await restore.close();
  }
  return { sizeBytes: reader.info.sizeBytes, bytesDownloaded: restore.bytesDownloaded, requests: restore.requests, writes: target.writes };
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

/**
 * One disk's restore in progress: the runs being read (one shared arena of stored bytes),
 * the runs of neighbouring chunks being opened side by side and written (another, of
 * plaintext), what was downloaded.
 */
class DiskRestore {
  bytesDownloaded = 0;
  requests = 1;
  private readonly maxChunk: number;
  private readonly maxRunBytes: number;
  private readonly arena: ByteArena;
  private readonly shared: SharedSlot;
  /** Disk chunks the runs in flight fill (see CHUNKS_IN_FLIGHT). */
  private readonly chunksInFlight = new Budget(CHUNKS_IN_FLIGHT);
  /** Plaintext of neighbouring chunks, opened side by side and written by one write. */
  private readonly plainArena: ByteArena;
  private readonly plain: SharedSlot;
  private readonly writeChunks: number;
  private done = 0;
  // Slots for reading another copy of a damaged chunk (rare: one per such chunk being read).
  private readonly spareSlots: SharedSlot[] = [];
  private readonly allSpares: SharedSlot[] = [];
  private index: Promise<RepositoryIndex> | undefined;
  // Workers read from and write into the shared buffers: they are unshared only after
  // every started run and write settled, also when one failed.
  private readonly started = new Set<Promise<unknown>>();
  private failure: { err: unknown } | undefined;

  private readonly o: RestoreDiskOptions;
  private readonly m: ManifestInfo;
  private readonly pool: ChunkPool;
  private readonly settings: typeof RESTORE_DEFAULTS;
  private readonly target: RestoreTarget;
  private readonly opener: ChunkOpener;

  constructor(o: RestoreDiskOptions, m: ManifestInfo, pool: ChunkPool, settings: typeof RESTORE_DEFAULTS, target: RestoreTarget) {
    this.o = o;
    this.m = m;
    this.pool = pool;
    this.settings = settings;
    this.target = target;
    this.opener = new ChunkOpener(pool, o.repository.workerKeys(), QUEUED_PER_WORKER);
    this.maxChunk = sealedCapacity(m.chunkSize);
    this.maxRunBytes = Math.max(this.maxChunk, Math.min(settings.maxRunBytes, settings.inFlightBytes));
    this.arena = new ByteArena(Math.max(settings.inFlightBytes, this.maxRunBytes));
    this.shared = pool.share(this.arena.capacity);
    this.writeChunks = Math.max(1, Math.floor(WRITE_RUN_BYTES / m.chunkSize));
    this.plainArena = new ByteArena(this.writeChunks * m.chunkSize * WRITE_RUNS_IN_FLIGHT);
    this.plain = pool.shareAligned(this.plainArena.capacity); // page-aligned: written around the page cache (restore-target.ts)
  }

  /** Runs `p` to its end before the restore ends or closes; its failure is the restore's (the first one wins). */
  private track(p: Promise<unknown>): void {
    const tracked = p
      .catch((err: unknown) => {
        this.failure ??= { err };
      })
      .finally(() => this.started.delete(tracked));
    this.started.add(tracked);
  }

  private lengthAt(index: number): number {
    return Math.min(this.m.chunkSize, this.m.sizeBytes - index * this.m.chunkSize);
  }

  private progressed(bytes: number): void {
    this.done += bytes;
    this.o.onProgress?.(this.done, this.m.sizeBytes);
  }

  /** Plans the manifest a window at a time and restores its runs, as many in flight as the arena and the chunk budget hold; zero chunks are written only when `writeZeros`. */
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
        // Awaited: a device of any size may be zeros end to end, and queued writes hold memory.
        if (zeros) await this.target.write(zeros.subarray(0, bytes), first * m.chunkSize);
        this.progressed(bytes);
      }
      for (const run of w.runs) {
        if (run.length > this.arena.capacity) {
          const c = run.chunks[0]!;
          throw new Corrupt(
            `disk '${this.o.diskId}' offset ${c.indexes[0]! * m.chunkSize}: the manifest says chunk ${c.id} is stored in ${c.length} bytes of ${run.key}, more than a chunk of ${m.chunkSize} bytes seals to (${this.maxChunk}): the manifest is damaged; restore an older backup`,
          );
        }
        const fills = await this.chunksInFlight.take(run.chunks.reduce((n, c) => n + c.indexes.length, 0));
        const base = await this.arena.take(run.length);
        const given = () => {
          this.arena.give(base, run.length);
          this.chunksInFlight.give(fills);
        };
        if (this.failure) {
          given();
          break;
        }
        this.track(this.restoreRun(run, base).finally(given));
      }
      if (this.failure) break;
    }
    await this.settled();
    if (this.failure) throw this.failure.err;
  }

  /** Every started run and write has settled (those that start meanwhile too). */
  private async settled(): Promise<void> {
    while (this.started.size > 0) await Promise.allSettled(this.started);
  }

  async close(): Promise<void> {
    await this.settled();
    this.pool.unshare(this.shared);
    this.pool.unshare(this.plain);
    for (const slot of this.allSpares) this.pool.unshare(slot);
    await this.target.close();
  }

  /** Opens the chunk at `at` in `slot` into `into`, as disk chunk `i`: undefined, or why it is not this chunk. */
  private async openAt(id: string, slot: SharedSlot, at: number, length: number, i: number, into: PlaceIn): Promise<string | undefined> {
    try {
      const opened = await this.opener.open({ body: slot, bodyOffset: at, bodyLength: length, id, length: this.lengthAt(i), into });
      return opened.ok ? undefined : 'it does not match its id (swapped or wrong length)';
    } catch (err) {
      if (err instanceof Corrupt) return err.message;
      throw err;
    }
  }

  /**
   * Another copy of chunk `c` the repository's index lists (a later backup stored it
   * again after a deep verification quarantined the damaged one), opened into `into` as
   * disk chunk `i`; false when there is none that opens.
   */
  private async fromOtherCopy(c: RunChunk, key: string, i: number, into: PlaceIn): Promise<boolean> {
    const { o, pool } = this;
    for (const alt of (await (this.index ??= o.repository.loadIndex())).otherCopies(c.id, { key, offset: c.offset, length: c.length })) {
      if (alt.length > this.maxChunk) continue;
      const slot = this.spareSlots.pop() ?? (this.allSpares[this.allSpares.length] = pool.share(this.maxChunk));
      try {
        this.requests++;
        const copy = await o.repository.readChunk(alt, slot.bytes).catch(() => undefined);
        if (!copy) continue;
        if (copy.buffer !== slot.bytes.buffer) slot.bytes.set(copy);
        if ((await this.openAt(c.id, slot, 0, copy.length, i, into)) === undefined) {
          this.bytesDownloaded += copy.length;
          return true;
        }
      } finally {
        this.spareSlots.push(slot);
      }
    }
    return false;
  }

  /**
   * Reads `run` into the arena at `base`, opens its chunks side by side into runs of
   * neighbouring disk chunks (from another copy where one is damaged) and hands each such
   * run to the target to write; resolves once every chunk is opened (the run's bytes are
   * then free), while the writes may still be under way.
   */
  private async restoreRun(run: ReadRun, base: number): Promise<void> {
    const { shared } = this;
    this.requests++;
    const body = await this.o.repository.store.get(run.key, {
      into: shared.bytes.subarray(base, base + run.length),
      ...(run.packed ? { range: { offset: run.offset, length: run.length } } : {}),
    });
    if (body) {
      this.bytesDownloaded += body.length;
      if (body.buffer !== shared.bytes.buffer) shared.bytes.set(body.subarray(0, run.length), base); // a store that ignored `into`
    }
    // Every extent to its end before the run's bytes are given back (workers read them), the first failure kept.
    const outcomes = await Promise.allSettled(writeExtents(run.chunks, this.writeChunks).map((e) => this.restoreExtent(run, body, base, e)));
    const failed = outcomes.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Opens the chunks of `e` side by side in the plaintext arena, then has the target write them at once. */
  private async restoreExtent(run: ReadRun, body: Buffer | undefined, base: number, e: WriteExtent): Promise<void> {
    const { m, plain } = this;
    const bytes = e.chunks.reduce((n, _, k) => n + this.lengthAt(e.first + k), 0);
    const at = await this.plainArena.take(bytes);
    let writing = false;
    try {
      // Every chunk of the extent to its end (workers write into it) before its bytes may be given back.
      let failure: { err: unknown } | undefined;
      await mapLimit(e.chunks, this.pool.size * QUEUED_PER_WORKER + 2, (c, k) =>
        this.openInto(run, body, base, c, e.first + k, { slot: plain, offset: at + k * m.chunkSize }).catch((err: unknown) => {
          failure ??= { err };
        }),
      );
      if (failure) throw failure.err;
      writing = true;
      this.track(
        this.target
          .write(plain.bytes.subarray(at, at + bytes), e.first * m.chunkSize, plain.aligned)
          .then(() => this.progressed(bytes))
          .finally(() => this.plainArena.give(at, bytes)),
      );
    } finally {
      if (!writing) this.plainArena.give(at, bytes);
    }
  }

  /** Opens chunk `c` of `run` (read into the arena at `base`) into `into` as disk chunk `i`, or another copy of it; Corrupt when neither opens. */
  private async openInto(run: ReadRun, body: Buffer | undefined, base: number, c: RunChunk, i: number, into: PlaceIn): Promise<void> {
    // A chunk's own bytes in the pack (the run holds several chunks).
    const where = run.packed ? `${run.key} bytes ${c.offset}+${c.length}` : run.key;
    const problem = !body
      ? 'it is missing from the repository'
      : body.length < c.at + c.length
        ? `the read of bytes ${run.offset}+${run.length} returned ${body.length} bytes (the pack is shorter than its manifest says)`
        : await this.openAt(c.id, this.shared, base + c.at, c.length, i, into);
    if (problem !== undefined && !(await this.fromOtherCopy(c, run.key, i, into))) {
      throw new Corrupt(
        `disk '${this.o.diskId}' offset ${i * this.m.chunkSize}: chunk ${c.id} in ${where} is damaged: ${problem}; ` +
          'deep-verify the backup to quarantine the chunk (the next backup of a VM holding the data stores it again), or restore an older backup',
      );
    }
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
