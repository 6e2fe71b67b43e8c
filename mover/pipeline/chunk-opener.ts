/**
 * Opens a restore's chunks on every core: on the chunk pool's workers, and on the calling
 * (main) thread once every worker has `queuedPerWorker` chunks queued. The main thread
 * opens one chunk per turn of its event loop, so the HTTP reads, the workers' replies and
 * the target's writes run between two chunks; before each, the workers are topped up from
 * the chunks waiting here, so a worker that caught up is never left idle while this thread
 * works through a queue.
 */
import type { RepositoryKeys } from '../../repository/format.ts';
import type { ChunkPool, Opened, PlaceIn, SharedSlot } from './chunk-pool.ts';

/** One chunk to open: its sealed bytes at `bodyOffset` of `body`, its id and plaintext length, where to place it. */
export interface OpenRequest {
  body: SharedSlot;
  bodyOffset: number;
  bodyLength: number;
  id: string;
  length: number;
  into: PlaceIn;
}

interface Waiting {
  r: OpenRequest;
  ok: (o: Opened) => void;
  fail: (err: unknown) => void;
}

export class ChunkOpener {
  private readonly pool: ChunkPool;
  private readonly keys: RepositoryKeys;
  private readonly queuedPerWorker: number;
  private readonly waiting: Waiting[] = [];
  private scheduled = false;

  constructor(pool: ChunkPool, keys: RepositoryKeys, queuedPerWorker = 2) {
    this.pool = pool;
    this.keys = keys;
    this.queuedPerWorker = queuedPerWorker;
  }

  /** Opens `r` (see ChunkPool.openSlot): on a worker when one has room, else here in a later turn. */
  open(r: OpenRequest): Promise<Opened> {
    if (this.waiting.length === 0 && this.workersHaveRoom()) return this.onWorker(r);
    return new Promise<Opened>((ok, fail) => {
      this.waiting.push({ r, ok, fail });
      this.schedule();
    });
  }

  private workersHaveRoom(): boolean {
    return this.pool.backlog < this.pool.size * this.queuedPerWorker;
  }

  private onWorker(r: OpenRequest): Promise<Opened> {
    const p = this.pool.openSlot(this.keys, r.body, r.bodyLength, r.id, r.length, r.into, r.bodyOffset);
    // A worker that answered has room again: top it up from the chunks waiting here.
    void p.then(
      () => this.feed(),
      () => this.feed(),
    );
    return p;
  }

  /** Hands waiting chunks to the workers while they have room. */
  private feed(): void {
    while (this.waiting.length > 0 && this.workersHaveRoom()) {
      const w = this.waiting.shift()!;
      this.onWorker(w.r).then(w.ok, w.fail);
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.turn());
  }

  /** One turn: the workers topped up, then one waiting chunk opened on this thread. */
  private turn(): void {
    this.scheduled = false;
    this.feed();
    const w = this.waiting.shift();
    if (!w) return;
    try {
      w.ok(this.pool.openHere(this.keys, w.r.body, w.r.bodyLength, w.r.id, w.r.length, w.r.into, w.r.bodyOffset));
    } catch (err) {
      w.fail(err);
    }
    if (this.waiting.length > 0) this.schedule();
  }
}
