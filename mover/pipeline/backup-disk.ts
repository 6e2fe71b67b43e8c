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
 */
import { Corrupt } from '../../contracts/errors.ts';
import { chunkId, isZero, sealedCapacity, type RepositoryKeys } from '../../repository/format.ts';
import { ManifestCursor, ManifestReader } from '../../repository/manifest/reader.ts';
import { ManifestWriter } from '../../repository/manifest/writer.ts';
import { RepositoryIndex } from '../../repository/repository-index.ts';
import { PackWriter } from '../../repository/pack-writer.ts';
import { segmentManifestId, type ChangeTracking, type DiskRef, type DiskResult, type DiskSegment, type TransferStats } from '../../contracts/jobs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { holdsData, type DiskReader, type Extent } from '../sources/source.ts';
import { sharedChunkPool, type ChunkPool, type SharedPack, type SharedSlot } from './chunk-pool.ts';

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
  /**
   * The repository's index, for chunks the parent does not have, asked for when the first
   * such chunk comes (default: read from the store; a mover passes its IndexCache's refresh).
   */
  index?: () => Promise<RepositoryIndex>;
  /** Pack size in bytes (default 8 MiB). */
  packBytes?: number;
  /** Transfer only this chunk-aligned part of the disk, to a segment manifest (see keys.segmentId). */
  segment?: DiskSegment | null;
  signal?: AbortSignal;
  onProgress?: (p: { bytesScanned: number; sizeBytes: number; bytesStored: number }) => void;
}

/** Chunks read ahead of the one being processed. */
const READ_AHEAD = 2;

/** Where a chunk is stored, as a manifest records it (`pack.size` unknown while a pack this backup writes has not landed). */
interface Stored {
  pack: { id: string; size?: number };
  offset: number;
  length: number;
}

/** A chunk's manifest entry: null for zeros. */
type Entry = { id: string; stored: Stored } | null;

/**
 * Ids this backup stored or found in the repository's index most recently, remembered so a
 * repeated chunk costs no lookup (bounded); the chunks it stores are in no index object it
 * has read. A chunk taken from the parent is not remembered: the index lists it anyway, and
 * an incremental remembering every unchanged chunk kept ~65,000 ids and locations alive
 * long enough to reach V8's old generation, which then grew by that much garbage again and
 * again between full collections.
 */
const RECENT_IDS = 65_536;

/**
 * The parent backup's manifest, walked in step with the disk (`cursor`: the parent's
 * chunk at the same offset is reused without any request, and is what an unchanged
 * extent holds), or why the parent cannot serve as the base of a changed-block read
 * (`unusable`). A format-1 parent (chunks as objects) is not used: later manifests
 * reference packs only, so the first backup after that upgrade stores its chunks again.
 */
interface ParentChunks {
  cursor?: ManifestCursor;
  unusable?: string;
}

async function openParent(o: BackupDiskOptions, firstChunk: number): Promise<ParentChunks> {
  if (!o.parentManifestKey || !o.parentBackupId) return { unusable: 'the disk has no parent backup' };
  const parent = await ManifestReader.open(o.store, o.keys, o.parentBackupId, o.disk.diskId);
  // The parent was pruned: every chunk is looked up in the repository's index instead.
  if (!parent) return { unusable: `the parent backup's manifest ${o.parentManifestKey} is gone` };
  if (parent.info.chunkSize !== o.chunkSize || parent.info.version === 1) return { unusable: 'the parent backup has another chunk size or format' };
  const cursor = new ManifestCursor(parent, firstChunk);
  if (parent.info.sizeBytes !== o.disk.sizeBytes)
    return { cursor, unusable: `the disk was resized (${parent.info.sizeBytes} bytes in the parent backup, ${o.disk.sizeBytes} now)` };
  return { cursor };
}

/** The parent's chunk at `i` as this backup may reuse it: not a quarantined one (undefined then, or past the parent's end). */
function parentEntry(parent: ParentChunks, i: number, heal: ReadonlySet<string> | undefined): Entry | undefined {
  const e = parent.cursor?.get(i);
  if (!e) return undefined;
  if (e.id === null) return null;
  if (heal?.has(e.id) || !e.location?.pack) return undefined;
  return { id: e.id, stored: { pack: e.location.pack, offset: e.location.offset, length: e.location.length } };
}

/**
 * The extents changed since the parent backup, when both the source (a dirty bitmap) and
 * the parent manifest can be trusted; otherwise why not: every byte is read then and
 * compared by id, which is always correct, only slower.
 */
async function changedSinceParent(o: BackupDiskOptions, parent: ParentChunks): Promise<{ extents?: Extent[]; tracking?: ChangeTracking }> {
  const offered = o.disk.changeTracking;
  if (!offered) return {};
  if (!('since' in offered)) return { tracking: { used: false, reason: offered.unavailable } };
  if (parent.unusable) return { tracking: { used: false, reason: parent.unusable } };
  if (offered.sinceBackupId !== o.parentBackupId)
    return { tracking: { used: false, reason: `the source tracks changes since backup ${offered.sinceBackupId}, not since the parent ${o.parentBackupId}` } };
  const extents = await o.reader.changed?.();
  if (!extents) return { tracking: { used: false, reason: 'the source could not list the changed extents (too many, or no dirty bitmap on the export)' } };
  return { extents, tracking: { used: true, since: offered.since } };
}

export async function backupDisk(o: BackupDiskOptions): Promise<DiskResult> {
  const started = performance.now();
  const { chunkSize, disk } = o;
  const count = Math.ceil(disk.sizeBytes / chunkSize);
  const seg = o.segment ?? null;
  if (seg && (seg.offset % chunkSize !== 0 || seg.length <= 0 || seg.offset + seg.length > disk.sizeBytes)) {
    throw new Corrupt(
      `segment ${seg.index} of disk '${disk.diskId}' (offset ${seg.offset}, length ${seg.length}) is not a chunk-aligned part of its ${disk.sizeBytes} bytes`,
    );
  }
  const firstChunk = seg ? seg.offset / chunkSize : 0;
  const endChunk = seg ? Math.ceil((seg.offset + seg.length) / chunkSize) : count;
  const manifestId = seg ? segmentManifestId(disk.diskId, seg.index) : disk.diskId;
  const parentChunks = await openParent(o, firstChunk);
  // A chunk in a hole of the disk reads as zeros: it is a zero chunk, and it is not read.
  const extents = await o.reader.allocated?.();
  const chunkLength = (i: number) => Math.min(chunkSize, disk.sizeBytes - i * chunkSize);
  const inHole = (i: number) => extents !== undefined && !holdsData(extents, i * chunkSize, chunkLength(i));
  // Changed-block tracking: a chunk no changed extent touches holds what the parent's chunk
  // at the same offset held, so it is taken from the parent manifest without being read.
  const { extents: changed, tracking } = await changedSinceParent(o, parentChunks);
  // (The parent's entries up to the chunk asked for are read: `parentChunks.cursor.ensure`.)
  const unchanged = (i: number): Entry | undefined => {
    if (!changed || holdsData(changed, i * chunkSize, chunkLength(i))) return undefined;
    return parentEntry(parentChunks, i, o.healChunks); // a quarantined chunk is read again
  };
  const stats: Required<Omit<TransferStats, 'storageRetries'>> = {
    bytesScanned: 0,
    bytesRead: 0,
    bytesNew: 0,
    bytesZero: 0,
    bytesUnallocated: 0,
    bytesUnchanged: 0,
    bytesUploaded: 0,
    bytesStored: 0,
    chunks: endChunk - firstChunk,
    zeroChunks: 0,
    parentChunks: 0,
    dedupedChunks: 0,
    uploadedChunks: 0,
    seconds: 0,
  };
  // Ids stored or found in the index lately (a chunk repeated on the disk costs no lookup), least recent first.
  const recent = new Map<string, Stored>();
  const remember = (id: string, at: Stored): Entry => {
    recent.delete(id);
    recent.set(id, at);
    if (recent.size > RECENT_IDS) recent.delete(recent.keys().next().value!);
    return { id, stored: at };
  };
  let indexLoad: Promise<RepositoryIndex> | undefined;
  const repositoryIndex = () => (indexLoad ??= o.index ? o.index() : RepositoryIndex.load(o.store, o.keys));

  const pool = o.pool ?? sharedChunkPool();
  const parallelism = o.parallelism ?? 8;
  // Plaintext buffers are slots of chunkSize shared with the pool's workers (nothing is
  // copied or moved per chunk), reused: at most `parallelism` exist at once. Pack buffers
  // are shared with them too: sealed chunks are written straight into the pack (nothing
  // chunk-sized is allocated per chunk either: buffers made on a worker and freed on the
  // main thread fragment the allocator, ~100 MiB of RSS more on the 2 GiB bench).
  const free: SharedSlot[] = [];
  const all: (SharedSlot | SharedPack)[] = [];
  const takeSlot = () => free.pop() ?? (all[all.length] = pool.share(chunkSize));
  const progress = (bytesStored: number) => o.onProgress?.({ bytesScanned: stats.bytesScanned, sizeBytes: disk.sizeBytes, bytesStored });
  // Progress counts stored bytes as packs land (also after the last chunk was read).
  const writer = new PackWriter({
    store: o.store,
    keys: o.keys,
    maxChunkBytes: sealedCapacity(chunkSize),
    maxInFlight: parallelism,
    ...(o.packBytes ? { targetBytes: o.packBytes } : {}),
    newBuffer: (capacity): SharedPack => {
      const pack = pool.sharePack(capacity);
      all.push(pack);
      return pack;
    },
    onStored: progress,
    onPack: (pack) => manifest.packLanded(pack.id, pack.size),
    keepWritten: false,
  });
  // The manifest is written as the disk goes, piece by piece, in disk order.
  const manifest = new ManifestWriter({
    store: o.store,
    keys: o.keys,
    backupId: o.backupId,
    manifestId,
    sizeBytes: disk.sizeBytes,
    chunkSize,
    from: firstChunk,
    to: endChunk,
    flushPacks: () => writer.flush(),
  });
  /** Chunks being sealed now, by id: a repeat waits for where the first lands. */
  const sealing = new Map<string, Promise<Stored>>();

  const processChunk = async (index: number, first: SharedSlot, length: number): Promise<Entry> => {
    let buf: SharedSlot | undefined = first;
    const release = (b: SharedSlot | undefined) => {
      if (b) free.push(b);
      buf = undefined;
    };
    try {
      if (isZero(buf.bytes.subarray(0, length))) {
        stats.zeroChunks++;
        stats.bytesZero += length;
        return null;
      }
      // The id on this thread while every worker has work queued (sealing, or ids of chunks
      // read faster than the workers hash them), else on a worker: the main thread is
      // otherwise idle in an incremental, where hashing is most of the work.
      const id = pool.backlog >= pool.size ? chunkId(o.keys, buf.bytes.subarray(0, length)) : await pool.hashSlot(o.keys, buf, length);
      // The parent's chunk at the same offset (read ahead of this one: see the main loop).
      const known = parentEntry(parentChunks, index, o.healChunks);
      if (known && known.id === id) {
        stats.parentChunks++;
        return known;
      }
      stats.bytesNew += length;
      const seen = recent.get(id);
      if (seen) {
        stats.dedupedChunks++;
        return remember(id, seen);
      }
      const inFlight = sealing.get(id);
      if (inFlight) {
        stats.dedupedChunks++;
        return { id, stored: await inFlight };
      }
      let placed!: (at: Stored) => void;
      let failed!: (err: unknown) => void;
      const landing = new Promise<Stored>((resolve, reject) => {
        placed = resolve;
        failed = reject;
      });
      landing.catch(() => {}); // a repeat that awaits it sees the failure; the chunk itself rethrows it
      sealing.set(id, landing);
      try {
        // Stored by another VM or disk, or by an earlier attempt of this one: the index says where.
        // A quarantined chunk is always stored again (its indexed copies may be the damaged one).
        const elsewhere = o.healChunks?.has(id) ? undefined : (await repositoryIndex()).get(id);
        if (elsewhere?.pack) {
          stats.dedupedChunks++;
          const at = { pack: elsewhere.pack, offset: elsewhere.offset, length: elsewhere.length };
          placed(at);
          return remember(id, at);
        }
        // Sealed on a worker always, straight into the open pack: sealing on this thread too
        // (like the id) made the 2 GiB full backup slower (11.2 s against 9.6 s) and its peak
        // RSS 50 MiB higher, measured.
        const level = o.compressionLevel === undefined ? {} : { level: o.compressionLevel };
        const plain = buf;
        const at = await writer.place(id, (pack) => pool.sealSlot(o.keys, plain, length, id, level, pack));
        release(buf); // the plaintext is not needed for the upload
        stats.uploadedChunks++;
        stats.bytesUploaded += length;
        const where = { pack: { id: at.packId }, offset: at.offset, length: at.length };
        placed(where);
        return remember(id, where);
      } catch (err) {
        failed(err);
        throw err;
      } finally {
        sealing.delete(id);
      }
    } finally {
      release(buf);
    }
  };

  // Entries go to the manifest in disk order; chunks finish out of order, so a bounded
  // window of them waits here (the oldest is awaited when it is full).
  const window: { value?: Entry; done: boolean; wait?: Promise<Entry> }[] = [];
  const WINDOW = 4 * parallelism + 64;
  const emit = async (final = false) => {
    while (window.length > 0 && (window[0]!.done || final || window.length > WINDOW)) {
      const head = window.shift()!;
      const e = head.done ? head.value! : await head.wait!;
      const wait = manifest.add(
        e && {
          id: e.id,
          packId: e.stored.pack.id,
          offset: e.stored.offset,
          length: e.stored.length,
          ...(e.stored.pack.size !== undefined ? { packSize: e.stored.pack.size } : {}),
        },
      );
      if (wait) await wait;
    }
  };
  const settled = (value: Entry) => window.push({ value, done: true });

  const running = new Set<Promise<void>>();
  let failure: unknown;
  let finished = false;
  // Reads ahead: the next chunks are read (on libuv's threads) while this one is checked
  // and hashed here, so this thread does not wait out every read. Measured on the 2 GiB
  // incremental, where reading and hashing are most of the work: faster in each of 6
  // alternating pairs, 3.37 s against 3.60 s on average.
  const reads = new Map<number, Promise<SharedSlot>>();
  let nextRead = firstChunk;
  const readAhead = (upTo: number) => {
    for (; nextRead <= Math.min(upTo, endChunk - 1); nextRead++) {
      const i = nextRead;
      if (inHole(i) || unchanged(i) !== undefined) continue;
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, disk.sizeBytes - offset);
      const buf = takeSlot();
      const read = o.reader.read(buf.bytes, offset, length).then((n) => {
        if (n !== length) throw new Corrupt(`disk '${disk.diskId}' ended early: read ${n} of ${length} bytes at offset ${offset} (was the image truncated?)`);
        return buf;
      });
      read.catch(() => {}); // awaited in order below; one failing while another chunk fails is not unhandled
      reads.set(i, read);
    }
  };
  try {
    for (let i = firstChunk; i < endChunk; i++) {
      o.signal?.throwIfAborted();
      if (failure) break;
      // The parent's entries from the oldest chunk still in flight to the last read ahead.
      await parentChunks.cursor?.ensure(i + READ_AHEAD, i - window.length);
      readAhead(i + READ_AHEAD);
      const length = Math.min(chunkSize, disk.sizeBytes - i * chunkSize);
      stats.bytesScanned += length;
      const read = reads.get(i);
      const same = read || inHole(i) ? undefined : unchanged(i);
      if (same !== undefined) {
        // not changed since the parent: its chunk, unread
        stats.bytesUnchanged += length;
        if (same === null) {
          stats.zeroChunks++;
          stats.bytesZero += length;
        } else stats.parentChunks++;
        settled(same);
        await emit();
        progress(writer.bytesWritten);
        continue;
      }
      if (!read) {
        // a hole
        stats.zeroChunks++;
        stats.bytesZero += length;
        stats.bytesUnallocated += length;
        settled(null);
        await emit();
        progress(writer.bytesWritten);
        continue;
      }
      const buf = await read;
      reads.delete(i);
      stats.bytesRead += length;
      const slot: (typeof window)[number] = { done: false };
      const p = processChunk(i, buf, length).then((e) => {
        slot.value = e;
        slot.done = true;
        return e;
      });
      slot.wait = p;
      window.push(slot);
      const tracked: Promise<void> = p
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
      await emit();
      progress(writer.bytesWritten);
    }
    await Promise.allSettled(running);
    if (failure) throw failure;
    await writer.finish(); // every pack and its index landed: now the manifest's last pieces may name them
    await emit(true);
    const written = await manifest.finish();
    stats.bytesStored += writer.bytesWritten + written.bytes;
    finished = true;
  } catch (err) {
    failure ??= err;
  } finally {
    await Promise.allSettled(reads.values()); // no read may still be writing into a slot that is dropped below
    await Promise.allSettled(running);
    await parentChunks.cursor?.close();
    if (!finished) {
      await writer.abandon();
      await manifest.abandon(failure);
    }
    for (const slot of all) pool.unshare(slot); // the workers drop their references
  }
  if (failure) throw failure;
  const manifestKey = manifest.key;
  stats.seconds = (performance.now() - started) / 1000;
  return {
    diskId: disk.diskId,
    sizeBytes: disk.sizeBytes,
    manifestKey,
    stats,
    ...(seg ? { segment: seg } : {}),
    ...(tracking ? { changeTracking: tracking } : {}),
  };
}
