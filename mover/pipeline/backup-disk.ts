/**
 * One disk's transfer: skip the holes the source reports (never read) → read → zero
 * check → keyed id → skip what the parent has (no request) → skip what the repository's
 * index lists → seal (zstd + AES-GCM) straight into a pack buffer, uploaded once full
 * (repository/packs.ts, pack-writer.ts), with a bounded number of chunks in flight; then the
 * last pack, the index of the packs written, and the manifest, last. Memory is bounded
 * by `parallelism` plaintext slots and three pack buffers (see PackWriter). The id and
 * the sealing run on the chunk pool's worker threads, which reserve each sealed chunk's
 * place in the shared pack buffer and write it there; the main thread reads, checks for
 * zeros (memcmp), hands out packs, uploads them with their trailer and does the
 * requests: it copies no chunk.
 *
 * Here: the loop over the disk's chunks, the read-ahead and the shared buffers. What is not
 * read (holes, chunks unchanged since the parent) is `backup-parent.ts`; one chunk's way
 * into the repository `backup-chunk.ts`; the entries' way into the manifest, in disk order,
 * `backup-entries.ts`.
 */
import { Corrupt } from '../../contracts/errors.ts';
import { segmentManifestId, type DiskRef, type DiskResult } from '../../contracts/jobs.ts';
import { sealedCapacity } from '../../repository/format.ts';
import type { RepositoryIndex } from '../../repository/types.ts';
import type { DiskReader } from '../sources/source.ts';
import type { BackupDiskOptions } from './backup-options.ts';
import { ChunkStorer, emptyStats, type DiskStats } from './backup-chunk.ts';
import { EntryWindow, RecentIds, type Entry } from './backup-entries.ts';
import { openParent, unreadChunks } from './backup-parent.ts';
import { sharedChunkPool, type ChunkPool, type SharedPack, type SharedSlot } from './chunk-pool.ts';

/** Chunks read ahead of the one being processed. */
const READ_AHEAD = 2;

/** The chunks a task transfers: the whole disk, or a chunk-aligned segment of it to a segment manifest. */
function chunkRange(o: BackupDiskOptions): { firstChunk: number; endChunk: number; manifestId: string } {
  const { chunkSize, disk } = o;
  const seg = o.segment ?? null;
  if (seg && (seg.offset % chunkSize !== 0 || seg.length <= 0 || seg.offset + seg.length > disk.sizeBytes)) {
    throw new Corrupt(
      `segment ${seg.index} of disk '${disk.diskId}' (offset ${seg.offset}, length ${seg.length}) is not a chunk-aligned part of its ${disk.sizeBytes} bytes`,
    );
  }
  return {
    firstChunk: seg ? seg.offset / chunkSize : 0,
    endChunk: seg ? Math.ceil((seg.offset + seg.length) / chunkSize) : Math.ceil(disk.sizeBytes / chunkSize),
    manifestId: seg ? segmentManifestId(disk.diskId, seg.index) : disk.diskId,
  };
}

/**
 * The buffers of one disk's transfer, shared with the pool's workers. Plaintext buffers are
 * slots of chunkSize (nothing is copied or moved per chunk), reused: at most `parallelism`
 * exist at once. Pack buffers are shared with them too: sealed chunks are written straight
 * into the pack (nothing chunk-sized is allocated per chunk either: buffers made on a worker
 * and freed on the main thread fragment the allocator, ~100 MiB of RSS more on the 2 GiB bench).
 */
class SharedBuffers {
  private readonly free: SharedSlot[] = [];
  private readonly all: (SharedSlot | SharedPack)[] = [];
  private readonly pool: ChunkPool;
  private readonly chunkSize: number;

  constructor(pool: ChunkPool, chunkSize: number) {
    this.pool = pool;
    this.chunkSize = chunkSize;
  }

  takeSlot(): SharedSlot {
    return this.free.pop() ?? (this.all[this.all.length] = this.pool.share(this.chunkSize));
  }

  freeSlot(slot: SharedSlot): void {
    this.free.push(slot);
  }

  newPack(capacity: number): SharedPack {
    const pack = this.pool.sharePack(capacity);
    this.all.push(pack);
    return pack;
  }

  /** The workers drop their references to every buffer. */
  unshareAll(): void {
    for (const slot of this.all) this.pool.unshare(slot);
  }
}

/**
 * Reads ahead: the next chunks are read (on libuv's threads) while this one is checked
 * and hashed, so the main thread does not wait out every read (bench/MEASUREMENTS.md).
 */
class ReadAhead {
  private readonly reads = new Map<number, Promise<SharedSlot>>();
  private next: number;
  private readonly o: { reader: DiskReader; disk: DiskRef; chunkSize: number; endChunk: number; unread: (i: number) => boolean; buffers: SharedBuffers };

  constructor(firstChunk: number, o: ReadAhead['o']) {
    this.next = firstChunk;
    this.o = o;
  }

  /** Starts the reads of the chunks not read yet up to `upTo` (but those not read at all). */
  upTo(upTo: number): void {
    const { reader, disk, chunkSize, endChunk } = this.o;
    for (; this.next <= Math.min(upTo, endChunk - 1); this.next++) {
      const i = this.next;
      if (this.o.unread(i)) continue;
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, disk.sizeBytes - offset);
      const buf = this.o.buffers.takeSlot();
      const read = reader.read(buf.bytes, offset, length).then((n) => {
        if (n !== length) throw new Corrupt(`disk '${disk.diskId}' ended early: read ${n} of ${length} bytes at offset ${offset} (was the image truncated?)`);
        return buf;
      });
      read.catch(() => {}); // awaited in order; one failing while another chunk fails is not unhandled
      this.reads.set(i, read);
    }
  }

  /** Chunk `i`'s read, if it is read. */
  get(i: number): Promise<SharedSlot> | undefined {
    return this.reads.get(i);
  }

  done(i: number): void {
    this.reads.delete(i);
  }

  /** Once every read started has ended: none may still be writing into a slot that is dropped. */
  async settled(): Promise<void> {
    await Promise.allSettled(this.reads.values());
  }
}

/** Counts a chunk that was not read: `null` a hole, else what the parent holds for an unchanged chunk. */
function countUnread(stats: DiskStats, length: number, hole: boolean, same: Entry): void {
  if (hole) {
    stats.zeroChunks++;
    stats.bytesZero += length;
    stats.bytesUnallocated += length;
    return;
  }
  // not changed since the parent: its chunk, unread
  stats.bytesUnchanged += length;
  if (same === null) {
    stats.zeroChunks++;
    stats.bytesZero += length;
  } else stats.parentChunks++; // not remembered: see RecentIds
}

export async function backupDisk(o: BackupDiskOptions): Promise<DiskResult> {
  const started = performance.now();
  const { chunkSize, disk } = o;
  const { firstChunk, endChunk, manifestId } = chunkRange(o);
  const parentChunks = await openParent(o, firstChunk);
  const { inHole, unchanged, tracking } = await unreadChunks(o, parentChunks);
  const stats = emptyStats(endChunk - firstChunk);
  const recent = new RecentIds();
  let indexLoad: Promise<RepositoryIndex> | undefined;
  const pool = o.pool ?? sharedChunkPool();
  const parallelism = o.parallelism ?? 8;
  const buffers = new SharedBuffers(pool, chunkSize);
  const progress = (bytesStored: number) => o.onProgress?.({ bytesScanned: stats.bytesScanned, sizeBytes: disk.sizeBytes, bytesStored });
  // Progress counts stored bytes as packs land (also after the last chunk was read).
  const writer = o.repository.packWriter({
    maxChunkBytes: sealedCapacity(chunkSize),
    maxInFlight: parallelism,
    ...(o.packBytes ? { targetBytes: o.packBytes } : {}),
    newBuffer: (capacity) => buffers.newPack(capacity),
    onStored: progress,
    onPack: (pack) => manifest.packLanded(pack.id, pack.size),
    keepWritten: false,
  });
  // The manifest is written as the disk goes, piece by piece, in disk order.
  const manifest = o.repository.manifestWriter({
    backupId: o.backupId,
    manifestId,
    sizeBytes: disk.sizeBytes,
    chunkSize,
    from: firstChunk,
    to: endChunk,
    flushPacks: () => writer.flush(),
  });
  const storer = new ChunkStorer({
    repository: o.repository,
    pool,
    writer,
    parent: parentChunks,
    ...(o.healChunks ? { healChunks: o.healChunks } : {}),
    ...(o.compressionLevel === undefined ? {} : { compressionLevel: o.compressionLevel }),
    index: () => (indexLoad ??= o.index ? o.index() : o.repository.index.refresh()),
    stats,
    recent,
    freeSlot: (slot) => buffers.freeSlot(slot),
  });
  const window = new EntryWindow(manifest, 4 * parallelism + 64);
  const reads = new ReadAhead(firstChunk, { reader: o.reader, disk, chunkSize, endChunk, unread: (i) => inHole(i) || unchanged(i) !== undefined, buffers });
  const running = new Set<Promise<void>>();
  let failure: unknown;
  let finished = false;
  try {
    for (let i = firstChunk; i < endChunk; i++) {
      o.signal?.throwIfAborted();
      if (failure) break;
      // The parent's entries from the oldest chunk still in flight to the last read ahead.
      await parentChunks.cursor?.ensure(i + READ_AHEAD, i - window.length);
      reads.upTo(i + READ_AHEAD);
      const length = Math.min(chunkSize, disk.sizeBytes - i * chunkSize);
      stats.bytesScanned += length;
      const read = reads.get(i);
      if (!read) {
        // not read: a hole, or not changed since the parent (its chunk)
        const hole = inHole(i);
        const same = hole ? null : unchanged(i)!;
        countUnread(stats, length, hole, same);
        window.settled(same);
        await window.emit();
        progress(writer.bytesWritten);
        continue;
      }
      const buf = await read;
      reads.done(i);
      stats.bytesRead += length;
      const tracked: Promise<void> = window
        .pending(storer.store(i, buf, length))
        .then(
          () => {},
          (err: unknown) => {
            failure ??= err;
          },
        )
        .finally(() => running.delete(tracked));
      running.add(tracked);
      if (running.size >= parallelism) await Promise.race(running);
      if (failure) break;
      await window.emit();
      progress(writer.bytesWritten);
    }
    await Promise.allSettled(running);
    if (failure) throw failure;
    await writer.finish(); // every pack and its index landed: now the manifest's last pieces may name them
    await window.emit(true);
    const written = await manifest.finish();
    stats.bytesStored += writer.bytesWritten + written.bytes;
    finished = true;
  } catch (err) {
    failure ??= err;
  } finally {
    await reads.settled(); // no read may still be writing into a slot that is dropped below
    await Promise.allSettled(running);
    await parentChunks.cursor?.close();
    if (!finished) {
      await writer.abandon();
      await manifest.abandon(failure);
    }
    buffers.unshareAll();
  }
  if (failure) throw failure;
  stats.seconds = (performance.now() - started) / 1000;
  return {
    diskId: disk.diskId,
    sizeBytes: disk.sizeBytes,
    manifestKey: manifest.key,
    stats,
    ...(o.segment ? { segment: o.segment } : {}),
    ...(tracking ? { changeTracking: tracking } : {}),
  };
}
