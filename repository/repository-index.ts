/**
 * The repository's index: which pack holds each chunk, from the index objects (format in
 * packs.ts). Movers keep one per repository (IndexCache) to deduplicate across VMs and
 * disks, its listings in local files (index-spill.ts); readers load one in memory to find
 * another copy of a damaged chunk.
 */
import { mapLimit } from '../core/concurrency.ts';
import { objectKeys, type RepositoryKeys } from './format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { SpilledListing } from './index-spill.ts';
import { CHUNK_ID_BYTES, ENTRY_BYTES, IndexListing, openIndexObject, PACK_HEAD_BYTES, PACK_ID_BYTES, type ChunkLocation, type PackContents } from './packs.ts';

/** An index object's checked plaintext as the index reads it: in memory (IndexListing) or in a local file (SpilledListing). */
export type Listing = IndexListing | SpilledListing;

/** How full the index's hash table is at most: chunk entries per slot (as full when no chunk is listed twice). */
const TABLE_LOAD = 0.75;
/** Holds a looked-up id's bytes (lookups are synchronous). */
const wanted = Buffer.alloc(CHUNK_ID_BYTES);

const u32 = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

/** Bits of a slot's entry number + 1 for `total` entries (the rest of the slot's 32 bits are the id's fingerprint). */
const entryBitsFor = (total: number) => Math.max(1, Math.ceil(Math.log2(total + 1)));

/** The slot where the probe for an id with these first 8 bytes begins (ids are HMAC output, mixed anyway). */
function slotOf(k0: number, k1: number, slots: number): number {
  let h = Math.imul(k0 ^ Math.imul(k1, 0x85ebca6b), 0xcc9e2d51);
  h ^= h >>> 15;
  return (((h >>> 0) * slots) / 4294967296) >>> 0;
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
 * Compact (a mover's memory is small, a repository may list millions of chunks): an
 * open-addressing hash table (linear probing) of one 32-bit number per slot, the id's
 * first entry + 1 in its low bits (as many as the entries need: 23 for 4 million) and a
 * fingerprint of the id (bytes 8-11, not those that place it) in the rest: ~5.3 bytes per
 * chunk at its load of 0.75 (two numbers per slot, ~11.4 bytes, before; REPOSITORY-FORMAT.md,
 * "A mover's copy of the index"). It is over the index objects' binary plaintexts (40
 * bytes per chunk), which are in memory (IndexListing) or, for a mover, in local files
 * (SpilledListing; bench/index-memory.ts). A lookup compares the full id, read from the
 * plaintext, only when the fingerprint matches: a miss reads nothing but by a 2^-(32 -
 * entry bits) chance per slot probed (2^-9 at 4 million entries), a hit reads its entry
 * and its pack's head. Entries are numbered in the order the objects, their packs and
 * chunks come. A chunk listed more than once has one slot, its first entry; the later
 * copies are in a sorted list of (first entry, copy) pairs. Locations are made when asked for.
 */
export class RepositoryIndex {
  /** How many index objects it was made of. */
  readonly objects: number;
  /** Distinct chunks listed. */
  readonly size: number;
  private readonly listings: readonly Listing[];
  /** Per listing, the number of entries before it; then the total. */
  private readonly firstEntry: Uint32Array;
  private readonly slots: number;
  /** Per slot: the id's fingerprint times 2^entryBits, plus its first entry + 1 (0: an empty slot). */
  private readonly table: Uint32Array;
  /** 2^entryBits: the low bits of a slot are its entry + 1, the high ones the fingerprint. */
  private readonly entrySpan: number;
  /** The fingerprint of an id whose bytes 8-11 are `k2`: its top (32 - entryBits) bits. */
  private readonly fingerprint: (k2: number) => number;
  /** Later copies: (first entry, copy entry) pairs sorted by first entry, then copy. */
  private readonly copyOf: Uint32Array;
  private readonly copy: Uint32Array;

  private constructor(listings: readonly Listing[]) {
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
    this.table = new Uint32Array(this.slots);
    const entryBits = entryBitsFor(total);
    this.entrySpan = 2 ** entryBits;
    this.fingerprint = entryBits >= 32 ? () => 0 : (k2) => k2 >>> entryBits;
    const pairs: number[] = [];
    let distinct = 0;
    let e = 0;
    const { table, slots, entrySpan, fingerprint } = this;
    // Spilled listings are read whole for the build, in turn into one buffer (the largest's size).
    const spare = Buffer.allocUnsafeSlow(listings.reduce((n, l) => (l instanceof SpilledListing ? Math.max(n, l.byteLength) : n), 0));
    for (const l of listings) {
      const b = l instanceof SpilledListing ? l.plaintext(spare) : l.plaintext();
      for (let p = 0; p < l.packs; p++) {
        const n = l.entryStart[p + 1]! - l.entryStart[p]!;
        for (let c = 0, at = l.firstEntryByte[p]!; c < n; c++, at += ENTRY_BYTES, e++) {
          const f = fingerprint(u32(b, at + 8));
          let s = slotOf(u32(b, at), u32(b, at + 4), slots);
          for (;;) {
            const held = table[s]!;
            if (held === 0) {
              table[s] = f * entrySpan + e + 1;
              distinct++;
              break;
            }
            if (Math.floor(held / entrySpan) === f && this.idAt((held % entrySpan) - 1, b, at)) {
              pairs.push((held % entrySpan) - 1, e);
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
    return new IndexCache(store, keys, { parallelism }).refresh();
  }

  /** An index of the packs that index objects list, one listing (or list of packs) per index object. */
  static of(objects: Iterable<Listing | readonly PackContents[]>): RepositoryIndex {
    return new RepositoryIndex(Array.from(objects, (o) => (o instanceof IndexListing || o instanceof SpilledListing ? o : IndexListing.of(o))));
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

  /**
   * The copies of chunk `id` other than the one at `here` (a manifest's location): where a
   * reader looks when that copy is damaged or missing (a later backup stored the chunk
   * again after a deep verification quarantined it).
   */
  otherCopies(id: string, here: ChunkLocation): ChunkLocation[] {
    // A copy listed twice (an index object and the merged object replacing it, both read) is tried once.
    const seen = new Set([`${here.key}@${here.offset}`]);
    return this.all(id).filter((c) => {
      const at = `${c.key}@${c.offset}`;
      return !seen.has(at) && !!seen.add(at);
    });
  }

  /** The first entry of chunk `id`, or -1. */
  private find(id: string): number {
    if (typeof id !== 'string' || id.length !== 2 * CHUNK_ID_BYTES || wanted.write(id, 'hex') !== CHUNK_ID_BYTES) return -1;
    const { table, slots, entrySpan } = this;
    const f = this.fingerprint(u32(wanted, 8));
    for (let s = slotOf(u32(wanted, 0), u32(wanted, 4), slots); ; ) {
      const held = table[s]!;
      if (held === 0) return -1;
      if (Math.floor(held / entrySpan) === f && this.idAt((held % entrySpan) - 1, wanted, 0)) return (held % entrySpan) - 1;
      if (++s === slots) s = 0;
    }
  }

  /** Which listing and pack entry `e` is in, and the byte where its entry begins. */
  private entry(e: number): { listing: Listing; pack: number; at: number } {
    const i = lastAtMost(this.firstEntry, e);
    const listing = this.listings[i]!;
    const local = e - this.firstEntry[i]!;
    const pack = lastAtMost(listing.entryStart, local);
    return { listing, pack, at: listing.firstEntryByte[pack]! + (local - listing.entryStart[pack]!) * ENTRY_BYTES };
  }

  /** Whether entry `e` is of the id at `b[at..]`. */
  private idAt(e: number, b: Uint8Array, at: number): boolean {
    const { listing, at: entryAt } = this.entry(e);
    return listing.read(entryAt, CHUNK_ID_BYTES).compare(b, at, at + CHUNK_ID_BYTES) === 0;
  }

  private location(e: number): ChunkLocation {
    const { listing, pack, at } = this.entry(e);
    // Each read of a spilled listing reuses one buffer: the values are taken before the next.
    const where = listing.read(at + CHUNK_ID_BYTES, 8);
    const offset = where.readUInt32BE(0);
    const length = where.readUInt32BE(4);
    const head = listing.read(listing.firstEntryByte[pack]! - PACK_HEAD_BYTES, PACK_ID_BYTES + 4);
    const id = head.toString('hex', 0, PACK_ID_BYTES);
    return { pack: { id, size: head.readUInt32BE(PACK_ID_BYTES) }, key: objectKeys.pack(id), offset, length };
  }
}

/** LIST rounds a refresh makes at most while index objects are replaced under it (then it keeps what it has: a deduplication loss at worst). */
const MAX_LIST_ROUNDS = 8;

/**
 * A mover's copy of one repository's index, brought up to date before each use: it lists
 * `index/` (one request per 1,000 objects) and reads only the index objects it has not
 * read before, and forgets those that are gone (garbage collection rewrote or merged
 * them). So a mover's second backup into a repository reads just the index objects
 * written since. It keeps each object's checked plaintext: in a local file when given a
 * folder (`dir`: a mover's work folder; SpilledListing, ~0.1 byte per chunk resident), else
 * in memory (IndexListing, ~42 bytes per chunk). A refresh that read or forgot an object
 * builds a new RepositoryIndex over them (its hash table, ~5.3 bytes per chunk; ~0.3 s for
 * 2 million chunks in memory); one that found nothing new gives the index it gave before,
 * so backups running side by side share one. Refreshes asked for while one runs share it.
 *
 * Garbage collection replaces index objects while movers read them (a copy without
 * deleted packs, or many small objects merged into one): it writes the new object, and
 * deletes the old ones only once the new one is stored. A LIST is not a snapshot (S3
 * lists page by page, in key order), so one LIST may miss both an old object (deleted
 * before the LIST reached its key) and the object that replaced it (written at a key the
 * LIST had passed); and an object listed may be gone by its GET. So a refresh lists
 * again, reading what is new, until a LIST lists every object the one before it did and
 * every GET found its object: a LIST begun after an old object was deleted lists its
 * replacement, which was stored before. Entries listed twice meanwhile (the old object
 * and its replacement both read) are harmless: every copy of a chunk is a valid location.
 */
export class IndexCache {
  private readonly store: ObjectStore;
  private readonly keys: RepositoryKeys;
  private readonly parallelism: number;
  private readonly dir: string | undefined;
  private readonly read = new Map<string, Listing>();
  private running: Promise<RepositoryIndex> | undefined;
  /** What the last refresh gave, while no object has been read or forgotten since. */
  private current: RepositoryIndex | undefined;
  /** Index objects read (GETs) by the last refresh. */
  lastRead = 0;
  /** LISTs of `index/` the last refresh made (2 unless objects were replaced meanwhile). */
  lastLists = 0;

  /**
   * `dir`: the local folder for the objects' plaintexts (made when missing; default: kept in
   * memory). `parallelism`: index objects read at once (default 8; 1 with a folder: a mover,
   * whose peak memory counts, and each object being read is held ~4 times over, sealed,
   * collected, opened and checked: ~11 MB for one of 65,536 entries; at 8, bench:big-disk's
   * last segment, whose refresh reads ~12 such objects, peaked at 97 MiB of external memory,
   * at 4 still 71 MiB; bench/MEASUREMENTS.md).
   */
  constructor(store: ObjectStore, keys: RepositoryKeys, opts: { parallelism?: number; dir?: string } = {}) {
    this.store = store;
    this.keys = keys;
    this.parallelism = opts.parallelism ?? (opts.dir ? 1 : 8);
    this.dir = opts.dir;
  }

  refresh(): Promise<RepositoryIndex> {
    this.running ??= this.load().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async load(): Promise<RepositoryIndex> {
    if (this.dir) await SpilledListing.prepare(this.dir);
    let gets = 0;
    let previous: Set<string> | undefined;
    let round = 0;
    for (;;) {
      round++;
      const listed = new Set<string>();
      for await (const o of this.store.list('index/')) listed.add(o.key.slice('index/'.length));
      for (const id of this.read.keys()) {
        if (listed.has(id)) continue;
        this.read.delete(id);
        this.current = undefined;
      }
      // Deleted since the last LIST: its replacement may have been written where that LIST had passed.
      let changed = previous === undefined || [...previous].some((id) => !listed.has(id));
      const fresh = [...listed].filter((id) => !this.read.has(id));
      gets += fresh.length;
      await mapLimit(fresh, this.parallelism, async (indexId) => {
        const sealed = await this.store.get(objectKeys.index(indexId));
        if (!sealed) {
          changed = true; // replaced since the LIST: the next LIST has its replacement
          return;
        }
        const listing = await openIndexObject(this.keys, sealed, indexId);
        this.read.set(indexId, this.dir ? await SpilledListing.write(this.dir, listing, `index object ${objectKeys.index(indexId)}`) : listing);
        this.current = undefined;
      });
      if (!changed || round >= MAX_LIST_ROUNDS) break;
      previous = listed;
    }
    this.lastRead = gets;
    this.lastLists = round;
    this.current ??= RepositoryIndex.of(this.read.values());
    return this.current;
  }
}
