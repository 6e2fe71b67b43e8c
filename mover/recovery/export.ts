/**
 * A backup's disk as a block device, straight from the repository: a read at any offset
 * is resolved through the disk's manifest to chunks, fetched by ranged GETs of their packs
 * (neighbouring chunks of a pack in one GET, into buffers shared with the chunk pool's
 * worker threads), opened there (authenticated, decrypted, decompressed) and checked
 * against their keyed ids, as a restore does (`mover/pipeline/chunk-pool.ts`). Decoded chunks are kept in a bounded LRU cache, and
 * each sequential stream of reads (read-ahead.ts: several at once, as `nbdcopy`'s connections
 * read) starts fetching its next chunks before they are asked for, in batches that become
 * long GETs; GETs that a read waits for go before read-ahead's.
 *
 * The manifest is read a piece at a time as reads need it (a chunk's piece found from its
 * offset; a few decoded pieces kept: `ManifestReader.batchAt`), so memory does not grow
 * with the disk's size.
 *
 * A chunk that is missing, fails authentication or opens to other bytes than its id says
 * fails the reads that need it with EIO (logged once, naming backup, disk and chunk); the
 * reads that do not need it go on. Never wrong bytes.
 */
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, sealedCapacity } from '../../repository/format.ts';
import type { ManifestBatch, ManifestReader } from '../../repository/types.ts';
import type { Repository } from '../../repository/open.ts';
import type { ChunkLocation } from '../../repository/packs.ts';
import { ExportIoError, type BlockExport, type ServerLogger } from '../nbd/block-export.ts';
import { StateFlag } from '../nbd/protocol.ts';
import { type BlockDescriptor } from '../nbd/transmission-wire.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from '../pipeline/chunk-pool.ts';
import { planRuns, type ReadRun, type RunChunk, type StoredEntry } from '../../repository/read-runs.ts';
import { GetQueue, type Turn } from './get-queue.ts';
import { ReadAheadStreams } from './read-ahead.ts';

/** The export's tunables (the export task's settings). */
export interface ExportSettings {
  /** Decoded chunks kept, in MiB (default 256). */
  cacheMiB: number;
  /** Chunks fetched ahead of each sequential stream of reads (default 16; 0 turns read-ahead off). All streams together hold at most half the cache. */
  readAheadChunks: number;
  /** Range GETs in flight at once (default 8). */
  parallelism: number;
}

export const DEFAULT_EXPORT_SETTINGS: Readonly<ExportSettings> = Object.freeze({ cacheMiB: 256, readAheadChunks: 16, parallelism: 8 });

export interface DiskExportOptions extends Partial<ExportSettings> {
  repository: Repository;
  backupId: string;
  diskId: string;
  logger?: ServerLogger;
  /** Worker threads that open chunks (default: the process-wide pool). */
  pool?: ChunkPool;
}

/** What an export did, for progress and the task's result. */
export interface DiskExportStats {
  /** Range GETs (and whole-object GETs) sent to the repository. */
  gets: number;
  chunksFetched: number;
  bytesDownloaded: number;
  cacheHits: number;
  /** Chunks fetched by read-ahead, before any read asked for them. */
  chunksReadAhead: number;
  damagedChunks: number;
}

/** The most bytes one range GET reads (a run of neighbouring chunks of a pack). */
const RUN_BYTES = 4 * 1024 * 1024;

/** Chunks of a pack at most this far apart are read by one GET, the gap with them. */
const GAP_BYTES = 64 * 1024;

/** A stored chunk of the disk: its index, id and where it is. */
interface Wanted {
  index: number;
  id: string;
  loc: ChunkLocation;
}

/** A chunk being fetched: whether for read-ahead, and its promise's settling. */
interface Fetching extends Wanted {
  ahead: boolean;
  settled: boolean;
  ok: (plain: Buffer) => void;
  fail: (err: unknown) => void;
}

/** Chunks queued per worker before the main thread opens one itself (as restore-disk.ts does). */
const MAIN_THREAD_BACKLOG = 2;

export class BackupDiskExport implements BlockExport {
  readonly size: number;
  readonly description: string;
  readonly stats: DiskExportStats = { gets: 0, chunksFetched: 0, bytesDownloaded: 0, cacheHits: 0, chunksReadAhead: 0, damagedChunks: 0 };
  private readonly m: ManifestReader;
  private readonly chunkBytes: number;
  private readonly chunks: number;
  private readonly o: DiskExportOptions;
  private readonly settings: ExportSettings;
  private readonly cache = new Map<string, Buffer>();
  private cacheBytes = 0;
  private readonly cacheCap: number;
  private readonly streams: ReadAheadStreams;
  private readonly loading = new Map<string, Promise<Buffer>>();
  /** Chunks found damaged (they stay damaged): id → why. */
  private readonly damaged = new Map<string, string>();
  /** GETs in flight and waiting, and the waiting GET of each chunk. */
  private readonly gets: GetQueue;
  private readonly queued = new Map<string, Turn>();
  private readonly pool: ChunkPool;
  private readonly runBytes: number;
  private readonly freeSlots: SharedSlot[] = [];
  private readonly allSlots: SharedSlot[] = [];

  private constructor(m: ManifestReader, o: DiskExportOptions) {
    this.m = m;
    this.chunkBytes = m.info.chunkSize;
    this.chunks = m.info.to;
    this.o = o;
    this.settings = {
      ...DEFAULT_EXPORT_SETTINGS,
      ...Object.fromEntries(
        Object.entries({ cacheMiB: o.cacheMiB, readAheadChunks: o.readAheadChunks, parallelism: o.parallelism }).filter(([, v]) => v !== undefined),
      ),
    };
    const { cacheMiB, readAheadChunks, parallelism } = this.settings;
    if (!(cacheMiB > 0)) throw new RangeError(`export cacheMiB ${cacheMiB} must be above 0`);
    if (!Number.isInteger(readAheadChunks) || readAheadChunks < 0) throw new RangeError(`export readAheadChunks ${readAheadChunks} must be a whole number`);
    if (!Number.isInteger(parallelism) || parallelism < 1) throw new RangeError(`export parallelism ${parallelism} must be a whole number of at least 1`);
    this.size = m.info.sizeBytes;
    this.description = `Lifeboat backup ${o.backupId} disk ${o.diskId} (read-only)`;
    this.cacheCap = cacheMiB * 1024 * 1024;
    this.streams = new ReadAheadStreams({
      chunkBytes: this.chunkBytes,
      chunks: this.chunks,
      windowChunks: readAheadChunks,
      budgetChunks: Math.floor(this.cacheCap / this.chunkBytes / 2),
    });
    this.pool = o.pool ?? sharedChunkPool();
    this.gets = new GetQueue(parallelism);
    this.runBytes = Math.max(RUN_BYTES, sealedCapacity(this.chunkBytes));
  }

  /** Gives the run buffers back to the chunk pool; reads after this fail. */
  close(): void {
    for (const s of this.allSlots.splice(0)) this.pool.unshare(s);
    this.freeSlots.length = 0;
  }

  /** Opens the disk's manifest: Corrupt when it is missing or damaged. */
  static async open(o: DiskExportOptions): Promise<BackupDiskExport> {
    const reader = await o.repository.openManifest(o.backupId, o.diskId);
    if (!reader)
      throw new Corrupt(`manifest ${objectKeys.manifest(o.backupId, o.diskId)} of backup ${o.backupId} disk '${o.diskId}' is missing from the repository`);
    return new BackupDiskExport(reader, o);
  }

  get chunkSize(): number {
    return this.chunkBytes;
  }

  /** The stored chunks among `first` … `last` (the manifest's pieces read as needed); a manifest that cannot be read fails with EIO naming it. */
  private async stored(first: number, last: number): Promise<Wanted[]> {
    const out: Wanted[] = [];
    for (let i = first; i <= last; ) {
      const b = await this.batchAt(i);
      const end = Math.min(last + 1, b.firstChunk + b.count);
      for (; i < end; i++) {
        const id = b.id(i - b.firstChunk);
        if (id !== null) out.push({ index: i, id, loc: b.location(i - b.firstChunk)! });
      }
    }
    return out;
  }

  /** The manifest's batch holding chunk `i`; EIO naming the manifest when it cannot be read. */
  private async batchAt(i: number): Promise<ManifestBatch> {
    try {
      return await this.m.batchAt(i);
    } catch (err) {
      throw new ExportIoError(
        `backup ${this.o.backupId} disk '${this.o.diskId}': its manifest ${this.m.key} cannot be read at offset ${i * this.chunkBytes}: ${(err as Error).message}`,
        undefined,
        { cause: err },
      );
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read ${offset}+${length} is outside the ${this.size}-byte disk`);
    }
    if (length === 0) return Buffer.alloc(0);
    const cs = this.chunkBytes;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    const ahead = this.streams.next(offset, length);
    // A manifest piece that cannot be read fails the reads that need it, not the read-ahead.
    const [wanted, extra] = await Promise.all([this.stored(first, last), ahead ? this.stored(ahead.from, ahead.until - 1).catch(() => []) : []]);
    // Planned together: the chunk a read waits for and the ones after it are one GET where they lie side by side.
    this.fetch(wanted, extra);
    if (wanted.length === 1 && first === last) {
      // Inside one chunk: a view of the decoded chunk, no copy (decoded chunks are never written to).
      const plain = await this.chunk(wanted[0]!);
      return plain.subarray(offset - first * cs, offset - first * cs + length);
    }
    // Zeroed only where a hole (a chunk not stored) lies in the range; the rest is overwritten.
    const out = wanted.length === last - first + 1 ? Buffer.allocUnsafe(length) : Buffer.alloc(length);
    await Promise.all(
      wanted.map(async (w) => {
        const { index } = w;
        const plain = await this.chunk(w);
        const start = index * cs;
        const from = Math.max(offset, start);
        const to = Math.min(offset + length, start + plain.length);
        plain.copy(out, from - offset, from - start, to - start);
      }),
    );
    return out;
  }

  async allocation(offset: number, length: number): Promise<BlockDescriptor[]> {
    const cs = this.chunkBytes;
    const end = Math.min(offset + length, this.size);
    const out: BlockDescriptor[] = [];
    for (let at = offset; at < end; ) {
      const i = Math.floor(at / cs);
      const next = Math.min(end, (i + 1) * cs);
      const b = await this.batchAt(i);
      const flags = b.id(i - b.firstChunk) === null ? StateFlag.HOLE | StateFlag.ZERO : 0;
      const prev = out[out.length - 1];
      if (prev && prev.flags === flags) prev.length += next - at;
      else out.push({ length: next - at, flags });
      at = next;
    }
    return out;
  }

  /** The decoded chunk `id` at index `index`: from the cache, a fetch under way, or a new fetch. */
  private async chunk(w: Wanted): Promise<Buffer> {
    const { index, id } = w;
    const hit = this.cache.get(id);
    if (hit) {
      this.stats.cacheHits++;
      this.cache.delete(id);
      this.cache.set(id, hit);
      return hit;
    }
    const why = this.damaged.get(id);
    if (why) throw this.damageError(index, id, why);
    if (!this.loading.has(id)) this.fetch([w]);
    const turn = this.queued.get(id);
    if (turn) turn.urgent = true; // read-ahead's GET, still waiting: a read needs it now
    return this.loading.get(id)!.catch((err: unknown) => {
      const why = this.damaged.get(id);
      if (why) throw this.damageError(index, id, why);
      throw err instanceof ExportIoError
        ? err
        : new ExportIoError(
            `backup ${this.o.backupId} disk '${this.o.diskId}' chunk ${id} at offset ${index * this.chunkBytes}: reading the repository failed: ${(err as Error).message}`,
            undefined,
            { cause: err },
          );
    });
  }

  private damageError(index: number, id: string, why: string): ExportIoError {
    return new ExportIoError(`backup ${this.o.backupId} disk '${this.o.diskId}' chunk ${id} at offset ${index * this.chunkBytes} is damaged: ${why}`);
  }

  private lengthAt(index: number): number {
    return Math.min(this.chunkBytes, this.size - index * this.chunkBytes);
  }

  /**
   * Starts fetching the chunks `wanted` (a read waits for them) and `ahead` (read-ahead) that
   * are neither cached, nor being fetched, nor known damaged.
   */
  private fetch(wanted: Wanted[], ahead: Wanted[] = []): void {
    const todo = new Map<string, Fetching>();
    for (const [list, isAhead] of [
      [wanted, false],
      [ahead, true],
    ] as const) {
      for (const w of list) {
        const { id } = w;
        if (this.cache.has(id) || this.loading.has(id) || this.damaged.has(id) || todo.has(id)) continue;
        todo.set(id, { ...w, ahead: isAhead, settled: false, ok: () => {}, fail: () => {} });
      }
    }
    if (todo.size === 0) return;
    // Planned as a restore plans its reads (read-runs.ts); a gap is read through only when small, as a run's buffer is a fixed slot.
    const entries: StoredEntry[] = [...todo.values()]
      .map(({ index, id, loc }) => ({ index, id, key: loc.key, packed: !!loc.pack, offset: loc.offset, storedSize: loc.length }))
      .sort((a, b) => a.index - b.index);
    for (const run of planRuns(entries, { maxRunBytes: this.runBytes, maxGapBytes: GAP_BYTES })) {
      const chunks = run.chunks.map((c) => {
        const f = todo.get(c.id)!;
        const p = new Promise<Buffer>((ok, fail) => {
          f.ok = (b) => ((f.settled = true), ok(b));
          f.fail = (e) => ((f.settled = true), fail(e));
        });
        p.catch(() => {}); // a read-ahead nobody awaits must not become an unhandled rejection
        this.loading.set(c.id, p);
        return { c, f };
      });
      const turn: Turn = { urgent: chunks.some(({ f }) => !f.ahead) };
      for (const c of run.chunks) this.queued.set(c.id, turn);
      void this.gets.run(turn, () => this.readRun(run, chunks, turn));
    }
  }

  /** Reads one run with one GET into a buffer shared with the pool's workers, and opens its chunks there. */
  private async readRun(run: ReadRun, chunks: { c: RunChunk; f: Fetching }[], turn: Turn): Promise<void> {
    for (const c of run.chunks) if (this.queued.get(c.id) === turn) this.queued.delete(c.id);
    const slot = this.freeSlots.pop() ?? (this.allSlots[this.allSlots.length] = this.pool.share(this.runBytes));
    try {
      let body: Buffer | undefined;
      this.stats.gets++;
      try {
        body = await this.o.repository.store.get(run.key, { into: slot.bytes, ...(run.packed ? { range: { offset: run.offset, length: run.length } } : {}) });
      } catch (err) {
        for (const { f } of chunks) f.fail(err);
        return;
      }
      if (body) {
        this.stats.bytesDownloaded += body.length;
        if (body.buffer !== slot.bytes.buffer && body.length <= slot.bytes.length) slot.bytes.set(body); // a store that ignored `into`
      }
      // On this thread while every worker has another chunk queued behind the one it opens (as a
      // restore does), else on a worker; after one opened here, the event loop has its turn.
      const opening: Promise<void>[] = [];
      for (const { c, f } of chunks) {
        const here = this.pool.backlog >= this.pool.size * MAIN_THREAD_BACKLOG;
        const p = this.openInRun(run, c, f, body, slot, here);
        if (!here) opening.push(p);
        else {
          await p;
          await new Promise<void>((ok) => setImmediate(ok));
        }
      }
      await Promise.all(opening);
    } finally {
      this.freeSlots.push(slot);
      for (const { c, f } of chunks) {
        // Settles what nothing settled (a failure before the chunks were looked at).
        if (!f.settled) f.fail(new ExportIoError(`${run.key}: the read of this run failed`));
        this.loading.delete(c.id);
      }
    }
  }

  /** Opens chunk `c` of a run read into `slot` (on this thread when `here`), checks it, and caches it or records it damaged. */
  private async openInRun(run: ReadRun, c: RunChunk, f: Fetching, body: Buffer | undefined, slot: SharedSlot, here: boolean): Promise<void> {
    const { index } = f;
    const where = run.packed ? `${run.key} bytes ${run.offset + c.at}+${c.length}` : run.key;
    let why: string | undefined;
    let plain: Buffer | undefined;
    if (!body) why = `${run.key} is missing from the repository`;
    else if (body.length < c.at + c.length || body.length > slot.bytes.length)
      why = `${where} is past the end of what was read (${body.length} bytes of ${run.length}: the pack is shorter than the manifest says)`;
    else {
      try {
        const args = [this.o.repository.workerKeys(), slot, c.length, c.id, this.lengthAt(index), undefined, c.at] as const;
        const opened = here ? this.pool.openHere(...args) : await this.pool.openSlot(...args);
        if (!opened.ok) why = `${where} opens to other bytes than its id (swapped or wrong length)`;
        else plain = opened.plain!;
      } catch (err) {
        if (!(err instanceof Corrupt)) return f.fail(err);
        why = `${where}: ${err.message}`;
      }
    }
    if (why !== undefined) {
      this.damaged.set(c.id, why);
      this.stats.damagedChunks++;
      this.o.logger?.error('export.chunk.damaged', {
        backupId: this.o.backupId,
        diskId: this.o.diskId,
        chunk: c.id,
        offset: index * this.chunkBytes,
        reason: why,
      });
      return f.fail(new Corrupt(why));
    }
    this.stats.chunksFetched++;
    if (f.ahead) this.stats.chunksReadAhead++;
    this.remember(c.id, plain!);
    f.ok(plain!);
  }

  private remember(id: string, plain: Buffer): void {
    this.cache.set(id, plain);
    this.cacheBytes += plain.length;
    for (const [old, b] of this.cache) {
      if (this.cacheBytes <= this.cacheCap) break;
      this.cache.delete(old);
      this.cacheBytes -= b.length;
    }
  }
}
