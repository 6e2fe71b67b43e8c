/**
 * A set of chunk ids in ~10-16 bytes each (a 64-bit hash of the id's 32 bytes, two 32-bit
 * numbers per slot of an open-addressing table kept at most 80% full, grown by half):
 * garbage collection counts what referenced packs hold that no manifest needs, over every
 * chunk the manifests name, without a string per chunk (a Set of 4 million id strings is
 * ~0.5 GB). Ids come as hex (a manifest's entries) or as bytes (an index object's entries,
 * read in place). Two ids with the same 64-bit hash are as rare as a 64-bit collision;
 * then one is counted as needed: a statistic only.
 */

const ID_BYTES = 32;
/** Holds the bytes of a hex id while it is hashed (synchronous). */
const scratch = Buffer.alloc(ID_BYTES);
/** How full the table is at most before it grows. */
const MAX_LOAD = 0.8;
const FIRST_SLOTS = 1024;

export class ChunkIdSet {
  /** Per slot, the hash's high and low 32 bits; a low 0 is an empty slot (a hash's low 0 is taken as 1). */
  private hi = new Uint32Array(FIRST_SLOTS);
  private lo = new Uint32Array(FIRST_SLOTS);
  size = 0;
  private hashHi = 0;
  private hashLo = 0;

  /** The id at `b[at..at + 32]` hashed into hashHi, hashLo (two 32-bit mixes over its eight words). */
  private hash(b: Buffer, at: number): void {
    let a = 0x811c9dc5;
    let c = 0x9747b28c;
    for (let w = 0; w < ID_BYTES; w += 4) {
      const x = b.readUInt32BE(at + w);
      a = Math.imul(a ^ x, 0x01000193);
      a ^= a >>> 15;
      c = Math.imul(c ^ x, 0x5bd1e995);
      c ^= c >>> 13;
    }
    this.hashHi = a >>> 0;
    this.hashLo = c >>> 0 || 1;
  }

  /** The slot of the current hash: where it is, or the empty slot where it would go. */
  private slot(): number {
    const { hi, lo, hashHi, hashLo } = this;
    const n = hi.length;
    let s = (((Math.imul(hashHi ^ hashLo, 0x9e3779b1) >>> 0) * n) / 4294967296) >>> 0;
    while (lo[s] !== 0 && (hi[s] !== hashHi || lo[s] !== hashLo)) if (++s === n) s = 0;
    return s;
  }

  private hexHash(id: string): boolean {
    if (id.length !== 2 * ID_BYTES || scratch.write(id, 'hex') !== ID_BYTES) return false;
    this.hash(scratch, 0);
    return true;
  }

  /** Adds the id `id` (64 hex digits; anything else is not an id and is not added). */
  add(id: string): this {
    if (this.hexHash(id)) this.insert();
    return this;
  }

  /** Adds the id whose 32 bytes are `b[at..]`. */
  addAt(b: Buffer, at: number): this {
    this.hash(b, at);
    this.insert();
    return this;
  }

  has(id: string): boolean {
    if (!this.hexHash(id)) return false;
    return this.lo[this.slot()] !== 0;
  }

  /** Whether the id whose 32 bytes are `b[at..]` is in the set. */
  hasAt(b: Buffer, at: number): boolean {
    this.hash(b, at);
    return this.lo[this.slot()] !== 0;
  }

  clear(): void {
    this.hi = new Uint32Array(FIRST_SLOTS);
    this.lo = new Uint32Array(FIRST_SLOTS);
    this.size = 0;
  }

  private insert(): void {
    const s = this.slot();
    if (this.lo[s] !== 0) return;
    this.hi[s] = this.hashHi;
    this.lo[s] = this.hashLo;
    if (++this.size > this.hi.length * MAX_LOAD) this.grow();
  }

  private grow(): void {
    const { hi, lo } = this;
    const n = Math.ceil(hi.length * 1.5);
    this.hi = new Uint32Array(n);
    this.lo = new Uint32Array(n);
    for (let s = 0; s < hi.length; s++) {
      if (lo[s] === 0) continue;
      this.hashHi = hi[s]!;
      this.hashLo = lo[s]!;
      const t = this.slot();
      this.hi[t] = hi[s]!;
      this.lo[t] = lo[s]!;
    }
  }
}
