/**
 * Ranges of one fixed buffer handed out and given back (first fit, neighbours merged):
 * a restore reads its runs into one buffer shared with the chunk pool's workers, so the
 * bytes in flight, not the number of requests, are what is bounded, and nothing run-sized
 * is allocated per run.
 */
export class ByteArena {
  /** Free ranges [start, end), sorted, never touching. */
  private free: [number, number][];
  /** Takers waiting for room, first come first served (a large one is not overtaken). */
  private readonly waiting: { length: number; ok: (at: number) => void }[] = [];

  readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    if (!Number.isSafeInteger(capacity) || capacity <= 0) throw new RangeError(`an arena needs a positive whole number of bytes, got ${capacity}`);
    this.free = [[0, capacity]];
  }

  /** Bytes not handed out. */
  get available(): number {
    return this.free.reduce((n, [s, e]) => n + e - s, 0);
  }

  /** The start of `length` bytes of the arena, once they are free. */
  take(length: number): Promise<number> {
    if (!Number.isSafeInteger(length) || length <= 0 || length > this.capacity) {
      return Promise.reject(new RangeError(`cannot take ${length} bytes of an arena of ${this.capacity}`));
    }
    const at = this.waiting.length === 0 ? this.fit(length) : -1;
    if (at >= 0) return Promise.resolve(at);
    return new Promise((ok) => this.waiting.push({ length, ok }));
  }

  /** Gives back `length` bytes at `at` (as `take` gave them). */
  give(at: number, length: number): void {
    const end = at + length;
    let i = 0;
    while (i < this.free.length && this.free[i]![0] < at) i++;
    const before = this.free[i - 1];
    const after = this.free[i];
    if ((before && before[1] > at) || (after && after[0] < end)) throw new Error(`arena bytes ${at}+${length} were not taken (given back twice?)`);
    if (before && before[1] === at && after && after[0] === end) {
      before[1] = after[1];
      this.free.splice(i, 1);
    } else if (before && before[1] === at) before[1] = end;
    else if (after && after[0] === end) after[0] = at;
    else this.free.splice(i, 0, [at, end]);
    while (this.waiting.length > 0) {
      const got = this.fit(this.waiting[0]!.length);
      if (got < 0) break;
      this.waiting.shift()!.ok(got);
    }
  }

  private fit(length: number): number {
    for (let i = 0; i < this.free.length; i++) {
      const range = this.free[i]!;
      if (range[1] - range[0] < length) continue;
      const at = range[0];
      range[0] += length;
      if (range[0] === range[1]) this.free.splice(i, 1);
      return at;
    }
    return -1;
  }
}
