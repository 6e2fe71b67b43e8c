/**
 * Reads a manifest of any version as a stream of batches of consecutive chunks: version 3
 * piece by piece (one piece ahead fetched while the caller works on the current one),
 * versions 1 and 2 (one JSON document, read whole: they were only written for small disks)
 * sliced into batches of the same shape. No caller branches on the version.
 */
import { Corrupt } from '../../contracts/errors.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { decodeManifestDocument, objectKeys, open, type Manifest, type PackRef, type RepositoryKeys } from '../format.ts';
import type { ChunkLocation } from '../packs.ts';
import { checkHead, pieceKey, piecePurpose, type ManifestHead } from './head.ts';
import { MAX_PIECE_ENTRIES, Piece } from './piece.ts';

/** What a manifest says about itself. */
export interface ManifestInfo {
  /** 1: chunk objects; 2: one JSON document with packs; 3: streamed binary pieces. */
  version: 1 | 2 | 3;
  backupId: string;
  /** The manifest id (a disk's, or a segment's). */
  diskId: string;
  sizeBytes: number;
  chunkSize: number;
  /** The chunks it covers: `from` … `to - 1`. */
  from: number;
  to: number;
}

/** Consecutive chunks of a manifest: `firstChunk` … `firstChunk + count - 1`. */
export interface ManifestBatch {
  firstChunk: number;
  count: number;
  /** The packs this batch's chunks are in (possibly more). */
  packs: readonly PackRef[];
  /** The `i`th chunk's id (hex), null for a zero chunk. */
  id(i: number): string | null;
  /** Where the `i`th chunk is stored, undefined for a zero chunk. */
  location(i: number): ChunkLocation | undefined;
  /** Version 1: the stored object's base64 SHA-256, where the manifest kept it. */
  sha256?(i: number): string | undefined;
}

/** A piece of a version-3 manifest as its head names it: where it is and what it covers. */
export interface PieceInfo {
  key: string;
  owner: string;
  firstChunk: number;
  count: number;
  bytes: number;
}

export class ManifestReader {
  readonly info: ManifestInfo;
  /** The manifest object's key. */
  readonly key: string;
  /** The sealed bytes of the manifest object (the head, for version 3). */
  readonly headBytes: number;
  private readonly store: ObjectStore;
  private readonly keys: RepositoryKeys;
  private readonly head: ManifestHead | undefined;
  private readonly whole: Manifest | undefined;
  /** Decoded pieces `batchAt` keeps, by first chunk, least recently used first. */
  private readonly lru = new Map<number, Promise<ManifestBatch>>();
  /** How many decoded pieces `batchAt` keeps. */
  cachedPieces = 4;
  /** Versions 1 and 2: the whole document (read whole anyway). */
  get document(): Manifest | undefined {
    return this.whole;
  }

  private constructor(store: ObjectStore, keys: RepositoryKeys, key: string, headBytes: number, info: ManifestInfo, head?: ManifestHead, whole?: Manifest) {
    this.store = store;
    this.keys = keys;
    this.key = key;
    this.headBytes = headBytes;
    this.info = info;
    this.head = head;
    this.whole = whole;
  }

  /** Opens the manifest of `diskId` (or a segment's manifest id) in `backupId`; undefined when it does not exist. */
  static async open(store: ObjectStore, keys: RepositoryKeys, backupId: string, diskId: string): Promise<ManifestReader | undefined> {
    const key = objectKeys.manifest(backupId, diskId);
    const sealed = await store.get(key);
    return sealed && ManifestReader.fromSealed(store, keys, sealed, backupId, diskId);
  }

  /** The reader of a manifest object already fetched. */
  static async fromSealed(store: ObjectStore, keys: RepositoryKeys, sealed: Uint8Array, backupId: string, diskId: string): Promise<ManifestReader> {
    const key = objectKeys.manifest(backupId, diskId);
    let doc: Record<string, unknown>;
    try {
      doc = JSON.parse((await open(keys, sealed, `manifest:${backupId}/${diskId}`)).toString('utf8')) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof Corrupt) throw err;
      throw new Corrupt(`manifest ${backupId}/${diskId} is not valid JSON`, err);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Corrupt(`manifest ${backupId}/${diskId} is inconsistent: not a JSON object`);
    if (doc.version === 3) {
      const head = checkHead(doc, backupId, diskId);
      const info: ManifestInfo = { version: 3, backupId, diskId, sizeBytes: head.sizeBytes, chunkSize: head.chunkSize, from: head.from, to: head.to };
      return new ManifestReader(store, keys, key, sealed.length, info, head);
    }
    const m = decodeManifestDocument(doc, backupId, diskId);
    const info: ManifestInfo = { version: m.version, backupId, diskId, sizeBytes: m.sizeBytes, chunkSize: m.chunkSize, from: 0, to: m.chunks.length };
    return new ManifestReader(store, keys, key, sealed.length, info, undefined, m);
  }

  /** Version 3: the pieces, in disk order (JoinSegments joins them by reference). Versions 1 and 2 have none. */
  pieces(): PieceInfo[] {
    if (!this.head) return [];
    const h = this.head;
    return h.pieces.map(([owner, firstChunk, count, bytes]) => ({
      key: pieceKey(h.backupId, h.owners[owner]!, firstChunk),
      owner: h.owners[owner]!,
      firstChunk,
      count,
      bytes,
    }));
  }

  /** The batches from chunk `from` (default: the first) on, in disk order; `prefetch` pieces fetched ahead (default 1). */
  async *batches(opts: { from?: number; prefetch?: number } = {}): AsyncGenerator<ManifestBatch> {
    const from = Math.max(opts.from ?? this.info.from, this.info.from);
    if (this.whole) {
      yield* legacyBatches(this.whole, from);
      return;
    }
    const pieces = this.pieces().filter((p) => p.firstChunk + p.count > from);
    const prefetch = Math.max(0, opts.prefetch ?? 1);
    const loads: Promise<Piece>[] = [];
    let next = 0;
    const fill = () => {
      while (next < pieces.length && loads.length <= prefetch) {
        const load = this.readPiece(pieces[next++]!);
        load.catch(() => {}); // awaited in order below
        loads.push(load);
      }
    };
    fill();
    while (loads.length > 0) {
      const piece = await loads.shift()!;
      fill();
      yield pieceBatch(piece);
    }
  }

  /**
   * The batch holding chunk `chunk` (`from` <= chunk < `to`), for random access by offset
   * (the NBD export: chunk = offset / chunkSize): version 3's piece found by its first chunk
   * in the head, read once and kept in a small LRU of decoded pieces (`cachedPieces`, default
   * 4: about 3 MiB each), so memory stays bounded whatever the disk's size.
   */
  batchAt(chunk: number): Promise<ManifestBatch> {
    if (!Number.isSafeInteger(chunk) || chunk < this.info.from || chunk >= this.info.to) {
      return Promise.reject(
        new RangeError(`chunk ${chunk} is outside manifest ${this.info.backupId}/${this.info.diskId} (chunks ${this.info.from} to ${this.info.to - 1})`),
      );
    }
    if (this.whole) {
      const first = chunk - (chunk % MAX_PIECE_ENTRIES);
      return Promise.resolve(legacyBatch(this.whole, first));
    }
    const pieces = this.head!.pieces;
    let lo = 0;
    let hi = pieces.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (pieces[mid]![1] <= chunk) lo = mid;
      else hi = mid - 1;
    }
    const first = pieces[lo]![1];
    let batch = this.lru.get(first);
    if (batch) this.lru.delete(first);
    else {
      const [owner, firstChunk, count, bytes] = pieces[lo]!;
      const h = this.head!;
      batch = this.readPiece({ key: pieceKey(h.backupId, h.owners[owner]!, firstChunk), owner: h.owners[owner]!, firstChunk, count, bytes }).then(pieceBatch);
      batch.catch(() => this.lru.get(first) === batch && this.lru.delete(first)); // a failed read is tried again next time
    }
    this.lru.set(first, batch);
    while (this.lru.size > this.cachedPieces) this.lru.delete(this.lru.keys().next().value!);
    return batch;
  }

  /** Chunk `chunk`'s entry (see `batchAt`). */
  async entryAt(chunk: number): Promise<ManifestEntry> {
    const b = await this.batchAt(chunk);
    return { id: b.id(chunk - b.firstChunk), location: b.location(chunk - b.firstChunk) };
  }

  /** A cursor over its entries at increasing chunk numbers from chunk `from` (`ManifestCursor`). */
  cursor(from = 0): ManifestCursor {
    return new ManifestCursor(this, from);
  }

  /** The stored (non-zero) chunks it lists: one pass over its batches. */
  async storedChunks(): Promise<number> {
    let n = 0;
    for await (const b of this.batches()) for (let i = 0; i < b.count; i++) if (b.id(i) !== null) n++;
    return n;
  }

  /** Reads and checks one piece. */
  async readPiece(p: PieceInfo): Promise<Piece> {
    const sealed = await this.store.get(p.key);
    if (!sealed) throw new Corrupt(`manifest ${this.info.backupId}/${this.info.diskId} is damaged: its piece ${p.key} is missing`);
    const piece = Piece.decode(await open(this.keys, sealed, piecePurpose(p.key)), p.key);
    if (piece.firstChunk !== p.firstChunk || piece.count !== p.count) {
      throw new Corrupt(`manifest piece ${p.key} covers chunks ${piece.firstChunk}+${piece.count}, its manifest ${this.key} says ${p.firstChunk}+${p.count}`);
    }
    return piece;
  }
}

function pieceBatch(piece: Piece): ManifestBatch {
  return {
    firstChunk: piece.firstChunk,
    count: piece.count,
    packs: piece.packs,
    id: (i) => piece.id(i),
    location: (i) => {
      const w = piece.where(i);
      if (!w) return undefined;
      const pack = piece.packs[w.pack]!;
      return { pack, key: objectKeys.pack(pack.id), offset: w.offset, length: w.length };
    },
  };
}

/** A version-1 or -2 manifest, already decoded, in batches of the same bound as version 3's pieces. */
function* legacyBatches(m: Manifest, from: number): Generator<ManifestBatch> {
  for (let first = from; first < m.chunks.length; first += MAX_PIECE_ENTRIES) yield legacyBatch(m, first);
}

/** The batch of a version-1 or -2 manifest starting at chunk `firstChunk`. */
function legacyBatch(m: Manifest, firstChunk: number): ManifestBatch {
  const packs = m.packs ?? [];
  const id = (i: number) => m.chunks[firstChunk + i] ?? null;
  return {
    firstChunk,
    count: Math.min(MAX_PIECE_ENTRIES, m.chunks.length - firstChunk),
    packs,
    id,
    location: (i) => {
      const c = id(i);
      if (c === null) return undefined;
      const length = m.storedSizes[c]!;
      if (m.version === 1) return { key: objectKeys.chunk(c), offset: 0, length };
      const [p, offset] = m.locations![c]!;
      const pack = packs[p]!;
      return { pack, key: objectKeys.pack(pack.id), offset, length };
    },
    sha256: (i) => {
      const c = id(i);
      return c === null ? undefined : m.storedSha256?.[c];
    },
  };
}

/** One chunk of a manifest: its id (null for zeros) and where it is stored. */
export interface ManifestEntry {
  id: string | null;
  location: ChunkLocation | undefined;
}

/**
 * A manifest's entries at increasing chunk numbers (an incremental backup walks its
 * parent's manifest in step with the disk): the batches covering a window of chunks in
 * memory, the rest not read yet or dropped.
 */
export class ManifestCursor {
  private readonly it: AsyncGenerator<ManifestBatch>;
  private readonly held: ManifestBatch[] = [];
  private done = false;

  constructor(reader: ManifestReader, from = 0) {
    this.it = reader.batches({ from });
  }

  /** Reads batches until chunk `upTo` is covered (or the manifest ends), and drops those wholly before chunk `keepFrom` (default `upTo`). */
  async ensure(upTo: number, keepFrom = upTo): Promise<void> {
    while (this.held.length > 0 && keepFrom >= this.held[0]!.firstChunk + this.held[0]!.count) this.held.shift();
    for (;;) {
      const last = this.held[this.held.length - 1];
      if (this.done || (last && upTo < last.firstChunk + last.count)) return;
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (keepFrom < r.value.firstChunk + r.value.count) this.held.push(r.value);
    }
  }

  /** Chunk `i`'s entry when a batch read holds it (`ensure` first); undefined otherwise (past the end, or dropped). */
  get(i: number): ManifestEntry | undefined {
    for (const b of this.held) {
      if (i < b.firstChunk) return undefined;
      if (i < b.firstChunk + b.count) return { id: b.id(i - b.firstChunk), location: b.location(i - b.firstChunk) };
    }
    return undefined;
  }

  /** `ensure(i)` then `get(i)`: the entries before `i` are dropped. */
  async at(i: number): Promise<ManifestEntry | undefined> {
    await this.ensure(i);
    return this.get(i);
  }

  async close(): Promise<void> {
    await this.it.return(undefined);
  }
}
