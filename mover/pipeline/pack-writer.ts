/**
 * Filling packs (format in core/packs.ts): sealed chunks are appended to a pack buffer,
 * each full pack is uploaded, and index objects list the packs written.
 */
import { keys as objectKeys, objectCrc32, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { encodeIndexObject, MAX_PACK_BYTES, newIndexId, newPackId, packTrailer, type PackContents, type PackEntry } from '../../core/packs.ts';

/** A pack being filled: its buffer, and the chunks in it so far. */
interface OpenPack {
  id: string;
  buf: Buffer;
  used: number;
  chunks: PackEntry[];
}

export interface PackWriterOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  /** A pack is closed once it holds this many bytes of chunks (default 8 MiB). */
  targetBytes?: number;
  /** The largest sealed chunk that will be added (sizes the pack buffers). */
  maxChunkBytes: number;
  /** Packs uploading at once; `add` waits beyond (default 2). */
  maxUploads?: number;
  /** At most this many packs between index objects (default 32; see `close`), and one at `finish`. */
  packsPerIndex?: number;
  /** Called when a pack landed (after the index object listing it, when one was due), with `bytesWritten` so far. */
  onStored?: (bytesWritten: number) => void;
}

/**
 * Appends sealed chunks to packs and uploads each full pack (then, every few packs and at
 * the end, an index object listing them). A chunk's location is known when it is added;
 * it may be referenced by a manifest only after `finish` resolved. Memory: at most
 * `maxUploads + 1` pack buffers, reused.
 */
export class PackWriter {
  private readonly o: Required<Omit<PackWriterOptions, 'maxChunkBytes' | 'onStored'>> & Pick<PackWriterOptions, 'maxChunkBytes' | 'onStored'>;
  private current: OpenPack | undefined;
  private readonly spare: Buffer[] = [];
  private readonly uploads = new Set<Promise<void>>();
  private unindexed: PackContents[] = [];
  private failure: unknown;
  /** Every pack written, and the index objects. */
  readonly written: PackContents[] = [];
  readonly indexes: string[] = [];
  bytesWritten = 0;

  constructor(o: PackWriterOptions) {
    this.o = { targetBytes: 8 * 1024 * 1024, maxUploads: 2, packsPerIndex: 32, ...o };
    if (this.o.targetBytes + this.o.maxChunkBytes > MAX_PACK_BYTES / 2) throw new RangeError(`packs of ${this.o.targetBytes} bytes are too large`);
  }

  /** Copies a sealed chunk into the open pack; the pack and the offset in it. */
  async add(id: string, sealed: Uint8Array): Promise<{ packId: string; offset: number }> {
    if (this.failure) throw this.failure;
    if (sealed.length > this.o.maxChunkBytes) throw new RangeError(`chunk ${id} sealed to ${sealed.length} bytes, more than the ${this.o.maxChunkBytes} a pack slot holds`);
    // A loop: other adds run while this one waits in close() for an upload slot, and may
    // have filled the next pack meanwhile (it must not grow past its buffer).
    while (this.current && this.current.used + sealed.length > this.o.targetBytes) await this.close();
    if (this.failure) throw this.failure;
    const p = (this.current ??= { id: newPackId(), buf: this.spare.pop() ?? Buffer.allocUnsafe(this.o.targetBytes + this.o.maxChunkBytes), used: 0, chunks: [] });
    const offset = p.used;
    p.buf.set(sealed, offset);
    p.used += sealed.length;
    p.chunks.push({ id, offset, length: sealed.length });
    return { packId: p.id, offset };
  }

  private async close(): Promise<void> {
    const p = this.current;
    if (!p) return;
    this.current = undefined;
    while (this.uploads.size >= this.o.maxUploads) await Promise.race(this.uploads);
    if (this.failure) throw this.failure;
    const trailer = packTrailer(this.o.keys, p.id, p.chunks, p.used);
    let body: Buffer;
    if (p.used + trailer.length <= p.buf.length) {
      trailer.copy(p.buf, p.used);
      body = p.buf.subarray(0, p.used + trailer.length);
    } else {
      body = Buffer.concat([p.buf.subarray(0, p.used), trailer]);
    }
    const contents: PackContents = { pack: { id: p.id, size: body.length }, chunks: p.chunks };
    // The store checks the upload against its CRC-32 (see PutChecksum: the chunks in it are authenticated already).
    const crc32 = objectCrc32(body);
    const upload = (async () => {
      try {
        await this.o.store.put(objectKeys.pack(p.id), body, { crc32 });
        this.bytesWritten += body.length;
        this.written.push(contents);
        this.unindexed.push(contents);
        // Index objects after 1, 2, 4, … packs, then every packsPerIndex: a writer that dies
        // early loses little (a retry finds the packs through the index), and a long disk
        // writes few index objects.
        if (this.unindexed.length >= Math.min(this.o.packsPerIndex, Math.max(1, this.written.length - this.unindexed.length))) await this.writeIndex();
        else this.o.onStored?.(this.bytesWritten);
      } catch (err) {
        this.failure ??= err;
      } finally {
        this.spare.push(p.buf);
      }
    })();
    this.uploads.add(upload);
    void upload.finally(() => this.uploads.delete(upload));
  }

  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return;
    const packs = this.unindexed;
    this.unindexed = [];
    const indexId = newIndexId();
    const sealed = await encodeIndexObject(this.o.keys, indexId, packs);
    await this.o.store.put(objectKeys.index(indexId), sealed, { crc32: objectCrc32(sealed) });
    this.bytesWritten += sealed.length;
    this.o.onStored?.(this.bytesWritten);
    this.indexes.push(indexId);
  }

  /** Uploads the last pack and the index of what is not indexed yet; every pack written. */
  async finish(): Promise<PackContents[]> {
    await this.close();
    await Promise.allSettled(this.uploads);
    if (this.failure) throw this.failure;
    await this.writeIndex();
    return this.written;
  }

  /** Waits for uploads in flight and drops the buffers (after a failure). */
  async abandon(): Promise<void> {
    this.current = undefined;
    await Promise.allSettled(this.uploads);
    this.spare.length = 0;
  }
}
