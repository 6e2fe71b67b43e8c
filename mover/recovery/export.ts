/**
 * A backup's disk as a block device, straight from the repository: a read at any offset
 * is resolved through the disk's manifest to chunks, fetched by ranged GETs of their packs
 * (neighbouring chunks of a pack in one GET, into buffers shared with the chunk pool's
 * worker threads), opened there (authenticated, decrypted, decompressed) and checked
 * against their keyed ids, as a restore does (`mover/pipeline/chunk-pool.ts`). Decoded chunks are kept in a bounded LRU cache, and
 * sequential reads start fetching the next chunks before they are asked for.
 *
 * A chunk that is missing, fails authentication or opens to other bytes than its id says
 * fails the reads that need it with EIO (logged once, naming backup, disk and chunk); the
 * reads that do not need it go on. Never wrong bytes.
 */
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, sealedCapacity, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import { decodeManifest } from '../../repository/manifest/reader.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { chunkLocation } from '../../repository/packs.ts';
import { ExportIoError, type BlockExport, type ServerLogger } from '../nbd/server.ts';
import { StateFlag, type BlockDescriptor } from '../nbd/protocol.ts';
import { sharedChunkPool, type ChunkPool, type SharedSlot } from '../pipeline/chunk-pool.ts';
import { planRuns, type StoredEntry } from '../../repository/read-runs.ts';

/** The export's tunables (the export task's settings). */
export interface ExportSettings {
  /** Decoded chunks kept, in MiB (default 256). */
  cacheMiB: number;
  /** Chunks fetched ahead of sequential reads (default 16; 0 turns read-ahead off). Clamped to half the cache. */
  readAheadChunks: number;
  /** Range GETs in flight at once (default 8). */
  parallelism: number;
}

export const DEFAULT_EXPORT_SETTINGS: Readonly<ExportSettings> = Object.freeze({ cacheMiB: 256, readAheadChunks: 16, parallelism: 8 });

export interface DiskExportOptions extends Partial<ExportSettings> {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  diskId: string;
  logger?: ServerLogger;
  /** Worker threads that open chunks (default: the process-wide pool). */
  pool?: ChunkPool;
}

/** What an export did, for progress and the task's result. */
export interface DiskExportStats {
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
/** Read ends remembered to recognise a sequential read (several connections and requests in flight interleave). */
const RECENT_ENDS = 64;

export class BackupDiskExport implements BlockExport {
  readonly size: number;
  readonly description: string;
  readonly stats: DiskExportStats = { chunksFetched: 0, bytesDownloaded: 0, cacheHits: 0, chunksReadAhead: 0, damagedChunks: 0 };
  private readonly m: Manifest;
  private readonly o: DiskExportOptions;
  private readonly settings: ExportSettings;
  private readonly cache = new Map<string, Buffer>();
  private cacheBytes = 0;
  private readonly cacheCap: number;
  private readonly readAheadChunks: number;
  private readonly loading = new Map<string, Promise<Buffer>>();
  /** Chunks found damaged (they stay damaged): id → why. */
  private readonly damaged = new Map<string, string>();
  private readonly recentEnds: number[] = [];
  private prefetchedUpTo = 0;
  private gets = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly pool: ChunkPool;
  private readonly runBytes: number;
  private readonly freeSlots: SharedSlot[] = [];
  private readonly allSlots: SharedSlot[] = [];

  private constructor(m: Manifest, o: DiskExportOptions) {
    this.m = m;
    this.o = o;
    this.settings = { ...DEFAULT_EXPORT_SETTINGS, ...Object.fromEntries(Object.entries({ cacheMiB: o.cacheMiB, readAheadChunks: o.readAheadChunks, parallelism: o.parallelism }).filter(([, v]) => v !== undefined)) };
    const { cacheMiB, readAheadChunks, parallelism } = this.settings;
    if (!(cacheMiB > 0)) throw new RangeError(`export cacheMiB ${cacheMiB} must be above 0`);
    if (!Number.isInteger(readAheadChunks) || readAheadChunks < 0) throw new RangeError(`export readAheadChunks ${readAheadChunks} must be a whole number`);
    if (!Number.isInteger(parallelism) || parallelism < 1) throw new RangeError(`export parallelism ${parallelism} must be a whole number of at least 1`);
    this.size = m.sizeBytes;
    this.description = `Lifeboat backup ${m.backupId} disk ${m.diskId} (read-only)`;
    this.cacheCap = cacheMiB * 1024 * 1024;
    this.readAheadChunks = Math.min(readAheadChunks, Math.floor(this.cacheCap / m.chunkSize / 2));
    this.pool = o.pool ?? sharedChunkPool();
    this.runBytes = Math.max(RUN_BYTES, sealedCapacity(m.chunkSize));
  }

  /** Gives the run buffers back to the chunk pool; reads after this fail. */
  close(): void {
    for (const s of this.allSlots.splice(0)) this.pool.unshare(s);
    this.freeSlots.length = 0;
  }

  /** Opens the disk's manifest: Corrupt when it is missing or damaged. */
  static async open(o: DiskExportOptions): Promise<BackupDiskExport> {
    const key = objectKeys.manifest(o.backupId, o.diskId);
    const sealed = await o.store.get(key);
    if (!sealed) throw new Corrupt(`manifest ${key} of backup ${o.backupId} disk '${o.diskId}' is missing from the repository`);
    return new BackupDiskExport(await decodeManifest(o.keys, sealed, o.backupId, o.diskId, o.store), o);
  }

  get chunkSize(): number {
    return this.m.chunkSize;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read ${offset}+${length} is outside the ${this.size}-byte disk`);
    }
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const cs = this.m.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    const wanted: { index: number; id: string }[] = [];
    for (let i = first; i <= last; i++) {
      const id = this.m.chunks[i]!;
      if (id !== null) wanted.push({ index: i, id });
    }
    this.fetch(wanted.map((w) => w.index), false);
    this.readAhead(offset, length);
    await Promise.all(wanted.map(async ({ index, id }) => {
      const plain = await this.chunk(index, id);
      const start = index * cs;
      const from = Math.max(offset, start);
      const to = Math.min(offset + length, start + plain.length);
      plain.copy(out, from - offset, from - start, to - start);
    }));
    return out;
  }

  allocation(offset: number, length: number): BlockDescriptor[] {
    const cs = this.m.chunkSize;
    const end = Math.min(offset + length, this.size);
    const out: BlockDescriptor[] = [];
    for (let at = offset; at < end;) {
      const i = Math.floor(at / cs);
      const next = Math.min(end, (i + 1) * cs);
      const flags = this.m.chunks[i] === null ? StateFlag.HOLE | StateFlag.ZERO : 0;
      const prev = out[out.length - 1];
      if (prev && prev.flags === flags) prev.length += next - at;
      else out.push({ length: next - at, flags });
      at = next;
    }
    return out;
  }

  /** The decoded chunk `id` at index `index`: from the cache, a fetch under way, or a new fetch. */
  private async chunk(index: number, id: string): Promise<Buffer> {
    const hit = this.cache.get(id);
    if (hit) {
      this.stats.cacheHits++;
      this.cache.delete(id);
      this.cache.set(id, hit);
      return hit;
    }
    const why = this.damaged.get(id);
    if (why) throw this.damageError(index, id, why);
    if (!this.loading.has(id)) this.fetch([index], false);
    return this.loading.get(id)!.catch((err: unknown) => {
      const why = this.damaged.get(id);
      if (why) throw this.damageError(index, id, why);
      throw err instanceof ExportIoError ? err : new ExportIoError(`backup ${this.m.backupId} disk '${this.m.diskId}' chunk ${id} at offset ${index * this.m.chunkSize}: reading the repository failed: ${(err as Error).message}`, undefined, { cause: err });
    });
  }

  private damageError(index: number, id: string, why: string): ExportIoError {
    return new ExportIoError(`backup ${this.m.backupId} disk '${this.m.diskId}' chunk ${id} at offset ${index * this.m.chunkSize} is damaged: ${why}`);
  }

  private lengthAt(index: number): number {
    return Math.min(this.m.chunkSize, this.size - index * this.m.chunkSize);
  }

  /** Starts fetching the chunks at `indexes` that are neither cached, nor being fetched, nor known damaged. */
  private fetch(indexes: number[], ahead: boolean): void {
    const todo = new Map<string, number>();
    for (const i of indexes) {
      const id = this.m.chunks[i];
      if (!id || this.cache.has(id) || this.loading.has(id) || this.damaged.has(id) || todo.has(id)) continue;
      todo.set(id, i);
    }
    if (todo.size === 0) return;
    // Planned as a restore plans its reads (read-runs.ts); a gap is read through only when small, as a run's buffer is a fixed slot.
    const entries: StoredEntry[] = [...todo].map(([id, index]) => {
      const loc = chunkLocation(this.m, id);
      return { index, id, key: loc.key, packed: !!loc.pack, offset: loc.offset, storedSize: loc.length };
    }).sort((a, b) => a.index - b.index);
    for (const run of planRuns(entries, { maxRunBytes: this.runBytes, maxGapBytes: GAP_BYTES })) {
      const settle = new Map<string, { ok: (b: Buffer) => void; fail: (e: unknown) => void }>();
      for (const c of run.chunks) {
        const p = new Promise<Buffer>((ok, fail) => settle.set(c.id, { ok, fail }));
        p.catch(() => {}); // a read-ahead nobody awaits must not become an unhandled rejection
        this.loading.set(c.id, p);
      }
      void this.limited(async () => {
        // The run is read into a buffer the pool's workers share, and each chunk opened there.
        const slot = this.freeSlots.pop() ?? (this.allSlots[this.allSlots.length] = this.pool.share(this.runBytes));
        try {
          let body: Buffer | undefined;
          try {
            body = await this.o.store.get(run.key, { into: slot.bytes, ...(run.packed ? { range: { offset: run.offset, length: run.length } } : {}) });
          } catch (err) {
            for (const c of run.chunks) settle.get(c.id)!.fail(err);
            return;
          }
          if (body) {
            this.stats.bytesDownloaded += body.length;
            if (body.buffer !== slot.bytes.buffer && body.length <= slot.bytes.length) slot.bytes.set(body); // a store that ignored `into`
          }
          await Promise.all(run.chunks.map(async (c) => {
            const index = todo.get(c.id)!;
            const s = settle.get(c.id)!;
            const where = run.packed ? `${run.key} bytes ${run.offset + c.at}+${c.length}` : run.key;
            let why: string | undefined;
            let plain: Buffer | undefined;
            if (!body) why = `${run.key} is missing from the repository`;
            else if (body.length < c.at + c.length || body.length > slot.bytes.length) why = `${where} is past the end of what was read (${body.length} bytes of ${run.length}: the pack is shorter than the manifest says)`;
            else {
              try {
                const opened = await this.pool.openSlot(this.o.keys, slot, c.length, c.id, this.lengthAt(index), undefined, c.at);
                if (!opened.ok) why = `${where} opens to other bytes than its id (swapped or wrong length)`;
                else plain = opened.plain!;
              } catch (err) {
                if (!(err instanceof Corrupt)) return s.fail(err);
                why = `${where}: ${err.message}`;
              }
            }
            if (why !== undefined) {
              this.damaged.set(c.id, why);
              this.stats.damagedChunks++;
              this.o.logger?.error('export.chunk.damaged', { backupId: this.m.backupId, diskId: this.m.diskId, chunk: c.id, offset: index * this.m.chunkSize, reason: why });
              return s.fail(new Corrupt(why));
            }
            this.stats.chunksFetched++;
            if (ahead) this.stats.chunksReadAhead++;
            this.remember(c.id, plain!);
            s.ok(plain!);
          }));
        } finally {
          this.freeSlots.push(slot);
          for (const c of run.chunks) {
            // Settles what nothing settled (a failure before the chunks were looked at); settled promises ignore it.
            settle.get(c.id)!.fail(new ExportIoError(`${run.key}: the read of this run failed`));
            this.loading.delete(c.id);
          }
        }
      });
    }
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

  /** Runs `fn` when fewer than `parallelism` GETs are in flight (first come, first served). */
  private async limited(fn: () => Promise<void>): Promise<void> {
    if (this.gets >= this.settings.parallelism) await new Promise<void>((ok) => this.waiting.push(ok));
    this.gets++;
    try {
      await fn();
    } finally {
      this.gets--;
      this.waiting.shift()?.();
    }
  }

  /**
   * A read that starts where a recent read ended is sequential: the chunks after it (up to
   * `readAheadChunks`) are fetched now, so the next reads find them cached or on the way.
   */
  private readAhead(offset: number, length: number): void {
    const sequential = this.recentEnds.includes(offset);
    this.recentEnds.push(offset + length);
    if (this.recentEnds.length > RECENT_ENDS) this.recentEnds.shift();
    if (!sequential || this.readAheadChunks === 0) return;
    const next = Math.ceil((offset + length) / this.m.chunkSize);
    const until = Math.min(this.m.chunks.length, next + this.readAheadChunks);
    // Behind the reader, or far ahead of it (it jumped back): start again from here.
    if (this.prefetchedUpTo < next || this.prefetchedUpTo > until) this.prefetchedUpTo = next;
    const from = this.prefetchedUpTo;
    if (from >= until) return;
    this.prefetchedUpTo = until;
    this.fetch(Array.from({ length: until - from }, (_, k) => from + k), true);
  }
}
