/**
 * What a reader of a streamed manifest remembers of the chunks it passed: the last
 * `limit` distinct ids, so a chunk repeated close by on a disk is handled once, with memory
 * bounded whatever the disk's size (a chunk repeated farther apart is handled again).
 * Verify, deep verify and replication count "distinct chunks" this way, so their counts agree.
 */

/** Distinct ids remembered by the readers of a manifest. */
export const RECENT_CHUNKS = 65_536;

export class RecentIds {
  private readonly seen = new Set<string>();
  /**
   * The remembered ids in the order seen, as a ring: the oldest is forgotten by its slot.
   * Forgetting the Set's first entry instead (`values().next()`) walks past every entry
   * deleted since V8 last rehashed the Set: quadratic in the limit.
   */
  private readonly order: string[] = [];
  private next = 0;
  private readonly limit: number;

  constructor(limit = RECENT_CHUNKS) {
    if (!(Number.isInteger(limit) && limit >= 1)) throw new RangeError(`RecentIds limit ${limit} (an integer, at least 1)`);
    this.limit = limit;
  }

  /** True the first time `id` is seen (or once it was forgotten); remembers it. */
  fresh(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.order.length < this.limit) this.order.push(id);
    else {
      this.seen.delete(this.order[this.next]!);
      this.order[this.next] = id;
      this.next = (this.next + 1) % this.limit;
    }
    return true;
  }
}
