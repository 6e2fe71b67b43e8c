/**
 * Writes a manifest in format 3 as a stream: entries come in disk order, each full piece
 * (piece.ts) is sealed and stored as soon as the packs it names have landed (their sizes
 * are in its pack table), and the head (head.ts) is stored last, by `finish`. Memory: the
 * piece being filled and at most `maxPending` full ones waiting for their packs or their
 * upload, whatever the disk's size.
 */
import { Corrupt } from '../../contracts/errors.ts';
import { objectCrc32, type ObjectStore } from '../../core/object-store.ts';
import { objectKeys, seal, type RepositoryKeys } from '../format.ts';
import { pieceKey, piecePurpose, type ManifestHead, type PieceRef } from './head.ts';
import { MAX_PIECE_ENTRIES, PieceBuilder } from './piece.ts';

export interface ManifestWriterOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  /** The manifest id: the disk's id, or a segment's. */
  manifestId: string;
  sizeBytes: number;
  chunkSize: number;
  /** The chunks it covers (default: the whole disk). */
  from?: number;
  to?: number;
  /** Entries per piece (default and most: MAX_PIECE_ENTRIES). */
  pieceEntries?: number;
  /** Full pieces held at most before `add` asks its caller to wait (default 2). */
  maxPending?: number;
  /**
   * Called when the writer waits for packs to land: the pack writer should close and upload
   * its open pack, or a piece naming it would wait for chunks that are never placed.
   */
  flushPacks?: () => void;
}

/** Sizes of packs that landed, remembered for the pieces still being filled (bounded). */
const REMEMBERED_PACKS = 65_536;

interface Waiter {
  resolve: (size: number) => void;
  reject: (err: unknown) => void;
}

export class ManifestWriter {
  private readonly o: Required<Omit<ManifestWriterOptions, 'flushPacks'>> & Pick<ManifestWriterOptions, 'flushPacks'>;
  /** The chunk the next `add` is for. */
  next: number;
  private piece: PieceBuilder | undefined;
  private readonly refs: PieceRef[] = [];
  private readonly sizes = new Map<string, number>();
  private readonly waiting = new Map<string, Waiter[]>();
  private readonly uploads = new Set<Promise<void>>();
  private failure: unknown;
  /** Sealed bytes stored: pieces and head. */
  bytesWritten = 0;

  constructor(o: ManifestWriterOptions) {
    const to = o.to ?? Math.ceil(o.sizeBytes / o.chunkSize);
    this.o = { from: 0, pieceEntries: MAX_PIECE_ENTRIES, maxPending: 2, ...o, to };
    if (!(this.o.from <= to && to <= Math.ceil(o.sizeBytes / o.chunkSize)))
      throw new RangeError(`chunks ${this.o.from} to ${to} of a disk of ${o.sizeBytes} bytes`);
    this.next = this.o.from;
  }

  /** The head's key. */
  get key(): string {
    return objectKeys.manifest(this.o.backupId, this.o.manifestId);
  }

  /** A pack landed with `size` bytes: pieces naming it can be stored. */
  packLanded(packId: string, size: number): void {
    this.sizes.set(packId, size);
    if (this.sizes.size > REMEMBERED_PACKS) this.sizes.delete(this.sizes.keys().next().value!);
    for (const w of this.waiting.get(packId) ?? []) w.resolve(size);
    this.waiting.delete(packId);
  }

  /**
   * The next chunk's entry: null for a zero chunk, else where it is stored (`packSize`
   * when known: a pack of the parent's or the index's; else `packLanded` tells it). A
   * promise when the caller should wait before adding more (full pieces are waiting).
   */
  add(entry: { id: string; packId: string; offset: number; length: number; packSize?: number } | null): Promise<void> | undefined {
    if (this.failure) throw this.failure;
    if (this.next >= this.o.to) throw new RangeError(`manifest ${this.key} covers chunks up to ${this.o.to}: no room for chunk ${this.next}`);
    const piece = (this.piece ??= new PieceBuilder(this.next, Math.min(this.o.pieceEntries, this.o.to - this.next)));
    if (entry === null) piece.addZero();
    else {
      piece.add(entry.id, entry.packId, entry.offset, entry.length);
      if (entry.packSize !== undefined && !this.sizes.has(entry.packId)) this.packLanded(entry.packId, entry.packSize);
    }
    this.next++;
    if (!piece.full) return undefined;
    this.piece = undefined;
    this.store(piece);
    if (this.uploads.size <= this.o.maxPending) return undefined;
    this.o.flushPacks?.();
    return Promise.race(this.uploads).then(() => (this.failure ? Promise.reject(this.failure) : undefined));
  }

  private store(piece: PieceBuilder): void {
    const ref: PieceRef = [0, piece.firstChunk, piece.count, 0];
    this.refs.push(ref);
    const task = (async () => {
      const sizes = await Promise.all(piece.packs.map((id) => this.sizeOf(id)));
      const key = pieceKey(this.o.backupId, this.o.manifestId, piece.firstChunk);
      const sealed = await seal(this.o.keys, piece.encode(sizes), piecePurpose(key));
      await this.o.store.put(key, sealed, { crc32: objectCrc32(sealed) });
      ref[3] = sealed.length;
      this.bytesWritten += sealed.length;
    })()
      .catch((err: unknown) => {
        this.fail(err);
      })
      .finally(() => this.uploads.delete(task));
    this.uploads.add(task);
  }

  private sizeOf(packId: string): number | Promise<number> {
    const known = this.sizes.get(packId);
    if (known !== undefined) return known;
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const list = this.waiting.get(packId) ?? [];
      list.push({ resolve, reject });
      this.waiting.set(packId, list);
    });
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    for (const list of this.waiting.values()) for (const w of list) w.reject(this.failure);
    this.waiting.clear();
  }

  /** Stores the last piece and then the head, once every chunk it covers was added; the head's key and its sealed bytes and the pieces'. */
  async finish(): Promise<{ key: string; bytes: number }> {
    if (this.next !== this.o.to) throw new Corrupt(`manifest ${this.key} got entries up to chunk ${this.next}, it covers up to ${this.o.to}`);
    if (this.piece) this.store(this.piece);
    this.piece = undefined;
    while (this.uploads.size > 0) {
      if (this.failure) break;
      const pending = [...this.uploads];
      // A piece still waiting for a pack that will never land would wait forever: name it.
      if (this.waiting.size > 0 && pending.length > 0) this.o.flushPacks?.();
      await Promise.race(pending);
    }
    if (this.failure) throw this.failure;
    const head: ManifestHead = {
      version: 3,
      backupId: this.o.backupId,
      diskId: this.o.manifestId,
      sizeBytes: this.o.sizeBytes,
      chunkSize: this.o.chunkSize,
      from: this.o.from,
      to: this.o.to,
      owners: [this.o.manifestId],
      pieces: this.refs,
    };
    const bytes = await putHead(this.o.store, this.o.keys, head);
    this.bytesWritten += bytes;
    return { key: this.key, bytes: this.bytesWritten };
  }

  /** Stops: waits for uploads in flight, stores nothing more (the head never). */
  async abandon(err: unknown = new Error('the manifest writer was abandoned')): Promise<void> {
    this.fail(err);
    await Promise.allSettled([...this.uploads]);
  }
}

/** Seals and stores a version-3 head; its sealed size. */
export async function putHead(store: ObjectStore, keys: RepositoryKeys, head: ManifestHead): Promise<number> {
  const sealed = await seal(keys, Buffer.from(JSON.stringify(head)), `manifest:${head.backupId}/${head.diskId}`);
  await store.put(objectKeys.manifest(head.backupId, head.diskId), sealed, { crc32: objectCrc32(sealed) });
  return sealed.length;
}
