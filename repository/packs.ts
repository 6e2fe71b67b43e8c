/**
 * Repository format 2: chunks stored in packs (specified in repository/REPOSITORY-FORMAT.md).
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
import { Corrupt } from '../contracts/errors.ts';
import { objectKeys, open, seal, type Manifest, type PackRef, type RepositoryKeys } from './format.ts';
import { objectCrc32, type ObjectStore } from '../core/object-store.ts';

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

/** The layout of `encodeIndex` output (also read in place by repository-index.ts). */
const INDEX_MAGIC = 0x4c424958; // "LBIX"
const INDEX_VERSION = 2;
export const PACK_ID_BYTES = 16;
export const CHUNK_ID_BYTES = 32;
export const ENTRY_BYTES = CHUNK_ID_BYTES + 4 + 4;
export const PACK_HEAD_BYTES = PACK_ID_BYTES + 4 + 4;
/** Largest pack a writer makes (offsets are 32-bit). */
export const MAX_PACK_BYTES = 0xffff_ffff;
/**
 * Chunks a writer puts in one pack at most (PackWriter), whatever their size: chunks that
 * compress very well (~60 bytes each) would otherwise fill an 8 MiB pack with ~140,000,
 * whose entries the writer holds until the index object listing them is stored, and whose
 * trailer no longer fits the room the pack buffer keeps for it.
 */
export const MAX_PACK_CHUNKS = 4096;
/** Entries an index object a writer stores lists at most (PackWriter; consolidation merges up to this many too). */
export const MAX_INDEX_ENTRIES = 65_536;

export const newPackId = (): string => randomBytes(PACK_ID_BYTES).toString('hex');
/** A new index object id: 16 random bytes, hex (like a pack id). */
export const newIndexId = (): string => randomBytes(16).toString('hex');

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
      if (offset + length > size)
        throw bad(`chunk ${c} of pack ${b.toString('hex', heads[p]!, heads[p]! + PACK_ID_BYTES)} ends at ${offset + length}, past the pack's ${size} bytes`);
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
      chunks[c] = {
        id: b.toString('hex', at, at + CHUNK_ID_BYTES),
        offset: b.readUInt32BE(at + CHUNK_ID_BYTES),
        length: b.readUInt32BE(at + CHUNK_ID_BYTES + 4),
      };
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

  /** The id of pack `p` (0 ≤ p < packs). */
  packId(p: number): string {
    const head = this.firstEntryByte[p]! - PACK_HEAD_BYTES;
    return this.bytes.toString('hex', head, head + PACK_ID_BYTES);
  }

  /** Chunk entries pack `p` lists. */
  chunksOf(p: number): number {
    return this.entryStart[p + 1]! - this.entryStart[p]!;
  }

  /** Bytes `at`…`at + length` of the plaintext (a view; the form SpilledListing reads too). */
  read(at: number, length: number): Buffer {
    return this.bytes.subarray(at, at + length);
  }

  /** The whole plaintext. */
  plaintext(): Buffer {
    return this.bytes;
  }

  /** Pack `p` as `encodeIndex` wrote it (its head, then its chunk entries): a view of `bytes`, for `joinIndexSections`. */
  section(p: number): Buffer {
    const head = this.firstEntryByte[p]! - PACK_HEAD_BYTES;
    return this.bytes.subarray(head, this.firstEntryByte[p]! + this.chunksOf(p) * ENTRY_BYTES);
  }
}

/**
 * `encodeIndex` output listing the given packs, each a `section` of a checked listing,
 * copied as they are (garbage collection merges index objects without decoding them).
 */
export function joinIndexSections(sections: readonly Uint8Array[]): Buffer {
  const out = Buffer.alloc(9 + sections.reduce((n, s) => n + s.length, 0));
  out.writeUInt32BE(INDEX_MAGIC, 0);
  out[4] = INDEX_VERSION;
  out.writeUInt32BE(sections.length, 5);
  let at = 9;
  for (const s of sections) {
    out.set(s, at);
    at += s.length;
  }
  return out;
}

/** Sealed index object for `indexId`. */
export function encodeIndexObject(keys: RepositoryKeys, indexId: string, packs: readonly PackContents[]): Promise<Buffer> {
  return sealIndex(keys, indexId, encodeIndex(packs));
}

/**
 * Stores a new index object listing `packs` (a new id, with its CRC-32, which the store
 * checks on arrival): its id and its stored size. Movers write one after their packs,
 * replication after the packs it copied, garbage collection for packs it lists again.
 */
export async function putIndexObject(store: ObjectStore, keys: RepositoryKeys, packs: readonly PackContents[]): Promise<{ indexId: string; bytes: number }> {
  const indexId = newIndexId();
  const sealed = await encodeIndexObject(keys, indexId, packs);
  await store.put(objectKeys.index(indexId), sealed, { crc32: objectCrc32(sealed) });
  return { indexId, bytes: sealed.length };
}

/** Sealed index object for `indexId` of `encodeIndex` output. */
export function sealIndex(keys: RepositoryKeys, indexId: string, plaintext: Uint8Array): Promise<Buffer> {
  return seal(keys, plaintext, `index:${indexId}`);
}

export async function decodeIndexObject(keys: RepositoryKeys, sealed: Uint8Array, indexId: string): Promise<PackContents[]> {
  return decodeIndex(await open(keys, sealed, `index:${indexId}`), `index object ${objectKeys.index(indexId)}`);
}

/** An index object, opened and checked as `decodeIndexObject` does, in the compact form a mover keeps. */
export async function openIndexObject(keys: RepositoryKeys, sealed: Uint8Array, indexId: string): Promise<IndexListing> {
  return IndexListing.parse(await open(keys, sealed, `index:${indexId}`), `index object ${objectKeys.index(indexId)}`);
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
  if (body && loc.pack && body.length !== loc.length)
    throw new Corrupt(`${loc.key} bytes ${loc.offset}+${loc.length}: read ${body.length} bytes (the pack is shorter than its manifest says)`);
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
 * Groups chunk reads into runs: chunks of one pack that lie within `maxGap` bytes of each
 * other are read by one range GET of at most `maxBytes` (format-1 chunks: one GET each).
 * Runs come in pack order, so a restore reads each pack front to back. `m` is a manifest
 * read whole, or where each chunk is (a batch of a streamed manifest).
 */
export function planReads(m: Manifest | ((id: string) => ChunkLocation), ids: Iterable<string>, opts: { maxBytes?: number; maxGap?: number } = {}): ReadRun[] {
  const maxBytes = opts.maxBytes ?? 4 * 1024 * 1024;
  const maxGap = opts.maxGap ?? 64 * 1024;
  const locate = typeof m === 'function' ? m : (id: string) => chunkLocation(m, id);
  const locs = [...ids].map((id) => ({ id, loc: locate(id) }));
  locs.sort((a, b) => (a.loc.key < b.loc.key ? -1 : a.loc.key > b.loc.key ? 1 : a.loc.offset - b.loc.offset));
  const runs: ReadRun[] = [];
  let run: ReadRun | undefined;
  for (const { id, loc } of locs) {
    const end = loc.offset + loc.length;
    if (
      run &&
      loc.pack &&
      run.packed &&
      run.key === loc.key &&
      loc.offset - (run.offset + run.length) <= maxGap &&
      loc.offset >= run.offset &&
      end - run.offset <= maxBytes
    ) {
      run.length = Math.max(run.length, end - run.offset);
      run.chunks.push({ id, at: loc.offset - run.offset, length: loc.length });
      continue;
    }
    run = { key: loc.key, packed: !!loc.pack, offset: loc.offset, length: loc.length, chunks: [{ id, at: 0, length: loc.length }] };
    runs.push(run);
  }
  return runs;
}
