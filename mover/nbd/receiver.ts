/**
 * The transmission phase's receiving side: cuts the server's byte stream into simple
 * replies and structured chunks, checks each against the request it answers (matched by
 * cookie) and assembles the result. Read data is copied from the socket's chunks straight
 * into the caller's buffer. Anything the spec forbids throws NbdProtocolError, after which
 * the connection is dropped (the spec's hard disconnect).
 */
import type { ByteQueue } from './byte-queue.ts';
import { ChunkType, Command, MAX_CONTROL_PAYLOAD, NbdProtocolError, readSafeU64, ReplyFlag } from './protocol.ts';
import { parseChunk, parseReplyHeader, replyHeaderSize, type BlockDescriptor, type Chunk } from './transmission-wire.ts';

/** A request awaiting its reply. */
export interface InFlight {
  readonly cookie: bigint;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ: where the data goes; undefined once the request was given up (late data is dropped). */
  dest: Buffer | undefined;
  destAt: number;
  /** READ: the content ranges received so far, as sorted [start, end) pairs. */
  ranges: number[];
  covered: number;
  /** BLOCK_STATUS: the descriptors per context id. */
  statuses: Map<number, BlockDescriptor[]>;
  /** The first error the server reported for this request. */
  error?: { error: number; message: string; offset?: number };
}

type State =
  | { at: 'header' }
  | { at: 'payload'; req: InFlight; flags: number; type: number; length: number }
  | { at: 'data-offset'; req: InFlight; flags: number; length: number }
  | { at: 'data'; req: InFlight; flags: number; pos: number; remaining: number };

/** Options fixed by the handshake. */
export interface ReceiverOptions {
  structuredReplies: boolean;
  /** The negotiated metadata context ids. */
  contextIds: ReadonlySet<number>;
}

/** Parses replies from `queue`; calls `done` when a request's reply is complete. */
export class ReplyReceiver {
  private state: State = { at: 'header' };
  private readonly queue: ByteQueue;
  private readonly lookup: (cookie: bigint) => InFlight | undefined;
  private readonly done: (req: InFlight) => void;
  private readonly opts: ReceiverOptions;

  constructor(queue: ByteQueue, lookup: (cookie: bigint) => InFlight | undefined, done: (req: InFlight) => void, opts: ReceiverOptions) {
    this.queue = queue;
    this.lookup = lookup;
    this.done = done;
    this.opts = opts;
  }

  /** Whether a reply is partly received (a connection ending now ends mid-message). */
  get midMessage(): boolean {
    return this.state.at !== 'header' || this.queue.available > 0;
  }

  /** Consumes every complete message (and any data) buffered; throws NbdProtocolError. */
  pump(): void {
    while (this.step());
  }

  private step(): boolean {
    const s = this.state;
    switch (s.at) {
      case 'header':
        return this.header();
      case 'payload':
        if (this.queue.available < s.length) return false;
        this.state = { at: 'header' };
        this.chunk(s.req, s.flags, parseChunk(s, this.queue.take(s.length)));
        return true;
      case 'data-offset':
        return this.dataOffset(s);
      case 'data':
        return this.data(s);
    }
  }

  private header(): boolean {
    if (this.queue.available < 4) return false;
    const size = replyHeaderSize(this.queue.peekU32());
    if (this.queue.available < size) return false;
    const h = parseReplyHeader(this.queue.take(size));
    const req = this.lookup(h.cookie);
    if (!req) throw new NbdProtocolError(`reply for cookie ${h.cookie}, which no request in flight has`);
    if (h.kind === 'simple') return this.simple(req, h.error);
    if (!this.opts.structuredReplies) throw new NbdProtocolError('structured reply chunk although structured replies were not negotiated');
    if (h.type === ChunkType.OFFSET_DATA && req.command === Command.READ) {
      if (h.length < 9) throw new NbdProtocolError(`NBD_REPLY_TYPE_OFFSET_DATA must be at least 9 bytes, got ${h.length}`);
      this.state = { at: 'data-offset', req, flags: h.flags, length: h.length - 8 };
    } else {
      if (h.length > MAX_CONTROL_PAYLOAD)
        throw new NbdProtocolError(`chunk of type ${h.type} claims ${h.length} bytes, over the ${MAX_CONTROL_PAYLOAD} accepted`);
      this.state = { at: 'payload', req, flags: h.flags, type: h.type, length: h.length };
    }
    return true;
  }

  private simple(req: InFlight, error: number): boolean {
    if (error !== 0) {
      req.error = { error, message: '' };
      this.done(req);
      return true;
    }
    if (req.command === Command.READ) {
      if (this.opts.structuredReplies) throw new NbdProtocolError('simple reply to NBD_CMD_READ although structured replies were negotiated');
      this.addRange(req, req.offset, req.length);
      this.state = { at: 'data', req, flags: ReplyFlag.DONE, pos: 0, remaining: req.length };
      return true;
    }
    if (req.command === Command.BLOCK_STATUS) throw new NbdProtocolError('simple success reply to NBD_CMD_BLOCK_STATUS, which needs a structured reply');
    this.done(req);
    return true;
  }

  private dataOffset(s: State & { at: 'data-offset' }): boolean {
    if (this.queue.available < 8) return false;
    const offset = readSafeU64(this.queue.take(8), 0, 'data chunk offset');
    this.addRange(s.req, offset, s.length);
    this.state = { at: 'data', req: s.req, flags: s.flags, pos: offset - s.req.offset, remaining: s.length };
    return true;
  }

  private data(s: State & { at: 'data' }): boolean {
    const n = Math.min(s.remaining, this.queue.available);
    if (n === 0 && s.remaining > 0) return false;
    const dest = s.req.dest;
    if (dest) this.queue.copyTo(dest, s.req.destAt + s.pos, n);
    else this.queue.skip(n);
    s.pos += n;
    s.remaining -= n;
    if (s.remaining > 0) return false;
    this.state = { at: 'header' };
    if (s.flags & ReplyFlag.DONE) this.finish(s.req);
    return true;
  }

  private chunk(req: InFlight, flags: number, c: Chunk): void {
    switch (c.type) {
      case 'none':
        break;
      case 'data':
        // Only reached for a request that is not a READ (READ data is streamed).
        throw new NbdProtocolError(`data chunk in the reply to a command ${req.command}`);
      case 'hole':
        if (req.command !== Command.READ) throw new NbdProtocolError(`hole chunk in the reply to a command ${req.command}`);
        this.addRange(req, c.offset, c.length);
        req.dest?.fill(0, req.destAt + c.offset - req.offset, req.destAt + c.offset - req.offset + c.length);
        break;
      case 'block-status':
        this.blockStatus(req, c.contextId, c.extents);
        break;
      case 'error':
        if (c.offset !== undefined && (c.offset < req.offset || c.offset >= req.offset + Math.max(req.length, 1)))
          throw new NbdProtocolError(`error chunk offset ${c.offset} lies outside the request [${req.offset}, ${req.offset + req.length})`);
        req.error ??= c;
        break;
    }
    if (flags & ReplyFlag.DONE) this.finish(req);
  }

  private blockStatus(req: InFlight, contextId: number, extents: BlockDescriptor[]): void {
    if (req.command !== Command.BLOCK_STATUS) throw new NbdProtocolError(`block status chunk in the reply to a command ${req.command}`);
    if (!this.opts.contextIds.has(contextId)) throw new NbdProtocolError(`block status for meta context id ${contextId}, which was not negotiated`);
    if (req.statuses.has(contextId)) throw new NbdProtocolError(`two block status chunks for meta context id ${contextId} in one reply`);
    req.statuses.set(contextId, extents);
  }

  /** Records a content range of a READ; refuses one outside the request or overlapping another. */
  private addRange(req: InFlight, offset: number, length: number): void {
    const start = offset;
    const end = offset + length;
    if (start < req.offset || end > req.offset + req.length)
      throw new NbdProtocolError(`content chunk [${start}, ${end}) lies outside the request [${req.offset}, ${req.offset + req.length})`);
    const r = req.ranges;
    let lo = 0;
    let hi = r.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (r[2 * mid + 1]! <= start) lo = mid + 1;
      else hi = mid;
    }
    if (lo < r.length / 2 && r[2 * lo]! < end) throw new NbdProtocolError(`content chunk [${start}, ${end}) overlaps an earlier one`);
    r.splice(2 * lo, 0, start, end);
    req.covered += length;
  }

  private finish(req: InFlight): void {
    if (!req.error) {
      if (req.command === Command.READ && req.covered !== req.length)
        throw new NbdProtocolError(`server ended a read of ${req.length} bytes at ${req.offset} having sent ${req.covered}`);
      if (req.command === Command.BLOCK_STATUS && req.statuses.size === 0)
        throw new NbdProtocolError('server ended a block status reply without any block status chunk');
    }
    this.done(req);
  }
}
