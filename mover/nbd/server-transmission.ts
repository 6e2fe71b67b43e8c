/**
 * The transmission phase of one server connection (server-session.ts hands over to it once
 * the client chose an export): requests parsed from the connection's bytes, READ and
 * BLOCK_STATUS answered from the export (replies may come out of order), bytes of READ
 * replies in flight bounded, FLUSH answered, writes refused, DISC honoured once in-flight
 * replies are sent.
 */
import {
  ChunkType,
  Command,
  CommandFlag,
  MAX_STRING,
  NbdProtocolError,
  REQUEST_SIZE,
  ReplyFlag,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  StateFlag,
  TransmissionFlag,
} from './protocol.ts';
import { type Request, encodeBlockStatus, encodeChunk, encodeErrorChunk, encodeOffsetHole, encodeSimpleReply, parseRequest } from './transmission-wire.ts';
import { type BlockExport, Errno, ExportIoError, type SessionHost, type SessionIo } from './block-export.ts';
import { ByteQueue } from './byte-queue.ts';
/** Bytes of READ replies in flight per connection beyond the first request (backpressure). */
export const MAX_INFLIGHT_BYTES = 32 * 1024 * 1024;
/** The id this server gives `base:allocation`. */
export const BASE_ALLOCATION_ID = 1;

/** What transmission needs of its connection. */
export interface TransmissionContext {
  readonly host: SessionHost;
  readonly io: SessionIo;
  readonly q: ByteQueue;
  readonly exp: BlockExport;
  /** The transmission flags sent with the export. */
  readonly flags: number;
  readonly structured: boolean;
  /** Whether `base:allocation` was selected for this export. */
  readonly meta: boolean;
  /** The peer is gone: nothing more is sent. */
  closed(): boolean;
  /** Looks at the bytes waiting again (a reply drained, room for more requests). */
  pump(): void;
}

export class ServerTransmission {
  inFlight = 0;
  inFlightBytes = 0;
  /** The client sent DISC: the connection ends once the replies in flight are sent. */
  closing = false;
  private readonly c: TransmissionContext;

  constructor(c: TransmissionContext) {
    this.c = c;
  }

  private pendingRequest: Request | undefined;

  /** Handles one request if all of it is here; false when more bytes are needed, replies must drain first, or the client said DISC. */
  step(): boolean {
    if (!this.pendingRequest) {
      if (this.c.q.available < REQUEST_SIZE) return false;
      this.pendingRequest = parseRequest(Buffer.from(this.c.q.take(REQUEST_SIZE)));
    }
    const r = this.pendingRequest;
    if (r.type === Command.WRITE) {
      // Its data follows the header: read and dropped (read-only), or the connection ends if it is over any block we accept.
      if (r.length > this.c.host.maxBlockBytes)
        throw new NbdProtocolError(`NBD_CMD_WRITE of ${r.length} bytes, over the ${this.c.host.maxBlockBytes}-byte maximum block`);
      if (this.c.q.available < r.length) return false;
      this.c.q.skip(r.length);
      this.pendingRequest = undefined;
      this.error(r, Errno.EPERM, 'this export is read-only');
      return true;
    }
    if (r.type === Command.READ && this.inFlight > 0 && this.inFlightBytes + r.length > MAX_INFLIGHT_BYTES) return false; // resumed when replies drain
    this.pendingRequest = undefined;
    this.handleRequest(r);
    return !this.closing;
  }

  private handleRequest(r: Request): void {
    const exp = this.c.exp;
    const bounds = (): string | undefined => {
      if (r.length === 0) return 'length 0';
      if (r.length > this.c.host.maxBlockBytes) return `length ${r.length} is over the ${this.c.host.maxBlockBytes}-byte maximum block`;
      if (r.offset + r.length > exp.size) return `${r.offset}+${r.length} runs past the export's ${exp.size} bytes`;
      return undefined;
    };
    switch (r.type) {
      case Command.READ: {
        const allowed = this.c.flags & TransmissionFlag.SEND_DF ? CommandFlag.DF : 0;
        if (r.flags & ~allowed) return this.error(r, Errno.EINVAL, `NBD_CMD_READ with unsupported flags 0x${r.flags.toString(16)}`);
        const bad = bounds();
        if (bad) return this.error(r, Errno.EINVAL, `NBD_CMD_READ ${bad}`);
        return this.read(r);
      }
      case Command.BLOCK_STATUS: {
        if (!this.c.structured || !this.c.meta) return this.error(r, Errno.EINVAL, 'NBD_CMD_BLOCK_STATUS without a negotiated metadata context');
        if (r.flags & ~CommandFlag.REQ_ONE) return this.error(r, Errno.EINVAL, `NBD_CMD_BLOCK_STATUS with unsupported flags 0x${r.flags.toString(16)}`);
        if (r.length === 0) return this.error(r, Errno.EINVAL, 'NBD_CMD_BLOCK_STATUS length 0');
        if (r.offset + r.length > exp.size)
          return this.error(r, Errno.EINVAL, `NBD_CMD_BLOCK_STATUS ${r.offset}+${r.length} runs past the export's ${exp.size} bytes`);
        return this.blockStatus(r);
      }
      case Command.FLUSH:
        // Nothing is ever written, so everything is as durable as it will be.
        return this.c.io.write(encodeSimpleReply(0, r.cookie));
      case Command.DISC:
        this.closing = true;
        if (this.inFlight === 0) this.c.io.end(false);
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
    if (this.c.structured) this.c.io.write(encodeChunk(ReplyFlag.DONE, ChunkType.ERROR, r.cookie, encodeErrorChunk(errno, message.slice(0, MAX_STRING))));
    else this.c.io.write(encodeSimpleReply(errno, r.cookie));
  }

  /** Counts a request in flight (`bytes` of READ data); the function it returns ends it. */
  private begin(bytes: number): () => void {
    this.inFlight++;
    this.inFlightBytes += bytes;
    return () => {
      this.inFlight--;
      this.inFlightBytes -= bytes;
      if (this.closing && this.inFlight === 0) this.c.io.end(false);
      else if (!this.closing) this.c.pump();
    };
  }

  /** NBD_CMD_BLOCK_STATUS: in flight like a read while the export looks the extents up. */
  private blockStatus(r: Request): void {
    const finish = this.begin(0);
    Promise.resolve()
      .then(() => this.c.exp.allocation(r.offset, r.length))
      .then((all) => {
        if (this.c.closed()) return finish();
        const extents = r.flags & CommandFlag.REQ_ONE ? all.slice(0, 1) : all;
        this.c.io.write(encodeChunk(ReplyFlag.DONE, ChunkType.BLOCK_STATUS, r.cookie, encodeBlockStatus(BASE_ALLOCATION_ID, extents)), finish);
      })
      .catch((err: unknown) => {
        if (!(err instanceof ExportIoError))
          this.c.host.logger?.error('nbd.block-status.failed', { offset: r.offset, length: r.length, error: (err as Error).message });
        if (this.c.closed()) return finish();
        this.error(r, err instanceof ExportIoError ? err.errno : Errno.EIO, (err as Error).message);
        this.c.io.write(Buffer.alloc(0), finish);
      });
  }

  private read(r: Request): void {
    const exp = this.c.exp;
    const finish = this.begin(r.length);
    exp
      .read(r.offset, r.length)
      .then(async (data) => {
        if (data.length !== r.length) throw new ExportIoError(`export returned ${data.length} bytes for a ${r.length}-byte read`);
        const parts = !this.c.structured || r.flags & CommandFlag.DF ? [{ length: r.length, flags: 0 }] : await exp.allocation(r.offset, r.length);
        if (this.c.closed()) return finish();
        this.c.host.served(r.length);
        if (!this.c.structured) return this.c.io.write([encodeSimpleReply(0, r.cookie), data], finish);
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
        this.c.io.write(reply, finish);
      })
      .catch((err: unknown) => {
        const errno = err instanceof ExportIoError ? err.errno : Errno.EIO;
        if (!(err instanceof ExportIoError))
          this.c.host.logger?.error('nbd.read.failed', { offset: r.offset, length: r.length, error: (err as Error).message });
        if (this.c.closed()) return finish();
        if (this.c.structured) {
          this.error(r, errno, (err as Error).message);
          return this.c.io.write(Buffer.alloc(0), finish);
        }
        // A simple reply to a READ has its data after it: an error is the header alone.
        this.c.io.write(encodeSimpleReply(errno, r.cookie), finish);
      });
  }
}
