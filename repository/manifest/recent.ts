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
  private readonly limit: number;

  constructor(limit = RECENT_CHUNKS) {
    this.limit = limit;
  }

  /** True the first time `id` is seen (or once it was forgotten); remembers it. */
  fresh(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.seen.size > this.limit) this.seen.delete(this.seen.values().next().value!);
    return true;
  }
}
