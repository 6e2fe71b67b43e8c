/**
 * What a reader of a streamed manifest remembers of the chunks it passed: the last
 * `limit` distinct ids, so a chunk repeated close by on a disk is handled once, with memory
 * bounded whatever the disk's size (a chunk repeated farther apart is handled again).
 * Verify, deep verify and replication count "distinct chunks" this way, so their counts agree.
 */

/** Distinct ids remembered by the readers of a manifest. */
export const RECENT_CHUNKS = 65_536;

/** The last `limit` distinct keys set, each with its value; the oldest is forgotten first, in constant time per key. */
export class RecentMap<V> {
  private readonly values = new Map<string, V>();
  /**
   * The remembered keys in the order first set, as a ring: the oldest is forgotten by its
   * slot. Forgetting the Map's first key instead (`keys().next()`) walks past every entry
   * deleted since V8 last rehashed it: quadratic in the limit.
   */
  private readonly order: string[] = [];
  private next = 0;
  private readonly limit: number;

  constructor(limit = RECENT_CHUNKS, what = 'RecentMap') {
    if (!(Number.isInteger(limit) && limit >= 1)) throw new RangeError(`${what} limit ${limit} (an integer, at least 1)`);
    this.limit = limit;
  }

  get(key: string): V | undefined {
    return this.values.get(key);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  /** Remembers `value` for `key`; a key already remembered keeps its place in the order. */
  set(key: string, value: V): void {
    const known = this.values.has(key);
    this.values.set(key, value);
    if (known) return;
    if (this.order.length < this.limit) this.order.push(key);
    else {
      this.values.delete(this.order[this.next]!);
      this.order[this.next] = key;
      this.next = (this.next + 1) % this.limit;
    }
  }
}

export class RecentIds {
  private readonly seen: RecentMap<true>;

  constructor(limit = RECENT_CHUNKS) {
    this.seen = new RecentMap(limit, 'RecentIds');
  }

  /** True the first time `id` is seen (or once it was forgotten); remembers it. */
  fresh(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.set(id, true);
    return true;
  }
}
