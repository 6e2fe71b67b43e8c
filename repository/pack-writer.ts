/**
 * Filling packs (format in repository/packs.ts): chunks are sealed straight into a pack buffer
 * (pack-buffer.ts; by the chunk pool's workers, into buffers shared with them), each pack
 * is uploaded once it is closed and every chunk being sealed into it is placed, and index
 * objects list the packs written.
 */
import { Corrupt } from '../contracts/errors.ts';
import { objectKeys, type PackRef, type RepositoryKeys } from './format.ts';
import { objectCrc32, type ObjectStore } from '../core/object-store.ts';
import { MAX_INDEX_ENTRIES, MAX_PACK_BYTES, MAX_PACK_CHUNKS, newPackId, putIndexObject, type PackContents, type PackEntry } from './packs.ts';
import { packTrailer, trailerBytes } from './pack-trailer.ts';
import { reserved, resetPackBuffer, type PackBuffer, type Placement } from './pack-buffer.ts';

/** A pack's room past its target for the chunks in flight when it closes, at most, by default (see PackWriter). */
const MAX_HEADROOM_BYTES = 4 * 1024 * 1024;

/** A pack from the moment chunks may go into it until its buffer is free again. */
interface Pack<B extends PackBuffer> {
  id: string;
  buf: B;
  /** The chunks placed, in the order they were placed. */
  chunks: PackEntry[];
  /** Where the last placed chunk ends. */
  used: number;
  /** Chunks being sealed into it. */
  inFlight: number;
  /** No new chunk goes into it; it is uploaded once `inFlight` is 0. */
  closing: boolean;
  /** Its upload (or its drop) has begun. */
  settled: boolean;
}

export interface PackWriterOptions<B extends PackBuffer> {
  store: ObjectStore;
  keys: RepositoryKeys;
  /** A pack is closed once this many bytes are reserved in it (default 8 MiB); it holds slightly more, see `capacity`. */
  targetBytes?: number;
  /** The largest sealed chunk that will be placed (sizes the pack buffers). */
  maxChunkBytes: number;
  /** Chunks that may be being sealed into packs at once (default 8; sizes the pack buffers: see `capacity`). */
  maxInFlight?: number;
  /** The most room a pack has past its target for the chunks in flight when it closes (default 4 MiB; at least one chunk: see PackWriter). */
  maxHeadroomBytes?: number;
  /** Chunks in a pack at most (default MAX_PACK_CHUNKS, 4,096): a pack is closed at this many even below its target bytes. */
  maxChunks?: number;
  /** Bytes of each pack buffer kept for the trailer (default: a trailer of `maxChunks` chunks, ~160 KiB); a longer trailer is appended by a copy. */
  trailerRoom?: number;
  /** Packs uploading at once (default 2). */
  maxUploads?: number;
  /** At most this many packs between index objects (default 32; see `upload`), and one at `finish`. */
  packsPerIndex?: number;
  /** An index object is also stored once the packs not yet indexed list this many chunks (default MAX_INDEX_ENTRIES, 65,536). */
  entriesPerIndex?: number;
  /** Makes a pack buffer of `capacity` bytes (the chunk pool's `sharePack`, or pack-buffer.ts `newPackBuffer` to seal on this thread). */
  newBuffer: (capacity: number) => B;
  /** Called when a pack landed (after the index object listing it, when one was due), with `bytesWritten` so far. */
  onStored?: (bytesWritten: number) => void;
  /** Called when a pack landed, with its id and size (a streamed manifest waits for it: manifest/writer.ts). */
  onPack?: (pack: PackRef) => void;
  /** Keep every pack written and its chunks in `written` (default true); a long backup passes false, so memory does not grow with the disk. */
  keepWritten?: boolean;
}

/** Seals a chunk into a pack buffer (pack-buffer.ts `sealIntoPack`, or the chunk pool's `sealSlot`). */
export type Sealer<B extends PackBuffer> = (buf: B) => Placement | Promise<Placement>;

/**
 * Has chunks sealed straight into packs and uploads each pack (then, every few packs and
 * at the end, an index object listing them); nothing is copied on this thread but a
 * pack's trailer.
 *
 * `place` hands the open pack to a sealer, counting the chunks in flight per pack. A pack
 * takes a chunk while its cursor is below `targetBytes` and there is room for the chunk
 * and every other one in flight at their largest (`maxChunkBytes` each) within
 * `targetBytes` + headroom; else it is closed (no new chunk goes to it) and the chunk
 * goes to a new pack; a pack is closed too once it holds `maxChunks` (4,096) chunks, so
 * chunks that compress to a few dozen bytes make packs of a few hundred KiB, each with a
 * trailer that fits its room. The headroom is the chunks in flight at their largest, at most 4 MiB
 * (at least one chunk): with 512 KiB chunks and 8 in flight a pack closes at its target,
 * and with 4 MiB chunks after 3, so packs stay near their target and buffers bounded
 * whatever the chunk size. A closed pack is uploaded, its trailer after the last chunk
 * placed, once none of its chunks is in flight. Reserved bytes plus the largest size of
 * each chunk in flight never exceed the limit, so a chunk always fits; one that did not
 * (a sealer bigger than it said) is sealed again into the next pack.
 *
 * Memory: at most `maxUploads + 1` pack buffers of `capacity` bytes (target + headroom +
 * trailer room), reused: the one being filled, and closed ones being drained (chunks in
 * flight) or uploaded; a new pack opens only while at most `maxUploads` are closed, else
 * `place` waits for an upload to land. With the backup's defaults (8 MiB packs, 512 KiB
 * chunks, 8 in flight, 2 uploads): 3 × 12.2 MiB = 36.5 MiB, against 3 × 8.5 MiB + 8 × 512
 * KiB = 29.5 MiB when chunks were sealed into slots of their own and copied into packs;
 * the same 36.5 MiB at 4 MiB chunks. Pages are resident only once written. The entries of
 * packs not yet in an index object are held until it is stored: at most `entriesPerIndex`
 * (65,536) plus those of the packs still open.
 *
 * A chunk's location is known once it is placed; it may be referenced by a manifest only
 * after `finish` resolved. A seal that fails fails the writer, and the pack it was
 * sealing into (which may hold an unwritten gap) is never uploaded.
 */
export class PackWriter<B extends PackBuffer> {
  /** Bytes of each pack buffer. */
  readonly capacity: number;
  /** Reserved bytes plus the largest size of each chunk in flight stay within this (see the class comment). */
  private readonly limit: number;
  private readonly o: Required<Omit<PackWriterOptions<B>, 'onStored' | 'onPack'>> & Pick<PackWriterOptions<B>, 'onStored' | 'onPack'>;
  /** The pack chunks go to; never closing. */
  private current: Pack<B> | undefined;
  /** Closed packs still holding their buffer: draining, waiting for an upload slot, or uploading. */
  private readonly closed = new Set<Pack<B>>();
  private readonly spare: B[] = [];
  private readonly uploads = new Set<Promise<void>>();
  private sending = 0;
  private waiters: (() => void)[] = [];
  private unindexed: PackContents[] = [];
  /** Chunks the packs in `unindexed` list. */
  private unindexedEntries = 0;
  private failure: unknown;
  /** Every pack written (unless `keepWritten` is false), and the index objects. */
  readonly written: PackContents[] = [];
  /** Packs written. */
  packsWritten = 0;
  readonly indexes: string[] = [];
  bytesWritten = 0;

  constructor(o: PackWriterOptions<B>) {
    this.o = {
      targetBytes: 8 * 1024 * 1024,
      maxInFlight: 8,
      maxHeadroomBytes: MAX_HEADROOM_BYTES,
      maxUploads: 2,
      packsPerIndex: 32,
      entriesPerIndex: MAX_INDEX_ENTRIES,
      maxChunks: MAX_PACK_CHUNKS,
      keepWritten: true,
      ...o,
      trailerRoom: o.trailerRoom ?? trailerBytes(o.maxChunks ?? MAX_PACK_CHUNKS),
    };
    const { targetBytes, maxInFlight, maxChunkBytes, trailerRoom } = this.o;
    for (const [name, v, min] of [
      ['targetBytes', targetBytes, 1],
      ['maxInFlight', maxInFlight, 1],
      ['maxChunkBytes', maxChunkBytes, 1],
      ['trailerRoom', trailerRoom, 0],
      ['maxChunks', this.o.maxChunks, 1],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be a whole number of at least ${min}, got ${v}`);
    }
    this.limit = targetBytes + Math.max(maxChunkBytes, Math.min(maxInFlight * maxChunkBytes, this.o.maxHeadroomBytes));
    this.capacity = this.limit + trailerRoom;
    if (this.capacity > Math.min(2 ** 30, MAX_PACK_BYTES))
      throw new RangeError(`packs of ${targetBytes} bytes with ${maxInFlight} chunks of ${maxChunkBytes} in flight are too large`);
  }

  /**
   * Seals a chunk into the open pack with `seal` (again into the next pack when it did not
   * fit); the pack, the offset in it and the sealed length. Waits, when a new pack is due,
   * for a closed one to land while `maxUploads + 1` are closed (see Memory).
   */
  async place(id: string, seal: Sealer<B>): Promise<{ packId: string; offset: number; length: number }> {
    for (;;) {
      const p = await this.take();
      let placed: Placement;
      try {
        placed = await seal(p.buf);
      } catch (err) {
        this.failed(p, err);
        throw err;
      }
      p.inFlight--;
      if (placed.fit) {
        p.chunks.push({ id, offset: placed.offset, length: placed.sealedLength });
        p.used = Math.max(p.used, placed.offset + placed.sealedLength);
      }
      // Closed once its cursor reached the target (or a chunk did not fit: it is past the capacity), or it holds its most chunks.
      if (p === this.current && (reserved(p.buf) >= this.o.targetBytes || p.chunks.length >= this.o.maxChunks)) this.close(p);
      this.settle(p);
      if (placed.fit) return { packId: p.id, offset: placed.offset, length: placed.sealedLength };
      if (placed.sealedLength > p.buf.capacity)
        throw new RangeError(`chunk ${id} sealed to ${placed.sealedLength} bytes, more than the ${p.buf.capacity} a pack buffer holds`);
    }
  }

  /** The open pack, with one more chunk in flight: a new one when there is none or it reached its target. */
  private async take(): Promise<Pack<B>> {
    for (;;) {
      if (this.failure) throw this.failure;
      const p = this.current;
      if (
        p &&
        reserved(p.buf) < this.o.targetBytes &&
        reserved(p.buf) + (p.inFlight + 1) * this.o.maxChunkBytes <= this.limit &&
        p.chunks.length + p.inFlight < this.o.maxChunks
      ) {
        p.inFlight++;
        return p;
      }
      if (p) {
        this.close(p);
        this.settle(p);
      } else if (this.closed.size <= this.o.maxUploads) {
        this.current = {
          id: newPackId(),
          buf: this.spare.pop() ?? this.o.newBuffer(this.capacity),
          chunks: [],
          used: 0,
          inFlight: 0,
          closing: false,
          settled: false,
        };
      } else {
        await this.changed();
      }
    }
  }

  private close(p: Pack<B>): void {
    if (this.current === p) this.current = undefined;
    p.closing = true;
    this.closed.add(p);
  }

  /**
   * A seal into `p` failed, maybe after reserving its place (an unwritten gap): the writer
   * fails, so `p` is dropped, not uploaded, once no chunk is in flight into it.
   */
  private failed(p: Pack<B>, err: unknown): void {
    p.inFlight--;
    this.failure ??= err;
    this.close(p);
    this.settle(p);
    this.notify();
  }

  /** Uploads (or drops) `p` once it is closed and nothing is in flight into it; its buffer is then free. */
  private settle(p: Pack<B>): void {
    if (!p.closing || p.inFlight > 0 || p.settled) return;
    p.settled = true;
    const task = this.upload(p).finally(() => {
      this.closed.delete(p);
      resetPackBuffer(p.buf);
      this.spare.push(p.buf);
      this.uploads.delete(task);
      this.notify();
    });
    this.uploads.add(task);
  }

  private async upload(p: Pack<B>): Promise<void> {
    while (this.sending >= this.o.maxUploads && !this.failure) await this.changed();
    // After a failure (a seal's too) nothing more is uploaded: the backup writes no manifest.
    if (this.failure || p.chunks.length === 0) return;
    p.chunks.sort((a, b) => a.offset - b.offset);
    // Placed chunks lie back to back from 0 (pack-buffer.ts); anything else would upload unwritten bytes.
    let end = 0;
    for (const c of p.chunks) {
      if (c.offset !== end) {
        this.failure ??= new Corrupt(`pack ${p.id}: chunk ${c.id} was placed at byte ${c.offset}, the chunks before it end at ${end}`);
        return;
      }
      end += c.length;
    }
    const trailer = packTrailer(this.o.keys, p.id, p.chunks, p.used);
    let body: Buffer;
    if (p.used + trailer.length <= p.buf.capacity) {
      trailer.copy(p.buf.bytes, p.used);
      body = p.buf.bytes.subarray(0, p.used + trailer.length);
    } else {
      body = Buffer.concat([p.buf.bytes.subarray(0, p.used), trailer]);
    }
    const contents: PackContents = { pack: { id: p.id, size: body.length }, chunks: p.chunks };
    // The store checks the upload against its CRC-32 (see PutChecksum: the chunks in it are authenticated already).
    const crc32 = objectCrc32(body);
    this.sending++;
    try {
      await this.o.store.put(objectKeys.pack(p.id), body, { crc32 });
      this.bytesWritten += body.length;
      if (this.o.keepWritten) this.written.push(contents);
      this.packsWritten++;
      this.unindexed.push(contents);
      this.unindexedEntries += contents.chunks.length;
      this.o.onPack?.(contents.pack);
      // Index objects after 1, 2, 4, … packs, then every packsPerIndex: a writer that dies
      // early loses little (a retry finds the packs through the index), and a long disk
      // writes few index objects; and once they list entriesPerIndex chunks (an object's
      // size, and the entries held here, stay bounded whatever the chunks compress to).
      if (
        this.unindexed.length >= Math.min(this.o.packsPerIndex, Math.max(1, this.packsWritten - this.unindexed.length)) ||
        this.unindexedEntries >= this.o.entriesPerIndex
      )
        await this.writeIndex();
      else this.o.onStored?.(this.bytesWritten);
    } catch (err) {
      this.failure ??= err;
    } finally {
      this.sending--;
    }
  }

  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return;
    const packs = this.unindexed;
    this.unindexed = [];
    this.unindexedEntries = 0;
    const { indexId, bytes } = await putIndexObject(this.o.store, this.o.keys, packs);
    this.bytesWritten += bytes;
    this.o.onStored?.(this.bytesWritten);
    this.indexes.push(indexId);
  }

  /** Closes the open pack (when it holds a chunk), so it is uploaded once the chunks in flight into it are placed. */
  flush(): void {
    const p = this.current;
    if (!p || (p.chunks.length === 0 && p.inFlight === 0)) return;
    this.close(p);
    this.settle(p);
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }

  /**
   * Uploads the last pack (once its chunks in flight are placed: call it after every
   * `place` settled) and the index of what is not indexed yet; every pack written.
   */
  async finish(): Promise<PackContents[]> {
    if (this.current) {
      const p = this.current;
      this.close(p);
      this.settle(p);
    }
    while (this.closed.size > 0) await this.changed();
    if (this.failure) throw this.failure;
    await this.writeIndex();
    return this.written;
  }

  /** Uploads nothing more, waits for uploads in flight and drops the buffers (after a failure; call it once no seal is running). */
  async abandon(): Promise<void> {
    this.failure ??= new Error('the pack writer was abandoned');
    if (this.current) {
      const p = this.current;
      this.close(p);
      this.settle(p);
    }
    this.notify();
    await Promise.allSettled(this.uploads);
    this.spare.length = 0;
  }
}
