/**
 * An NBD client over one connection (opened by connect.ts): READ and BLOCK_STATUS requests
 * (and WRITE and FLUSH, for the DR replica's image writer), any number in flight, matched to their replies by cookie. Every failure the
 * caller sees is a SourceUnavailable naming the export and the cause.
 */
import type { Socket } from 'node:net';
import { SourceUnavailable } from '../../contracts/errors.ts';
import type { ByteQueue } from './byte-queue.ts';
import { messageOf, openConnection } from './connect.ts';
import type { BlockSize, Negotiated } from './handshake.ts';
import { Command, ESHUTDOWN, errorName, NbdProtocolError, TransmissionFlag } from './protocol.ts';
import { encodeRequest } from './transmission-wire.ts';
import { ReplyReceiver, type InFlight } from './receiver.ts';
import type { NbdTlsCredentials } from './tls.ts';
import { describeTarget, parseNbdUri, type NbdTarget } from './uri.ts';

/** Options of {@link NbdClient.connect}. */
export interface NbdConnectOptions {
  /** Metadata contexts to select, e.g. `base:allocation`, `qemu:dirty-bitmap:b0`. */
  metaContexts?: readonly string[];
  /** Aborts connecting; once connected, aborting drops the connection. */
  signal?: AbortSignal;
  /** Deadline of connecting (handshake included) and of every request. */
  timeoutMs?: number;
  /** Credentials for `nbds` targets (required by them; unused by plain ones). */
  tls?: NbdTlsCredentials;
}

/** One block-status extent, in absolute export offsets. */
export interface BlockStatusExtent {
  offset: number;
  length: number;
  flags: number;
}

/** What reads and block-status queries need: an NbdClient or an NbdPool. */
export interface NbdReader {
  readonly size: number;
  readonly exportName: string;
  read(buf: Buffer, offset: number, length: number): Promise<number>;
  blockStatus(context: string, offset: number, length: number): Promise<BlockStatusExtent[]>;
  close(): Promise<void>;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
/** The spec's interoperable READ size: larger reads are split (also under a server's bigger maximum). */
export const MAX_READ = 32 * 1024 * 1024;
/** The largest BLOCK_STATUS length that fits the request's 32-bit field, 64 KiB aligned. */
export const MAX_BLOCK_STATUS = 0xffff0000;

interface Pending extends InFlight {
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** A connected NBD client; see the folder's README for what of the spec it speaks. */
export class NbdClient implements NbdReader {
  /** The export's size in bytes. */
  readonly size: number;
  readonly exportName: string;
  /** The transmission flags (`TransmissionFlag`). */
  readonly transmissionFlags: number;
  /** Selected metadata contexts: name → id. */
  readonly metaContexts: ReadonlyMap<string, number>;
  readonly structuredReplies: boolean;
  /** The size constraints in force (the spec's defaults when the server sent none). */
  readonly blockSize: BlockSize;
  private readonly socket: Socket;
  private readonly queue: ByteQueue;
  private readonly what: string;
  private readonly timeoutMs: number;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private failure: SourceUnavailable | undefined;
  private closing = false;
  private readonly closed: Promise<void>;

  private constructor(socket: Socket, queue: ByteQueue, target: NbdTarget, n: Negotiated, timeoutMs: number) {
    this.socket = socket;
    this.queue = queue;
    this.what = describeTarget(target);
    this.timeoutMs = timeoutMs;
    this.size = n.size;
    this.exportName = target.exportName;
    this.transmissionFlags = n.transmissionFlags;
    this.metaContexts = n.metaContexts;
    this.structuredReplies = n.structuredReplies;
    this.blockSize = n.blockSize ?? { minimum: 1, preferred: 4096, maximum: MAX_READ };
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.listen(
      new ReplyReceiver(
        queue,
        (c) => this.pending.get(c),
        (r) => this.settle(r as Pending),
        { structuredReplies: n.structuredReplies, contextIds: new Set(n.metaContexts.values()) },
      ),
    );
  }

  /**
   * Connects to an NBD URI (or a parsed target) and negotiates the export (connect.ts; a TLS
   * target negotiates NBD_OPT_STARTTLS first and fails rather than go on in clear text).
   */
  static async connect(target: string | NbdTarget, opts: NbdConnectOptions = {}): Promise<NbdClient> {
    const t = typeof target === 'string' ? parseNbdUri(target) : target;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const c = await openConnection(t, { ...opts, timeoutMs });
    const client = new NbdClient(c.socket, c.queue, t, c.negotiated, timeoutMs);
    client.watch(opts.signal);
    return client;
  }

  /** Whether several connections to this export may share the work (see NbdPool). */
  get canMultiConn(): boolean {
    return (this.transmissionFlags & TransmissionFlag.CAN_MULTI_CONN) !== 0;
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0;
  }

  /** Requests sent and not answered (nor given up). */
  get inFlight(): number {
    return this.pending.size;
  }

  /** The largest single READ this client sends. */
  get maxRead(): number {
    return Math.min(MAX_READ, this.blockSize.maximum);
  }

  /**
   * Reads `length` bytes at `offset` into `buf` (short only at the export's end; returns
   * the count). Holes arrive as zeros. Reads over {@link maxRead} go as several requests.
   */
  async read(buf: Buffer, offset: number, length: number): Promise<number> {
    const n = this.clampRange(offset, length, buf.length, 'read');
    const pieces: Promise<void>[] = [];
    for (let done = 0; done < n; done += this.maxRead) {
      pieces.push(this.readPiece(buf, done, offset + done, Math.min(this.maxRead, n - done)));
    }
    await Promise.all(pieces);
    return n;
  }

  private readPiece(buf: Buffer, at: number, offset: number, length: number): Promise<void> {
    return this.send(Command.READ, offset, length, buf, at).then(() => undefined);
  }

  /**
   * The status of [offset, offset + length) in metadata context `context`, as the server
   * reports it: possibly less than asked (ask again from the end of the last extent).
   */
  async blockStatus(context: string, offset: number, length: number): Promise<BlockStatusExtent[]> {
    const id = this.metaContexts.get(context);
    if (id === undefined)
      throw new SourceUnavailable(`${this.what} has no metadata context '${context}' (selected: ${[...this.metaContexts.keys()].join(', ') || 'none'})`);
    const n = Math.min(this.clampRange(offset, length, Infinity, 'block status'), MAX_BLOCK_STATUS);
    if (n === 0) return [];
    const req = await this.send(Command.BLOCK_STATUS, offset, n);
    const descriptors = req.statuses.get(id);
    if (!descriptors) throw this.fail(new NbdProtocolError(`block status reply lacks context '${context}'`));
    return toExtents(descriptors, offset, n);
  }

  /**
   * Writes `data` at `offset` (NBD_CMD_WRITE; split at {@link maxRead}). For writers of
   * images (the DR replica's qcow2 layers through `qemu-nbd`); a read-only export refuses.
   */
  async write(data: Buffer, offset: number): Promise<void> {
    if (this.readOnly) throw new SourceUnavailable(`${this.what} is read-only: cannot write ${data.length} bytes at ${offset}`);
    const n = this.clampRange(offset, data.length, data.length, 'write');
    if (n !== data.length) throw new RangeError(`write of ${this.what}: ${data.length} bytes at ${offset} run past its ${this.size} bytes`);
    const pieces: Promise<unknown>[] = [];
    for (let done = 0; done < n; done += this.maxRead) {
      const piece = data.subarray(done, Math.min(n, done + this.maxRead));
      pieces.push(this.send(Command.WRITE, offset + done, piece.length, undefined, 0, piece));
    }
    await Promise.all(pieces);
  }

  /** NBD_CMD_FLUSH: every write answered so far is on stable storage. */
  async flush(): Promise<void> {
    await this.send(Command.FLUSH, 0, 0);
  }

  /** Sends NBD_CMD_DISC and closes; requests still in flight are answered first by the server. */
  async close(): Promise<void> {
    if (!this.closing && !this.failure) {
      this.closing = true;
      this.socket.write(encodeRequest({ flags: 0, type: Command.DISC, cookie: 0n, offset: 0, length: 0 }));
      this.socket.end();
    }
    this.closing = true;
    const timer = setTimeout(() => this.socket.destroy(), this.timeoutMs);
    await this.closed;
    clearTimeout(timer);
  }

  private clampRange(offset: number, length: number, room: number, what: string): number {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset > this.size) {
      throw new RangeError(`${what} of ${this.what}: offset ${offset} and length ${length} are not within its ${this.size} bytes`);
    }
    if (length > room) throw new RangeError(`${what} of ${this.what}: ${length} bytes do not fit a ${room}-byte buffer`);
    const n = Math.min(length, this.size - offset);
    const min = this.blockSize.minimum;
    if (offset % min !== 0 || (n % min !== 0 && offset + n !== this.size))
      throw new RangeError(`${what} of ${this.what}: offset ${offset} and length ${n} are not aligned to its ${min}-byte blocks`);
    return n;
  }

  private send(command: number, offset: number, length: number, dest?: Buffer, destAt = 0, payload?: Buffer): Promise<InFlight> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new SourceUnavailable(`${this.what} is closed`));
    const cookie = this.nextCookie++;
    return new Promise<InFlight>((resolve, reject) => {
      const req: Pending = {
        cookie,
        command,
        offset,
        length,
        dest,
        destAt,
        ranges: [],
        covered: 0,
        statuses: new Map(),
        resolve: () => resolve(req),
        reject,
        timer: setTimeout(() => this.expire(req), this.timeoutMs),
      };
      this.pending.set(cookie, req);
      this.socket.write(encodeRequest({ flags: 0, type: command, cookie, offset, length }));
      if (payload) this.socket.write(payload);
    });
  }

  /** A request's reply is complete. */
  private settle(req: Pending): void {
    this.pending.delete(req.cookie);
    clearTimeout(req.timer);
    if (!req.error) return req.resolve();
    const at = req.error.offset === undefined ? '' : ` (at byte ${req.error.offset})`;
    req.reject(
      new SourceUnavailable(
        `${this.what} failed ${commandName(req.command)} of ${req.length} bytes at ${req.offset}: ${errorName(req.error.error)}${at}${req.error.message ? `: ${req.error.message}` : ''}`,
      ),
    );
    // The spec: a client seeing ESHUTDOWN must disconnect.
    if (req.error.error === ESHUTDOWN) void this.close();
  }

  /**
   * The deadline passed: the caller gets an error now. The request stays known by cookie
   * so a late reply is parsed and dropped, never written into a buffer its caller may
   * have reused.
   */
  private expire(req: Pending): void {
    req.dest = undefined;
    req.reject(
      new SourceUnavailable(`${this.what} did not answer ${commandName(req.command)} of ${req.length} bytes at ${req.offset} within ${this.timeoutMs} ms`),
    );
    req.resolve = () => {};
    req.reject = () => {};
  }

  private listen(receiver: ReplyReceiver): void {
    const pump = () => {
      try {
        receiver.pump();
      } catch (err) {
        this.fail(err);
      }
    };
    this.socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      pump();
    });
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => {
      const why = receiver.midMessage ? 'server closed the connection in the middle of a reply' : 'server closed the connection';
      this.fail(new Error(this.closing ? 'the connection was closed by the client' : why));
    });
    this.socket.resume();
    pump(); // bytes that came with the end of the handshake
  }

  /** Drops the connection and fails every request in flight with the cause. */
  private fail(err: unknown): SourceUnavailable {
    if (!this.failure) {
      const n = this.pending.size;
      this.failure = new SourceUnavailable(`${this.what}: ${messageOf(err)}${n ? ` (${n} requests in flight)` : ''}`, err);
      this.socket.destroy();
    }
    for (const req of this.pending.values()) {
      clearTimeout(req.timer);
      req.reject(this.failure);
    }
    this.pending.clear();
    return this.failure;
  }

  private watch(signal: AbortSignal | undefined): void {
    if (!signal) return;
    const onAbort = () => this.fail(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    void this.closed.then(() => signal.removeEventListener('abort', onAbort));
  }
}

/** Descriptors from `offset` on → absolute extents, clipped to the `length` asked (the last may run past it). */
function toExtents(descriptors: readonly { length: number; flags: number }[], offset: number, length: number): BlockStatusExtent[] {
  const end = offset + length;
  const out: BlockStatusExtent[] = [];
  let at = offset;
  for (const d of descriptors) {
    if (at >= end) break;
    const n = Math.min(d.length, end - at);
    out.push({ offset: at, length: n, flags: d.flags });
    at += n;
  }
  return out;
}

function commandName(command: number): string {
  return command === Command.READ
    ? 'READ'
    : command === Command.BLOCK_STATUS
      ? 'BLOCK_STATUS'
      : command === Command.WRITE
        ? 'WRITE'
        : command === Command.FLUSH
          ? 'FLUSH'
          : `command ${command}`;
}
