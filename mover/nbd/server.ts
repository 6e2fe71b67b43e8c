/**
 * A small read-only NBD server (NetworkBlockDevice/nbd `doc/proto.md`): fixed newstyle
 * handshake, NBD_OPT_GO / INFO / EXPORT_NAME / LIST / ABORT / STRUCTURED_REPLY /
 * LIST_META_CONTEXT / SET_META_CONTEXT (`base:allocation`), and the commands READ,
 * BLOCK_STATUS, FLUSH (nothing to flush) and DISC; WRITE, TRIM and WRITE_ZEROES are
 * refused with EPERM. Exports are {@link BlockExport}s, named.
 *
 * Everything a client sends is untrusted: every message is checked before it is used,
 * requests are bounded (`maxBlockBytes`, bytes in flight per connection, options per
 * handshake and their size, a handshake deadline, a connection cap), and a client that
 * breaks the protocol loses its connection, never the process.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { ByteQueue } from './byte-queue.ts';
import { unixNbdUri } from './uri.ts';
import {
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerGreeting,
  parseClientFlags,
  parseGoOption,
  parseMetaContextOption,
  parseOptionHeader,
} from './handshake-wire.ts';
import {
  ChunkType,
  ClientFlag,
  Command,
  CommandFlag,
  decodeString,
  HandshakeFlag,
  Info,
  MAX_STRING,
  NbdProtocolError,
  Option,
  OptionReply,
  ReplyFlag,
  REQUEST_SIZE,
  StateFlag,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  TransmissionFlag,
} from './protocol.ts';
import {
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeOffsetHole,
  encodeSimpleReply,
  parseRequest,
  type BlockDescriptor,
  type Request,
} from './transmission-wire.ts';

/** A read-only block device a server exports. */
export interface BlockExport {
  readonly size: number;
  /** Shown by NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Exactly `length` bytes at `offset` (inside the export); rejects with {@link ExportIoError} when they cannot be read correctly. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * `base:allocation` of [offset, offset + length): descriptors covering exactly that range,
   * in order (a promise where the export looks them up, e.g. in a manifest read piece by
   * piece); rejects with {@link ExportIoError} when they cannot be told.
   */
  allocation(offset: number, length: number): BlockDescriptor[] | Promise<BlockDescriptor[]>;
}

/** A read the export could not serve: the client gets `errno` (EIO by default) and the message, the server lives on. */
export class ExportIoError extends Error {
  readonly errno: number;
  constructor(message: string, errno = Errno.EIO, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExportIoError';
    this.errno = errno;
  }
}

/** The error values this server sends (the spec's, Linux numbering). */
export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** Where a server listens: a unix socket, or a TCP port (127.0.0.1 unless told). */
export type ListenAddress = { socket: string } | { host?: string; port?: number };

export interface ServerLogger {
  info(event: string, fields?: Record<string, unknown>): void;
  error(event: string, fields?: Record<string, unknown>): void;
}

export interface NbdServerOptions {
  /** The exports by name (the disk id). The first one is also the default export (the empty name). */
  exports: ReadonlyMap<string, BlockExport>;
  /** Connections served at once (default 16); more are answered NBD_REP_ERR_POLICY and closed. */
  maxConnections?: number;
  /** Largest READ or BLOCK_STATUS length, and NBD_INFO_BLOCK_SIZE's maximum (default 32 MiB, the spec's interoperable maximum). */
  maxBlockBytes?: number;
  /** The server closes itself after this long with no connection (0: never; default 0). */
  idleTimeoutMs?: number;
  /** A connection must reach transmission within this (default 30 s). */
  handshakeTimeoutMs?: number;
  logger?: ServerLogger;
}

const MiB = 1024 * 1024;
/** Option data accepted (names and queries are at most 4096 bytes each; a few of them fit). */
const MAX_OPTION_BYTES = 64 * 1024;
/** Options per handshake: a client looping in option haggling is cut off. */
const MAX_OPTIONS = 256;
/** Bytes of READ replies in flight per connection beyond the first request (backpressure). */
const MAX_INFLIGHT_BYTES = 32 * MiB;
const META_BASE_ALLOCATION = 'base:allocation';
const BASE_ALLOCATION_ID = 1;

/** What a session needs from its server. */
interface SessionHost {
  readonly exports: ReadonlyMap<string, BlockExport>;
  readonly maxBlockBytes: number;
  readonly logger?: ServerLogger;
  served(bytes: number): void;
}

/** The transport under a session (a socket, or a test's recorder). */
export interface SessionIo {
  /** Writes the buffers in order (as one batch where the transport can), then calls `done`. */
  write(b: Buffer | readonly Buffer[], done?: () => void): void;
  /** Ends the connection after what was written (soft) or at once (hard). */
  end(hard: boolean): void;
  /** Stop/start delivering bytes (backpressure). */
  pause(): void;
  resume(): void;
}

/**
 * One connection's protocol state. Bytes go in with `push`; the session never throws:
 * a protocol violation ends the connection (the spec's hard disconnect) and is logged.
 */
export class NbdServerSession {
  private readonly q = new ByteQueue();
  private phase: 'flags' | 'options' | 'transmission' | 'closing' | 'closed' = 'flags';
  private noZeroes = false;
  private structured = false;
  private meta: { exportName: string } | undefined;
  private options = 0;
  private exp: BlockExport | undefined;
  private expFlags = 0;
  private inFlight = 0;
  private inFlightBytes = 0;
  private paused = false;
  /** Why this connection is refused (over the cap): every option is answered with it. */
  private readonly refusal: string | undefined;
  private readonly host: SessionHost;
  private readonly io: SessionIo;
  /** Called when the session enters transmission (the handshake deadline stops). */
  onTransmission?: () => void;

  constructor(host: SessionHost, io: SessionIo, refusal?: string) {
    this.host = host;
    this.io = io;
    this.refusal = refusal;
    io.write(encodeServerGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  push(chunk: Buffer): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.q.push(chunk);
    this.pump();
  }

  /** The peer went away: nothing more is sent. */
  gone(): void {
    this.phase = 'closed';
  }

  private pump(): void {
    try {
      while (this.phase !== 'closed' && this.phase !== 'closing' && this.step());
    } catch (err) {
      this.hardClose(err instanceof NbdProtocolError ? err.message : `internal error: ${(err as Error).message}`);
    }
    this.flowControl();
  }

  private flowControl(): void {
    const full = this.inFlightBytes >= MAX_INFLIGHT_BYTES || this.q.available > this.host.maxBlockBytes + MAX_OPTION_BYTES;
    if (full && !this.paused) this.io.pause();
    else if (!full && this.paused) this.io.resume();
    this.paused = full;
  }

  private hardClose(reason: string): void {
    if (this.phase === 'closed') return;
    this.host.logger?.error('nbd.disconnect', { reason });
    this.phase = 'closed';
    this.io.end(true);
  }

  /** Handles one message if all of it is here; false when more bytes are needed. */
  private step(): boolean {
    switch (this.phase) {
      case 'flags': {
        if (this.q.available < 4) return false;
        const flags = parseClientFlags(this.q.take(4));
        if (flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) throw new NbdProtocolError(`client set unknown flags 0x${flags.toString(16)}`);
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
        this.phase = 'options';
        return true;
      }
      case 'options':
        // A consumed option header waits here for its data.
        return this.pendingOption ? this.optionData() : this.option();
      case 'transmission':
        return this.request();
      default:
        return false;
    }
  }

  // ---- Option haggling -----------------------------------------------------------------

  private option(): boolean {
    if (this.q.available < 16) return false;
    const header = parseOptionHeader(this.q.take(16));
    if (header.length > MAX_OPTION_BYTES)
      throw new NbdProtocolError(`option ${header.option} carries ${header.length} bytes, over the ${MAX_OPTION_BYTES} accepted`);
    if (++this.options > MAX_OPTIONS) throw new NbdProtocolError(`over ${MAX_OPTIONS} options in one handshake`);
    this.pendingOption = header;
    return this.optionData();
  }

  private pendingOption: { option: number; length: number } | undefined;

  private optionData(): boolean {
    const h = this.pendingOption!;
    if (this.q.available < h.length) return false;
    this.pendingOption = undefined;
    const data = Buffer.from(this.q.take(h.length));
    this.handleOption(h.option, data);
    return true;
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.io.write(encodeOptionReply(option, type, data));
  }

  private refuse(option: number, type: number, message: string): void {
    this.reply(option, type, Buffer.from(message.slice(0, MAX_STRING), 'utf8'));
  }

  private handleOption(option: number, data: Buffer): void {
    if (this.refusal !== undefined) {
      if (option === Option.EXPORT_NAME) return this.hardClose(`refused NBD_OPT_EXPORT_NAME: ${this.refusal}`);
      if (option === Option.ABORT) return this.abort();
      return this.refuse(option, OptionReply.ERR_POLICY, this.refusal);
    }
    switch (option) {
      case Option.EXPORT_NAME: {
        const name = decodeString(data, 'NBD_OPT_EXPORT_NAME export name');
        const exp = this.exportNamed(name);
        // This option cannot fail politely: the spec says terminate.
        if (!exp) return this.hardClose(`NBD_OPT_EXPORT_NAME names unknown export '${name}'`);
        const reply = Buffer.alloc(10 + (this.noZeroes ? 0 : 124));
        reply.writeBigUInt64BE(BigInt(exp.size), 0);
        reply.writeUInt16BE(this.flagsFor(), 8);
        this.io.write(reply);
        if (this.meta && this.meta.exportName !== name) this.meta = undefined;
        return this.enterTransmission(exp);
      }
      case Option.ABORT:
        return this.abort();
      case Option.LIST: {
        if (data.length !== 0) return this.refuse(option, OptionReply.ERR_INVALID, 'NBD_OPT_LIST carries no data');
        for (const name of this.host.exports.keys()) {
          const n = Buffer.from(name, 'utf8');
          const d = Buffer.alloc(4 + n.length);
          d.writeUInt32BE(n.length, 0);
          n.copy(d, 4);
          this.reply(option, OptionReply.SERVER, d);
        }
        return this.reply(option, OptionReply.ACK);
      }
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) return this.refuse(option, OptionReply.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY carries no data');
        this.structured = true;
        return this.reply(option, OptionReply.ACK);
      case Option.INFO:
      case Option.GO:
        return this.go(option, data);
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.metaContext(option, data);
      case Option.STARTTLS:
        return this.refuse(option, OptionReply.ERR_POLICY, 'this export is served without TLS (unix socket, or TCP on the mover host)');
      default:
        return this.refuse(option, OptionReply.ERR_UNSUP, `option ${option} is not supported by this server`);
    }
  }

  private abort(): void {
    this.reply(Option.ABORT, OptionReply.ACK);
    this.phase = 'closing';
    this.io.end(false);
  }

  private exportNamed(name: string): BlockExport | undefined {
    if (name === '') return this.host.exports.values().next().value;
    return this.host.exports.get(name);
  }

  private flagsFor(): number {
    return (
      TransmissionFlag.HAS_FLAGS |
      TransmissionFlag.READ_ONLY |
      TransmissionFlag.SEND_FLUSH |
      TransmissionFlag.CAN_MULTI_CONN |
      (this.structured ? TransmissionFlag.SEND_DF : 0)
    );
  }

  private go(option: number, data: Buffer): void {
    let req;
    try {
      req = parseGoOption(data);
    } catch (err) {
      return this.refuse(option, OptionReply.ERR_INVALID, (err as Error).message);
    }
    const exp = this.exportNamed(req.exportName);
    if (!exp)
      return this.refuse(
        option,
        OptionReply.ERR_UNKNOWN,
        `no export named '${req.exportName}'; this server exports ${[...this.host.exports.keys()].join(', ')}`,
      );
    this.reply(option, OptionReply.INFO, encodeInfoExport(exp.size, this.flagsFor()));
    for (const info of new Set(req.infos)) {
      if (info === Info.NAME)
        this.reply(
          option,
          OptionReply.INFO,
          Buffer.concat([Buffer.from([0, Info.NAME]), Buffer.from(req.exportName || [...this.host.exports.keys()][0]!, 'utf8')]),
        );
      else if (info === Info.DESCRIPTION && exp.description)
        this.reply(option, OptionReply.INFO, Buffer.concat([Buffer.from([0, Info.DESCRIPTION]), Buffer.from(exp.description.slice(0, 1024), 'utf8')]));
      else if (info === Info.BLOCK_SIZE) this.reply(option, OptionReply.INFO, encodeInfoBlockSize(1, 4096, this.host.maxBlockBytes));
    }
    this.reply(option, OptionReply.ACK);
    if (option === Option.GO) {
      if (this.meta && this.meta.exportName !== req.exportName) this.meta = undefined;
      this.enterTransmission(exp);
    }
  }

  private metaContext(option: number, data: Buffer): void {
    const what = option === Option.SET_META_CONTEXT ? 'NBD_OPT_SET_META_CONTEXT' : 'NBD_OPT_LIST_META_CONTEXT';
    if (!this.structured) return this.refuse(option, OptionReply.ERR_INVALID, `${what} needs NBD_OPT_STRUCTURED_REPLY first`);
    let req;
    try {
      req = parseMetaContextOption(data);
    } catch (err) {
      return this.refuse(option, OptionReply.ERR_INVALID, (err as Error).message);
    }
    if (!this.exportNamed(req.exportName)) return this.refuse(option, OptionReply.ERR_UNKNOWN, `no export named '${req.exportName}'`);
    if (option === Option.SET_META_CONTEXT) {
      const selected = req.queries.includes(META_BASE_ALLOCATION);
      this.meta = selected ? { exportName: req.exportName } : undefined;
      if (selected) this.reply(option, OptionReply.META_CONTEXT, encodeMetaContextReply(BASE_ALLOCATION_ID, META_BASE_ALLOCATION));
    } else if (req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === META_BASE_ALLOCATION)) {
      this.reply(option, OptionReply.META_CONTEXT, encodeMetaContextReply(0, META_BASE_ALLOCATION));
    }
    this.reply(option, OptionReply.ACK);
  }

  private enterTransmission(exp: BlockExport): void {
    this.exp = exp;
    this.expFlags = this.flagsFor();
    this.phase = 'transmission';
    this.onTransmission?.();
  }

  // ---- Transmission --------------------------------------------------------------------

  private pendingRequest: Request | undefined;

  private request(): boolean {
    if (!this.pendingRequest) {
      if (this.q.available < REQUEST_SIZE) return false;
      this.pendingRequest = parseRequest(Buffer.from(this.q.take(REQUEST_SIZE)));
    }
    const r = this.pendingRequest;
    if (r.type === Command.WRITE) {
      // Its data follows the header: read and dropped (read-only), or the connection ends if it is over any block we accept.
      if (r.length > this.host.maxBlockBytes)
        throw new NbdProtocolError(`NBD_CMD_WRITE of ${r.length} bytes, over the ${this.host.maxBlockBytes}-byte maximum block`);
      if (this.q.available < r.length) return false;
      this.q.skip(r.length);
      this.pendingRequest = undefined;
      this.error(r, Errno.EPERM, 'this export is read-only');
      return true;
    }
    if (r.type === Command.READ && this.inFlight > 0 && this.inFlightBytes + r.length > MAX_INFLIGHT_BYTES) return false; // resumed when replies drain
    this.pendingRequest = undefined;
    this.handleRequest(r);
    return this.phase === 'transmission';
  }

  private handleRequest(r: Request): void {
    const exp = this.exp!;
    const bounds = (): string | undefined => {
      if (r.length === 0) return 'length 0';
      if (r.length > this.host.maxBlockBytes) return `length ${r.length} is over the ${this.host.maxBlockBytes}-byte maximum block`;
      if (r.offset + r.length > exp.size) return `${r.offset}+${r.length} runs past the export's ${exp.size} bytes`;
      return undefined;
    };
    switch (r.type) {
      case Command.READ: {
        const allowed = this.expFlags & TransmissionFlag.SEND_DF ? CommandFlag.DF : 0;
        if (r.flags & ~allowed) return this.error(r, Errno.EINVAL, `NBD_CMD_READ with unsupported flags 0x${r.flags.toString(16)}`);
        const bad = bounds();
        if (bad) return this.error(r, Errno.EINVAL, `NBD_CMD_READ ${bad}`);
        return this.read(r);
      }
      case Command.BLOCK_STATUS: {
        if (!this.structured || !this.meta) return this.error(r, Errno.EINVAL, 'NBD_CMD_BLOCK_STATUS without a negotiated metadata context');
        if (r.flags & ~CommandFlag.REQ_ONE) return this.error(r, Errno.EINVAL, `NBD_CMD_BLOCK_STATUS with unsupported flags 0x${r.flags.toString(16)}`);
        if (r.length === 0) return this.error(r, Errno.EINVAL, 'NBD_CMD_BLOCK_STATUS length 0');
        if (r.offset + r.length > exp.size)
          return this.error(r, Errno.EINVAL, `NBD_CMD_BLOCK_STATUS ${r.offset}+${r.length} runs past the export's ${exp.size} bytes`);
        return this.blockStatus(r);
      }
      case Command.FLUSH:
        // Nothing is ever written, so everything is as durable as it will be.
        return this.io.write(encodeSimpleReply(0, r.cookie));
      case Command.DISC:
        this.phase = 'closing';
        if (this.inFlight === 0) this.io.end(false);
        return;
      case Command.TRIM:
      case Command.WRITE_ZEROES:
        return this.error(r, Errno.EPERM, 'this export is read-only');
      default:
        return this.error(r, Errno.EINVAL, `command ${r.type} is not supported by this server`);
    }
  }

  /** An error reply: a structured error chunk where negotiated (READ must use one), else a simple reply. */
  private error(r: Request, errno: number, message: string): void {
    if (this.structured) this.io.write(encodeChunk(ReplyFlag.DONE, ChunkType.ERROR, r.cookie, encodeErrorChunk(errno, message.slice(0, MAX_STRING))));
    else this.io.write(encodeSimpleReply(errno, r.cookie));
  }

  /** Counts a request in flight (`bytes` of READ data); the function it returns ends it. */
  private begin(bytes: number): () => void {
    this.inFlight++;
    this.inFlightBytes += bytes;
    return () => {
      this.inFlight--;
      this.inFlightBytes -= bytes;
      if (this.phase === 'closing' && this.inFlight === 0) this.io.end(false);
      else if (this.phase === 'transmission') this.pump();
    };
  }

  /** NBD_CMD_BLOCK_STATUS: in flight like a read while the export looks the extents up. */
  private blockStatus(r: Request): void {
    const finish = this.begin(0);
    Promise.resolve()
      .then(() => this.exp!.allocation(r.offset, r.length))
      .then((all) => {
        if (this.phase === 'closed') return finish();
        const extents = r.flags & CommandFlag.REQ_ONE ? all.slice(0, 1) : all;
        this.io.write(encodeChunk(ReplyFlag.DONE, ChunkType.BLOCK_STATUS, r.cookie, encodeBlockStatus(BASE_ALLOCATION_ID, extents)), finish);
      })
      .catch((err: unknown) => {
        if (!(err instanceof ExportIoError))
          this.host.logger?.error('nbd.block-status.failed', { offset: r.offset, length: r.length, error: (err as Error).message });
        if (this.phase === 'closed') return finish();
        this.error(r, err instanceof ExportIoError ? err.errno : Errno.EIO, (err as Error).message);
        this.io.write(Buffer.alloc(0), finish);
      });
  }

  private read(r: Request): void {
    const exp = this.exp!;
    const finish = this.begin(r.length);
    exp
      .read(r.offset, r.length)
      .then(async (data) => {
        if (data.length !== r.length) throw new ExportIoError(`export returned ${data.length} bytes for a ${r.length}-byte read`);
        const parts = !this.structured || r.flags & CommandFlag.DF ? [{ length: r.length, flags: 0 }] : await exp.allocation(r.offset, r.length);
        if (this.phase === 'closed') return finish();
        this.host.served(r.length);
        if (!this.structured) return this.io.write([encodeSimpleReply(0, r.cookie), data], finish);
        const reply: Buffer[] = [];
        let at = 0;
        parts.forEach((p, i) => {
          const flags = i === parts.length - 1 ? ReplyFlag.DONE : 0;
          const offset = r.offset + at;
          if ((p.flags & (StateFlag.HOLE | StateFlag.ZERO)) === (StateFlag.HOLE | StateFlag.ZERO)) {
            reply.push(encodeChunk(flags, ChunkType.OFFSET_HOLE, r.cookie, encodeOffsetHole(offset, p.length)));
          } else {
            const header = Buffer.alloc(STRUCTURED_HEADER_SIZE + 8);
            header.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
            header.writeUInt16BE(flags, 4);
            header.writeUInt16BE(ChunkType.OFFSET_DATA, 6);
            header.writeBigUInt64BE(r.cookie, 8);
            header.writeUInt32BE(8 + p.length, 16);
            header.writeBigUInt64BE(BigInt(offset), 20);
            reply.push(header, data.subarray(at, at + p.length));
          }
          at += p.length;
        });
        this.io.write(reply, finish);
      })
      .catch((err: unknown) => {
        const errno = err instanceof ExportIoError ? err.errno : Errno.EIO;
        if (!(err instanceof ExportIoError)) this.host.logger?.error('nbd.read.failed', { offset: r.offset, length: r.length, error: (err as Error).message });
        if (this.phase === 'closed') return finish();
        if (this.structured) {
          this.error(r, errno, (err as Error).message);
          return this.io.write(Buffer.alloc(0), finish);
        }
        // A simple reply to a READ has its data after it: an error is the header alone.
        this.io.write(encodeSimpleReply(errno, r.cookie), finish);
      });
  }
}

/** Counters of a server, for progress and results. */
export interface NbdServerStats {
  bytesServed: number;
  connections: number;
  refused: number;
  active: number;
}

/**
 * A listening NBD server. `done` resolves with why it stopped: 'idle' (no connection for
 * `idleTimeoutMs`) or 'closed' (`close()`).
 */
export class NbdServer {
  readonly stats: NbdServerStats = { bytesServed: 0, connections: 0, refused: 0, active: 0 };
  readonly done: Promise<'idle' | 'closed'>;
  private readonly server: Server;
  private readonly o: Required<Omit<NbdServerOptions, 'logger'>> & Pick<NbdServerOptions, 'logger'>;
  private readonly sockets = new Set<Socket>();
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveDone!: (why: 'idle' | 'closed') => void;
  private closing: Promise<void> | undefined;
  address: { socket: string } | { host: string; port: number } = { host: '', port: 0 };

  private constructor(o: NbdServerOptions) {
    if (o.exports.size === 0) throw new RangeError('an NBD server needs at least one export');
    this.o = { maxConnections: 16, maxBlockBytes: 32 * MiB, idleTimeoutMs: 0, handshakeTimeoutMs: 30_000, ...o };
    if (!Number.isInteger(this.o.maxBlockBytes) || this.o.maxBlockBytes < 4096 || this.o.maxBlockBytes > 0xffffffff)
      throw new RangeError(`maxBlockBytes ${this.o.maxBlockBytes} must be a whole number from 4096 to 2^32-1`);
    this.done = new Promise((ok) => (this.resolveDone = ok));
    this.server = createServer((s) => this.accept(s));
  }

  static async listen(address: ListenAddress, o: NbdServerOptions): Promise<NbdServer> {
    const srv = new NbdServer(o);
    await new Promise<void>((ok, fail) => {
      srv.server.once('error', fail);
      if ('socket' in address) srv.server.listen(address.socket, ok);
      else srv.server.listen(address.port ?? 0, address.host ?? '127.0.0.1', ok);
    });
    const a = srv.server.address();
    srv.address = typeof a === 'string' ? { socket: a } : { host: a!.address, port: a!.port };
    srv.armIdle();
    return srv;
  }

  /** An `nbd+unix://` or `nbd://` URI of an export of this server. */
  uri(exportName: string): string {
    const a = this.address;
    return 'socket' in a ? unixNbdUri(a.socket, exportName) : `nbd://${a.host}:${a.port}/${encodeURIComponent(exportName)}`;
  }

  /** Stops listening and ends every connection. */
  close(why: 'idle' | 'closed' = 'closed'): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.idleTimer);
      const closed = new Promise<void>((ok) => this.server.close(() => ok()));
      for (const s of this.sockets) s.destroy();
      await closed;
      this.o.logger?.info('nbd.closed', { why, ...this.stats });
      this.resolveDone(why);
    })();
    return this.closing;
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.o.idleTimeoutMs > 0 && this.stats.active === 0) {
      this.idleTimer = setTimeout(() => void this.close('idle'), this.o.idleTimeoutMs);
    }
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    const over = this.stats.active >= this.o.maxConnections;
    // Refused connections are bounded too: a client opening sockets in a loop gets them closed at once.
    if (over && this.sockets.size >= 2 * this.o.maxConnections) return void socket.destroy();
    this.sockets.add(socket);
    socket.setNoDelay(true);
    if (over) this.stats.refused++;
    else {
      this.stats.active++;
      this.stats.connections++;
      clearTimeout(this.idleTimer);
    }
    const host: SessionHost = {
      exports: this.o.exports,
      maxBlockBytes: this.o.maxBlockBytes,
      served: (n) => (this.stats.bytesServed += n),
      ...(this.o.logger ? { logger: this.o.logger } : {}),
    };
    const session = new NbdServerSession(
      host,
      {
        write: (b, done) => {
          if (socket.destroyed) return done?.();
          if (Buffer.isBuffer(b)) return void socket.write(b, done ? () => done() : undefined);
          // One reply's header and data pieces go out together (one writev), not a packet each.
          socket.cork();
          b.forEach((x, i) => socket.write(x, i === b.length - 1 && done ? () => done() : undefined));
          socket.uncork();
          if (b.length === 0) done?.();
        },
        end: (hard) => (hard ? socket.destroy() : socket.end()),
        pause: () => socket.pause(),
        resume: () => socket.resume(),
      },
      over ? `too many connections: this export serves at most ${this.o.maxConnections} at once` : undefined,
    );
    const deadline = setTimeout(() => {
      this.o.logger?.error('nbd.disconnect', { reason: `no transmission within ${this.o.handshakeTimeoutMs} ms of connecting` });
      socket.destroy();
    }, this.o.handshakeTimeoutMs);
    session.onTransmission = () => clearTimeout(deadline);
    socket.on('data', (d: Buffer) => session.push(d));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(deadline);
      session.gone();
      this.sockets.delete(socket);
      if (!over) {
        this.stats.active--;
        this.armIdle();
      }
    });
  }
}
