/**
 * A set of chunk ids in 9 bytes each (a 64-bit hash of the id, in an open-addressing table
 * of typed arrays, at most half full): garbage collection counts what referenced packs
 * hold that no manifest needs, over every chunk the manifests name, without a string per
 * chunk (a Set of 4 million id strings is ~0.5 GB). Two ids with the same 64-bit hash are
 * as rare as a 64-bit collision; then one is counted as needed: a statistic only.
 */

export class ChunkIdSet {
  private hi = new Uint32Array(1024);
  private lo = new Uint32Array(1024);
  /** 1 where a slot holds an id (an id may have hi 0). */
  private used = new Uint8Array(1024);
  size = 0;

  /** Two 32-bit hashes of the whole id (FNV-1a and a multiplicative one): 64 bits per id. */
  private static split(id: string): [number, number] {
    let a = 0x811c9dc5;
    let b = 0x9747b28c;
    for (let i = 0; i < id.length; i++) {
      const c = id.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 13);
    }
    return [a >>> 0, b >>> 0];
  }

  private slot(hi: number, lo: number): number {
    const mask = this.hi.length - 1;
    let s = (Math.imul(hi ^ lo, 0x9e3779b1) >>> 0) & mask;
    while (this.used[s] && (this.hi[s] !== hi || this.lo[s] !== lo)) s = (s + 1) & mask;
    return s;
  }

  add(id: string): this {
    const [hi, lo] = ChunkIdSet.split(id);
    const s = this.slot(hi, lo);
    if (this.used[s]) return this;
    this.used[s] = 1;
    this.hi[s] = hi;
    this.lo[s] = lo;
    if (++this.size * 2 > this.hi.length) this.grow();
    return this;
  }

  has(id: string): boolean {
    const [hi, lo] = ChunkIdSet.split(id);
    return this.used[this.slot(hi, lo)] === 1;
  }

  clear(): void {
    this.hi = new Uint32Array(1024);
    this.lo = new Uint32Array(1024);
    this.used = new Uint8Array(1024);
    this.size = 0;
  }

  private grow(): void {
    const { hi, lo, used } = this;
    this.hi = new Uint32Array(hi.length * 2);
    this.lo = new Uint32Array(hi.length * 2);
    this.used = new Uint8Array(hi.length * 2);
    for (let s = 0; s < hi.length; s++) {
      if (!used[s]) continue;
      const t = this.slot(hi[s]!, lo[s]!);
      this.used[t] = 1;
      this.hi[t] = hi[s]!;
      this.lo[t] = lo[s]!;
    }
  }
}
