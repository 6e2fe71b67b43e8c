/**
 * One chunk read from the disk, on its way into the repository: zeros are not stored; the
 * keyed id; the parent's chunk at the same offset, the ids stored lately, a chunk being
 * sealed now and the repository's index are asked in that order before the chunk is
 * sealed (on a worker, straight into the open pack) and uploaded with its pack.
 */
import type { TransferStats } from '../../contracts/jobs.ts';
import { isZero } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import type { PackWriter, RepositoryIndex } from '../../repository/types.ts';
import type { Entry, RecentIds, Stored } from './backup-entries.ts';
import { parentEntry, type ParentChunks } from './backup-parent.ts';
import type { ChunkPool, SharedPack, SharedSlot } from './chunk-pool.ts';

/** A disk's figures as its chunks go (TransferStats without the storage retries, which the store counts). */
export type DiskStats = Required<Omit<TransferStats, 'storageRetries'>>;

export function emptyStats(chunks: number): DiskStats {
  return {
    bytesScanned: 0,
    bytesRead: 0,
    bytesNew: 0,
    bytesZero: 0,
    bytesUnallocated: 0,
    bytesUnchanged: 0,
    bytesUploaded: 0,
    bytesStored: 0,
    chunks,
    zeroChunks: 0,
    parentChunks: 0,
    dedupedChunks: 0,
    uploadedChunks: 0,
    seconds: 0,
  };
}

export interface ChunkStorerOptions {
  repository: Repository;
  pool: ChunkPool;
  writer: PackWriter<SharedPack>;
  parent: ParentChunks;
  /** Chunk ids quarantined by the control plane: never reused, always stored again. */
  healChunks?: ReadonlySet<string>;
  compressionLevel?: number;
  /** The repository's index, loaded when first asked for. */
  index: () => Promise<RepositoryIndex>;
  stats: DiskStats;
  recent: RecentIds;
  /** Takes back a plaintext slot once its chunk no longer needs it. */
  freeSlot: (slot: SharedSlot) => void;
}

/**
 * zstd level of chunk data when the backup sets none: level 1, not zstd's default 3. It
 * seals the bench's chunks for ~40% less CPU (the chunk worker is what limits a full
 * backup) for ~1.5% more stored bytes; the figures: REPOSITORY-FORMAT.md, Compression level.
 */
export const CHUNK_ZSTD_LEVEL = 1;

export class ChunkStorer {
  private readonly o: ChunkStorerOptions;
  /** Chunks being sealed now, by id: a repeat waits for where the first lands. */
  private readonly sealing = new Map<string, Promise<Stored>>();
  /** Chunks sent to the workers to be sealed and not sealed yet. */
  private sealsQueued = 0;

  constructor(o: ChunkStorerOptions) {
    this.o = o;
  }

  /** The entry of chunk `index`, whose `length` bytes are in `first`; the slot is freed when it is no longer needed. */
  async store(index: number, first: SharedSlot, length: number): Promise<Entry> {
    const { o } = this;
    let buf: SharedSlot | undefined = first;
    const release = () => {
      if (buf) o.freeSlot(buf);
      buf = undefined;
    };
    try {
      if (isZero(buf.bytes.subarray(0, length))) {
        o.stats.zeroChunks++;
        o.stats.bytesZero += length;
        return null;
      }
      // The id on a worker, unless every worker is sealing (a full backup, where sealing on
      // the workers is the critical path): then on this thread. An incremental, whose work is
      // mostly ids, leaves this thread to read, schedule and write the manifest.
      const id =
        this.sealsQueued >= o.pool.size ? o.repository.chunkId(buf.bytes.subarray(0, length)) : await o.pool.hashSlot(o.repository.workerKeys(), buf, length);
      // Synchronous up to the sealing map's entry, so a repeat of the chunk finds it there.
      const reused = this.reused(index, id, length);
      return reused !== undefined ? await reused : await this.sealOnce(id, buf, length, release);
    } finally {
      release();
    }
  }

  /** The chunk as the parent, a chunk stored lately or one being sealed now has it; undefined: it is new to this backup. */
  private reused(index: number, id: string, length: number): Entry | Promise<Entry> | undefined {
    const { stats, recent } = this.o;
    // The parent's chunk at the same offset (read ahead of this one: see backupDisk's loop).
    const known = parentEntry(this.o.parent, index, this.o.healChunks);
    if (known && known.id === id) {
      stats.parentChunks++;
      return known; // not remembered: see RecentIds
    }
    stats.bytesNew += length;
    const seen = recent.get(id);
    if (seen) {
      stats.dedupedChunks++;
      return recent.remember(id, seen);
    }
    const inFlight = this.sealing.get(id);
    if (inFlight) {
      stats.dedupedChunks++;
      return inFlight.then((stored) => ({ id, stored }));
    }
    return undefined;
  }

  private async sealOnWorker(plain: SharedSlot, length: number, id: string, level: { level: number }, pack: SharedPack) {
    this.sealsQueued++;
    try {
      return await this.o.pool.sealSlot(this.o.repository.workerKeys(), plain, length, id, level, pack);
    } finally {
      this.sealsQueued--;
    }
  }

  /**
   * Where a chunk new to this backup is: the repository's index, or sealed into the open
   * pack. A repeat of it meanwhile waits for where it lands (`sealing`); `release` frees its
   * plaintext once sealed.
   */
  private async sealOnce(id: string, plain: SharedSlot, length: number, release: () => void): Promise<Entry> {
    const { o } = this;
    const { stats, recent } = o;
    let placed!: (at: Stored) => void;
    let failed!: (err: unknown) => void;
    const landing = new Promise<Stored>((resolve, reject) => {
      placed = resolve;
      failed = reject;
    });
    landing.catch(() => {}); // a repeat that awaits it sees the failure; the chunk itself rethrows it
    this.sealing.set(id, landing);
    try {
      // Stored by another VM or disk, or by an earlier attempt of this one: the index says where.
      // A quarantined chunk is always stored again (its indexed copies may be the damaged one).
      const elsewhere = o.healChunks?.has(id) ? undefined : (await o.index()).get(id);
      if (elsewhere?.pack) {
        stats.dedupedChunks++;
        const at = { pack: elsewhere.pack, offset: elsewhere.offset, length: elsewhere.length };
        placed(at);
        return recent.remember(id, at);
      }
      // Sealed on a worker always, straight into the open pack: sealing on this thread too
      // (like the id) was slower and used more memory (bench/MEASUREMENTS.md).
      const level = { level: o.compressionLevel ?? CHUNK_ZSTD_LEVEL };
      const at = await o.writer.place(id, (pack) => this.sealOnWorker(plain, length, id, level, pack));
      release(); // the plaintext is not needed for the upload
      stats.uploadedChunks++;
      stats.bytesUploaded += length;
      const where = { pack: { id: at.packId }, offset: at.offset, length: at.length };
      placed(where);
      return recent.remember(id, where);
    } catch (err) {
      failed(err);
      throw err;
    } finally {
      this.sealing.delete(id);
    }
  }
}
