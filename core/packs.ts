/**
 * Repository format 2: chunks stored in packs (specified in core/REPOSITORY-FORMAT.md).
 *
 * A pack is one object holding many sealed chunks back to back (each the same envelope
 * as a format-1 chunk object, bound to its chunk id), then a sealed trailer listing them,
 * then the trailer's length: a pack describes itself, so the index can always be rebuilt
 * from the packs. An index object lists the chunks of the packs one writer stored; movers
 * load the repository's index to deduplicate across VMs, and readers use it to find
 * another copy of a chunk whose copy at its manifest's location is damaged.
 *
 * One pack of several MiB costs one PUT (and one GET per run of chunks read) where
 * format 1 cost one request per chunk: the per-request cost, not the bytes, bound the
 * throughput of format 1 (measured in REPOSITORY-FORMAT.md).
 */
import { randomBytes } from 'node:crypto';
import { mapLimit } from './concurrency.ts';
import { Corrupt } from './errors.ts';
import { keys as objectKeys, MANIFEST_VERSION, objectSha256, open, openSync, seal, sealSync, type Manifest, type PackRef, type RepositoryKeys } from './format.ts';
import type { ObjectStore } from './object-store.ts';

/** Where a chunk is stored: an object, and the bytes of it that are the chunk's envelope. */
export interface ChunkLocation {
  /** Its pack (format 2), or undefined for a format-1 chunk object. */
  pack?: PackRef;
  /** The object key: `packs/…` or `chunks/…`. */
  key: string;
  offset: number;
  length: number;
}

/** One chunk of a pack, as its trailer and the index list it. */
export interface PackEntry {
  id: string;
  offset: number;
  length: number;
}

export interface PackContents {
  pack: PackRef;
  chunks: PackEntry[];
}

const INDEX_MAGIC = 0x4c424958; // "LBIX"
const INDEX_VERSION = 2;
const PACK_ID_BYTES = 16;
const CHUNK_ID_BYTES = 32;
const ENTRY_BYTES = CHUNK_ID_BYTES + 4 + 4;
const PACK_HEAD_BYTES = PACK_ID_BYTES + 4 + 4;
/** Largest pack a writer makes (offsets are 32-bit). */
export const MAX_PACK_BYTES = 0xffff_ffff;

export const newPackId = (): string => randomBytes(PACK_ID_BYTES).toString('hex');

/**
 * The binary list of packs and their chunks that index objects and pack trailers hold:
 * "LBIX", version 2, pack count; per pack its 16-byte id, size and chunk count, then per
 * chunk its 32-byte id, offset and length (all integers unsigned 32-bit big-endian). About
 * 40 bytes per chunk, against ~110 as JSON.
 */
export function encodeIndex(packs: readonly PackContents[]): Buffer {
  const size = 9 + packs.reduce((n, p) => n + PACK_HEAD_BYTES + p.chunks.length * ENTRY_BYTES, 0);
  const out = Buffer.alloc(size);
  out.writeUInt32BE(INDEX_MAGIC, 0);
  out[4] = INDEX_VERSION;
  out.writeUInt32BE(packs.length, 5);
  let at = 9;
  for (const p of packs) {
    if (p.pack.size > MAX_PACK_BYTES) throw new RangeError(`pack ${p.pack.id} is ${p.pack.size} bytes, more than a pack may hold`);
    at += out.write(p.pack.id, at, PACK_ID_BYTES, 'hex');
    at = out.writeUInt32BE(p.pack.size, at);
    at = out.writeUInt32BE(p.chunks.length, at);
    for (const c of p.chunks) {
      at += out.write(c.id, at, CHUNK_ID_BYTES, 'hex');
      at = out.writeUInt32BE(c.offset, at);
      at = out.writeUInt32BE(c.length, at);
    }
  }
  return out;
}

/**
 * Checks `encodeIndex` output: anything malformed is Corrupt naming `what` and the problem.
 * Where each pack's head (its id) begins.
 */
function scanIndex(b: Buffer, what: string): number[] {
  const bad = (problem: string) => new Corrupt(`${what} is malformed: ${problem}`);
  if (b.length < 9 || b.readUInt32BE(0) !== INDEX_MAGIC) throw bad('no index header');
  if (b[4] !== INDEX_VERSION) throw bad(`index version ${b[4]}, this code reads ${INDEX_VERSION}`);
  const count = b.readUInt32BE(5);
  const heads: number[] = [];
  let at = 9;
  for (let p = 0; p < count; p++) {
    if (at + PACK_HEAD_BYTES > b.length) throw bad(`pack ${p} of ${count} is cut off at byte ${at}`);
    heads.push(at);
    const size = b.readUInt32BE(at + PACK_ID_BYTES);
    const n = b.readUInt32BE(at + PACK_ID_BYTES + 4);
    at += PACK_HEAD_BYTES;
    if (at + n * ENTRY_BYTES > b.length) throw bad(`pack ${b.toString('hex', heads[p]!, heads[p]! + PACK_ID_BYTES)} lists ${n} chunks, the index ends first`);
    for (let c = 0; c < n; c++) {
      const offset = b.readUInt32BE(at + CHUNK_ID_BYTES);
      const length = b.readUInt32BE(at + CHUNK_ID_BYTES + 4);
      if (offset + length > size) throw bad(`chunk ${c} of pack ${b.toString('hex', heads[p]!, heads[p]! + PACK_ID_BYTES)} ends at ${offset + length}, past the pack's ${size} bytes`);
      at += ENTRY_BYTES;
    }
  }
  if (at !== b.length) throw bad(`${b.length - at} bytes follow the last pack`);
  return heads;
}

/** Parses `encodeIndex` output; anything malformed is Corrupt naming `what` and the problem. */
export function decodeIndex(buf: Uint8Array, what: string): PackContents[] {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return scanIndex(b, what).map((head) => {
    const n = b.readUInt32BE(head + PACK_ID_BYTES + 4);
    const chunks: PackEntry[] = new Array(n);
    for (let c = 0, at = head + PACK_HEAD_BYTES; c < n; c++, at += ENTRY_BYTES) {
      chunks[c] = { id: b.toString('hex', at, at + CHUNK_ID_BYTES), offset: b.readUInt32BE(at + CHUNK_ID_BYTES), length: b.readUInt32BE(at + CHUNK_ID_BYTES + 4) };
    }
    return { pack: { id: b.toString('hex', head, head + PACK_ID_BYTES), size: b.readUInt32BE(head + PACK_ID_BYTES) }, chunks };
  });
}

/**
 * One index object as a mover keeps it: its checked binary plaintext (`encodeIndex`
 * format, 40 bytes per chunk, in a buffer of its own) and where each pack's entries begin.
 * Locations are read from the bytes when asked for.
 */
export class IndexListing {
  /** The plaintext, exactly (never a view of a larger buffer, which it would keep alive). */
  readonly bytes: Buffer;
  /** Per pack, the number of chunks listed before it; then the total (packs + 1 numbers). */
  readonly entryStart: Uint32Array;
  /** Per pack, the byte of `bytes` where its first chunk entry begins. */
  readonly firstEntryByte: Uint32Array;

  private constructor(bytes: Buffer, heads: readonly number[]) {
    this.bytes = bytes;
    this.entryStart = new Uint32Array(heads.length + 1);
    this.firstEntryByte = new Uint32Array(heads.length);
    let n = 0;
    for (const [p, head] of heads.entries()) {
      this.entryStart[p] = n;
      this.firstEntryByte[p] = head + PACK_HEAD_BYTES;
      n += bytes.readUInt32BE(head + PACK_ID_BYTES + 4);
    }
    this.entryStart[heads.length] = n;
  }

  /** Checks `encodeIndex` output as `decodeIndex` does (Corrupt naming `what`), and keeps a copy when `buf` is part of a larger buffer. */
  static parse(buf: Uint8Array, what: string): IndexListing {
    const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    const heads = scanIndex(view, what);
    const own = buf.byteOffset === 0 && buf.buffer.byteLength === buf.byteLength ? view : Buffer.from(new Uint8Array(buf).buffer);
    return new IndexListing(own, heads);
  }

  static of(packs: readonly PackContents[]): IndexListing {
    return IndexListing.parse(encodeIndex(packs), 'index');
  }

  /** Chunk entries listed (a chunk may be listed more than once). */
  get entries(): number {
    return this.entryStart[this.entryStart.length - 1]!;
  }

  get packs(): number {
    return this.firstEntryByte.length;
  }
}

/** Sealed index object for `indexId`. */
export function encodeIndexObject(keys: RepositoryKeys, indexId: string, packs: readonly PackContents[]): Promise<Buffer> {
  return seal(keys, encodeIndex(packs), `index:${indexId}`);
}

export async function decodeIndexObject(keys: RepositoryKeys, sealed: Uint8Array, indexId: string): Promise<PackContents[]> {
  return decodeIndex(await open(keys, sealed, `index:${indexId}`), `index object ${objectKeys.index(indexId)}`);
}

/** An index object, opened and checked as `decodeIndexObject` does, in the compact form a mover keeps. */
export async function openIndexObject(keys: RepositoryKeys, sealed: Uint8Array, indexId: string): Promise<IndexListing> {
  return IndexListing.parse(await open(keys, sealed, `index:${indexId}`), `index object ${objectKeys.index(indexId)}`);
}

/**
 * The trailer that ends a pack: the sealed index of this one pack, whose size field holds
 * where the trailer begins (the bytes of chunks before it), then the sealed trailer's
 * length, unsigned 32-bit big-endian.
 */
export function packTrailer(keys: RepositoryKeys, packId: string, chunks: readonly PackEntry[], chunkBytes: number): Buffer {
  const sealed = sealSync(keys, encodeIndex([{ pack: { id: packId, size: chunkBytes }, chunks: [...chunks] }]), `pack:${packId}`, { level: 1 });
  const out = Buffer.alloc(sealed.length + 4);
  sealed.copy(out);
  out.writeUInt32BE(sealed.length, sealed.length);
  return out;
}

/** The chunks a whole pack lists in its trailer (for rebuilding an index, and for replication). */
export function readPackTrailer(keys: RepositoryKeys, pack: Uint8Array, packId: string): PackContents {
  const b = Buffer.from(pack.buffer, pack.byteOffset, pack.byteLength);
  const what = `pack ${objectKeys.pack(packId)}`;
  if (b.length < 4) throw new Corrupt(`${what} is ${b.length} bytes, too short for a trailer`);
  const len = b.readUInt32BE(b.length - 4);
  if (len + 4 > b.length) throw new Corrupt(`${what}: its trailer claims ${len} bytes, the pack has ${b.length}`);
  const plain = openSync(keys, b.subarray(b.length - 4 - len, b.length - 4), `pack:${packId}`);
  const [contents, ...rest] = decodeIndex(plain, `the trailer of ${what}`);
  if (!contents || rest.length > 0 || contents.pack.id !== packId) throw new Corrupt(`${what}: its trailer does not describe this pack`);
  if (contents.pack.size !== b.length - 4 - len) throw new Corrupt(`${what}: its trailer begins at byte ${b.length - 4 - len}, it says ${contents.pack.size}`);
  return { pack: { id: packId, size: b.length }, chunks: contents.chunks };
}

/** Where each chunk of `m` is. Format 1: its own object; format 2: a range of a pack. */
export function chunkLocation(m: Manifest, id: string): ChunkLocation {
  const length = m.storedSizes[id];
  if (length === undefined) throw new Corrupt(`manifest ${m.backupId}/${m.diskId} does not reference chunk ${id}`);
  if (m.version === 1) return { key: objectKeys.chunk(id), offset: 0, length };
  const at = m.locations![id]!;
  const pack = m.packs![at[0]]!;
  return { pack, key: objectKeys.pack(pack.id), offset: at[1], length };
}

/**
 * The stored envelope of a chunk at `loc`: a range GET of its pack, or the whole chunk
 * object; undefined when the object is missing. A short read is Corrupt.
 */
export async function readChunk(store: ObjectStore, loc: ChunkLocation, into?: Uint8Array): Promise<Buffer | undefined> {
  const body = await store.get(loc.key, { ...(into ? { into } : {}), ...(loc.pack ? { range: { offset: loc.offset, length: loc.length } } : {}) });
  if (body && loc.pack && body.length !== loc.length) throw new Corrupt(`${loc.key} bytes ${loc.offset}+${loc.length}: read ${body.length} bytes (the pack is shorter than its manifest says)`);
  return body;
}

/** Reads that fetch a run of neighbouring chunks of one pack with one GET. */
export interface ReadRun {
  key: string;
  packed: boolean;
  offset: number;
  length: number;
  /** The chunks in the run: their id and where each starts within the run. */
  chunks: { id: string; at: number; length: number }[];
}

/**
 * A format-2 manifest for `chunks` (disk order, null for zeros), asking `locate` where each
 * referenced chunk is; packs are listed in the order first referenced.
 */
export function packedManifest(base: Pick<Manifest, 'backupId' | 'diskId' | 'sizeBytes' | 'chunkSize'>, chunks: (string | null)[], locate: (id: string) => ChunkLocation): Manifest {
  const m: Manifest = { version: MANIFEST_VERSION, ...base, chunks, storedSizes: {}, packs: [], locations: {} };
  const packIndex = new Map<string, number>();
  for (const id of chunks) {
    if (id === null || m.storedSizes[id] !== undefined) continue;
    const at = locate(id);
    if (!at.pack) throw new Corrupt(`chunk ${id} of disk '${base.diskId}' is not in a pack (${at.key})`);
    let p = packIndex.get(at.pack.id);
    if (p === undefined) {
      packIndex.set(at.pack.id, (p = m.packs!.length));
      m.packs!.push({ id: at.pack.id, size: at.pack.size });
    }
    m.storedSizes[id] = at.length;
    m.locations![id] = [p, at.offset];
  }
  return m;
}

/**
 * Groups chunk reads into runs: chunks of one pack that lie within `maxGap` bytes of each
 * other are read by one range GET of at most `maxBytes` (format-1 chunks: one GET each).
 * Runs come in pack order, so a restore reads each pack front to back.
 */
export function planReads(m: Manifest, ids: Iterable<string>, opts: { maxBytes?: number; maxGap?: number } = {}): ReadRun[] {
  const maxBytes = opts.maxBytes ?? 4 * 1024 * 1024;
  const maxGap = opts.maxGap ?? 64 * 1024;
  const locs = [...ids].map((id) => ({ id, loc: chunkLocation(m, id) }));
  locs.sort((a, b) => (a.loc.key < b.loc.key ? -1 : a.loc.key > b.loc.key ? 1 : a.loc.offset - b.loc.offset));
  const runs: ReadRun[] = [];
  let run: ReadRun | undefined;
  for (const { id, loc } of locs) {
    const end = loc.offset + loc.length;
    if (run && loc.pack && run.packed && run.key === loc.key && loc.offset - (run.offset + run.length) <= maxGap && loc.offset >= run.offset && end - run.offset <= maxBytes) {
      run.length = Math.max(run.length, end - run.offset);
      run.chunks.push({ id, at: loc.offset - run.offset, length: loc.length });
      continue;
    }
    run = { key: loc.key, packed: !!loc.pack, offset: loc.offset, length: loc.length, chunks: [{ id, at: 0, length: loc.length }] };
    runs.push(run);
  }
  return runs;
}

/** How full the index's hash table is at most: chunk entries per slot (as full when no chunk is listed twice). */
const TABLE_LOAD = 0.7;
/** Holds a looked-up id's bytes (lookups are synchronous). */
const wanted = Buffer.alloc(CHUNK_ID_BYTES);

const u32 = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

/** The slot where the probe for an id with these first 8 bytes begins (ids are HMAC output, mixed anyway). */
function slotOf(k0: number, k1: number, slots: number): number {
  let h = Math.imul(k0 ^ Math.imul(k1, 0x85ebca6b), 0xcc9e2d51);
  h ^= h >>> 15;
  return ((h >>> 0) * slots / 4294967296) >>> 0;
}

/** The last position of sorted `a` whose value is <= `x` (-1: none). */
function lastAtMost(a: Uint32Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/**
 * The repository's index: every chunk the index objects list, by id. Loaded by a mover
 * before a backup (deduplication across VMs and disks) and by readers that need another
 * copy of a damaged chunk.
 *
 * Compact (a mover's memory is small, a repository may list millions of chunks): the index
 * objects' binary plaintexts (40 bytes per chunk) and an open-addressing hash table over
 * them (linear probing; per slot the id's first 4 bytes and its entry number), about 55
 * bytes per chunk in all (bench/index-memory.ts). Entries are numbered in the order the
 * objects, their packs and chunks come. A chunk listed more than once has one slot, its
 * first entry; the later copies are in a sorted list of (first entry, copy) pairs.
 * Locations are made when asked for.
 */
export class RepositoryIndex {
  /** How many index objects it was made of. */
  readonly objects: number;
  /** Distinct chunks listed. */
  readonly size: number;
  private readonly listings: readonly IndexListing[];
  /** Per listing, the number of entries before it; then the total. */
  private readonly firstEntry: Uint32Array;
  private readonly slots: number;
  /** Two numbers per slot: the id's first 4 bytes, and its first entry + 1 (0: an empty slot). */
  private readonly table: Uint32Array;
  /** Later copies: (first entry, copy entry) pairs sorted by first entry, then copy. */
  private readonly copyOf: Uint32Array;
  private readonly copy: Uint32Array;

  private constructor(listings: readonly IndexListing[]) {
    this.listings = listings;
    this.objects = listings.length;
    this.firstEntry = new Uint32Array(listings.length + 1);
    let total = 0;
    for (const [i, l] of listings.entries()) {
      this.firstEntry[i] = total;
      total += l.entries;
    }
    if (total >= 0xffff_fffe) throw new RangeError(`the index objects list ${total} chunks, more than an index holds`);
    this.firstEntry[listings.length] = total;
    this.slots = Math.max(1, Math.ceil(total / TABLE_LOAD));
    this.table = new Uint32Array(this.slots * 2);
    const pairs: number[] = [];
    let distinct = 0;
    let e = 0;
    const { table, slots } = this;
    for (const l of listings) {
      const b = l.bytes;
      for (let p = 0; p < l.packs; p++) {
        const n = l.entryStart[p + 1]! - l.entryStart[p]!;
        for (let c = 0, at = l.firstEntryByte[p]!; c < n; c++, at += ENTRY_BYTES, e++) {
          const k0 = u32(b, at);
          let s = slotOf(k0, u32(b, at + 4), slots);
          for (;;) {
            const held = table[2 * s + 1]!;
            if (held === 0) {
              table[2 * s] = k0;
              table[2 * s + 1] = e + 1;
              distinct++;
              break;
            }
            if (table[2 * s] === k0 && this.idAt(held - 1, b, at)) {
              pairs.push(held - 1, e);
              break;
            }
            if (++s === slots) s = 0;
          }
        }
      }
    }
    this.size = distinct;
    // Sorted by first entry; pairs of one first entry were pushed in copy order, and the sort is stable.
    const order = Array.from({ length: pairs.length / 2 }, (_, i) => i).sort((x, y) => pairs[2 * x]! - pairs[2 * y]!);
    this.copyOf = new Uint32Array(order.length);
    this.copy = new Uint32Array(order.length);
    for (const [i, o] of order.entries()) {
      this.copyOf[i] = pairs[2 * o]!;
      this.copy[i] = pairs[2 * o + 1]!;
    }
  }

  static empty(): RepositoryIndex {
    return new RepositoryIndex([]);
  }

  /** Lists `index/` and reads every index object (`parallelism` at once). */
  static load(store: ObjectStore, keys: RepositoryKeys, parallelism = 8): Promise<RepositoryIndex> {
    return new IndexCache(store, keys, parallelism).refresh();
  }

  /** An index of the packs that index objects list, one listing (or list of packs) per index object. */
  static of(objects: Iterable<IndexListing | readonly PackContents[]>): RepositoryIndex {
    return new RepositoryIndex(Array.from(objects, (o) => (o instanceof IndexListing ? o : IndexListing.of(o))));
  }

  /** A location of chunk `id` (its first listed copy), or undefined when no index object lists it. */
  get(id: string): ChunkLocation | undefined {
    const e = this.find(id);
    return e < 0 ? undefined : this.location(e);
  }

  /** Every location of chunk `id` (several when writers stored it more than once), in the order listed. */
  all(id: string): ChunkLocation[] {
    const e = this.find(id);
    if (e < 0) return [];
    const out = [this.location(e)];
    for (let i = lastAtMost(this.copyOf, e - 1) + 1; i < this.copyOf.length && this.copyOf[i] === e; i++) out.push(this.location(this.copy[i]!));
    return out;
  }

  /** The first entry of chunk `id`, or -1. */
  private find(id: string): number {
    if (typeof id !== 'string' || id.length !== 2 * CHUNK_ID_BYTES || wanted.write(id, 'hex') !== CHUNK_ID_BYTES) return -1;
    const { table, slots } = this;
    const k0 = u32(wanted, 0);
    for (let s = slotOf(k0, u32(wanted, 4), slots); ; ) {
      const held = table[2 * s + 1]!;
      if (held === 0) return -1;
      if (table[2 * s] === k0 && this.idAt(held - 1, wanted, 0)) return held - 1;
      if (++s === slots) s = 0;
    }
  }

  /** Which listing and pack entry `e` is in, and the byte where its entry begins. */
  private entry(e: number): { listing: IndexListing; pack: number; at: number } {
    const i = lastAtMost(this.firstEntry, e);
    const listing = this.listings[i]!;
    const local = e - this.firstEntry[i]!;
    const pack = lastAtMost(listing.entryStart, local);
    return { listing, pack, at: listing.firstEntryByte[pack]! + (local - listing.entryStart[pack]!) * ENTRY_BYTES };
  }

  /** Whether entry `e` is of the id at `b[at..]`. */
  private idAt(e: number, b: Uint8Array, at: number): boolean {
    const { listing, at: entryAt } = this.entry(e);
    return listing.bytes.compare(b, at, at + CHUNK_ID_BYTES, entryAt, entryAt + CHUNK_ID_BYTES) === 0;
  }

  private location(e: number): ChunkLocation {
    const { listing, pack, at } = this.entry(e);
    const b = listing.bytes;
    const head = listing.firstEntryByte[pack]! - PACK_HEAD_BYTES;
    const id = b.toString('hex', head, head + PACK_ID_BYTES);
    return { pack: { id, size: b.readUInt32BE(head + PACK_ID_BYTES) }, key: objectKeys.pack(id), offset: b.readUInt32BE(at + CHUNK_ID_BYTES), length: b.readUInt32BE(at + CHUNK_ID_BYTES + 4) };
  }
}

/**
 * A mover's copy of one repository's index, brought up to date before each use: it lists
 * `index/` (one request per 1,000 objects) and reads only the index objects it has not
 * read before, and forgets those that are gone (garbage collection rewrote them). So a
 * mover's second backup into a repository reads just the index objects written since.
 * It keeps each object's checked plaintext (IndexListing, ~42 bytes per chunk); each
 * refresh builds a new RepositoryIndex over them (its hash table, ~12 bytes per chunk;
 * ~0.3 s for 2 million chunks). Refreshes asked for while one runs share it.
 */
export class IndexCache {
  private readonly store: ObjectStore;
  private readonly keys: RepositoryKeys;
  private readonly parallelism: number;
  private readonly read = new Map<string, IndexListing>();
  private running: Promise<RepositoryIndex> | undefined;
  /** Index objects read by the last refresh. */
  lastRead = 0;

  constructor(store: ObjectStore, keys: RepositoryKeys, parallelism = 8) {
    this.store = store;
    this.keys = keys;
    this.parallelism = parallelism;
  }

  refresh(): Promise<RepositoryIndex> {
    this.running ??= this.load().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async load(): Promise<RepositoryIndex> {
    const listed = new Set<string>();
    for await (const o of this.store.list('index/')) listed.add(o.key.slice('index/'.length));
    for (const id of this.read.keys()) if (!listed.has(id)) this.read.delete(id);
    const fresh = [...listed].filter((id) => !this.read.has(id));
    await mapLimit(fresh, this.parallelism, async (indexId) => {
      const sealed = await this.store.get(objectKeys.index(indexId));
      if (sealed) this.read.set(indexId, await openIndexObject(this.keys, sealed, indexId)); // gone: rewritten meanwhile
    });
    this.lastRead = fresh.length;
    return RepositoryIndex.of(this.read.values());
  }
}

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
    // One SHA-256 of the pack: the store checks the upload against it (and signs it, instead of hashing the body again).
    const sha256 = objectSha256(body);
    const upload = (async () => {
      try {
        await this.o.store.put(objectKeys.pack(p.id), body, sha256);
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
    const indexId = randomBytes(16).toString('hex');
    const sealed = await encodeIndexObject(this.o.keys, indexId, packs);
    await this.o.store.put(objectKeys.index(indexId), sealed, objectSha256(sealed));
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
