/**
 * Which chunks an export fetches before they are asked for. Readers interleave: `nbdcopy`
 * reads a disk as several streams at once (one per connection, each with many requests in
 * flight, so its reads arrive a little out of order), a guest reads a file here and pages
 * there. Each sequential stream is followed on its own, so streams do not reset each
 * other's read-ahead, and fetching is done in batches (half a window at a time) so that
 * neighbouring chunks of a pack are read by one ranged GET rather than one GET each.
 *
 * A read opens a stream; a read starting exactly where it ended makes it sequential, and
 * read-ahead starts. From then on a read starting near where the stream has read up to
 * (within `slack` bytes either way: requests in flight overtake each other) belongs to it.
 * So a random reader fetches nothing extra.
 */

/** A range of chunk indexes to fetch: `from` … `until - 1`. */
export interface ChunkRange {
  from: number;
  until: number;
}

export interface ReadAheadOptions {
  chunkBytes: number;
  /** Chunks of the disk. */
  chunks: number;
  /** Chunks fetched ahead of one stream (0: none). */
  windowChunks: number;
  /** Chunks all streams together may hold ahead (the cache's share for read-ahead). */
  budgetChunks: number;
  /** Streams followed at once (least recently read dropped first; default 8). */
  maxStreams?: number;
}

interface Stream {
  /** Where the stream has read up to (the furthest end of its reads), in bytes. */
  end: number;
  /** Chunks before this index are fetched, being fetched, or behind the reader. */
  ahead: number;
  reads: number;
  used: number;
}

export class ReadAheadStreams {
  private readonly o: Required<ReadAheadOptions>;
  private readonly streams: Stream[] = [];
  private tick = 0;

  constructor(o: ReadAheadOptions) {
    this.o = { maxStreams: 8, ...o };
  }

  /** Streams being followed (for tests and stats). */
  get count(): number {
    return this.streams.length;
  }

  /** The window of one stream now: the per-stream setting, within an equal share of the budget. */
  private window(): number {
    const share = Math.floor(this.o.budgetChunks / Math.max(1, this.streams.length));
    return Math.max(0, Math.min(this.o.windowChunks, share));
  }

  /** Notes a read of `length` bytes at `offset`; answers the chunks to fetch ahead now, if any. */
  next(offset: number, length: number): ChunkRange | undefined {
    if (this.o.windowChunks === 0 || length <= 0) return undefined;
    const cs = this.o.chunkBytes;
    const end = offset + length;
    const slack = Math.max(2 * cs, Math.floor(this.window() / 2) * cs);
    const s = this.streams.find((x) => x.reads > 1 && offset >= x.end - slack && offset <= x.end + slack) ?? this.streams.find((x) => x.end === offset);
    if (!s) {
      if (this.streams.length >= this.o.maxStreams) this.streams.splice(this.streams.indexOf(this.lru()), 1);
      this.streams.push({ end, ahead: 0, reads: 1, used: ++this.tick });
      return undefined;
    }
    s.end = Math.max(s.end, end);
    s.reads++;
    s.used = ++this.tick;
    // Another stream on the same reads (opened by a request that overtook the others): one stream.
    for (let i = this.streams.length - 1; i >= 0; i--) {
      const x = this.streams[i]!;
      if (x === s || Math.abs(x.end - s.end) > slack) continue;
      s.end = Math.max(s.end, x.end);
      s.ahead = Math.max(s.ahead, x.ahead);
      this.streams.splice(i, 1);
    }
    const window = this.window();
    if (window === 0) return undefined;
    const next = Math.ceil(s.end / cs);
    const until = Math.min(this.o.chunks, next + window);
    // Behind the reader (it ran past what was fetched), or far ahead of it (it jumped back): from here.
    if (s.ahead < next || s.ahead > until) s.ahead = next;
    // Fetched in batches of half a window: fewer, longer GETs.
    if (until - s.ahead < Math.max(1, Math.floor(window / 2)) && s.ahead > next) return undefined;
    if (s.ahead >= until) return undefined;
    const range = { from: s.ahead, until };
    s.ahead = until;
    return range;
  }

  private lru(): Stream {
    return this.streams.reduce((a, b) => (a.used <= b.used ? a : b));
  }
}
