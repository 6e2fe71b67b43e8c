/**
 * One connection of the NBD server (server.ts), as a protocol state machine over bytes: the
 * greeting, the client's flags and the option haggling (NBD_OPT_GO / INFO / EXPORT_NAME /
 * LIST / ABORT / STRUCTURED_REPLY / LIST_META_CONTEXT / SET_META_CONTEXT), then transmission
 * (server-transmission.ts) on the chosen export.
 */
import { ClientFlag, HandshakeFlag, Info, MAX_STRING, NbdProtocolError, Option, OptionReply, TransmissionFlag, decodeString } from './protocol.ts';
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
import type { BlockExport, SessionHost, SessionIo } from './block-export.ts';
import { BASE_ALLOCATION_ID, MAX_INFLIGHT_BYTES, ServerTransmission } from './server-transmission.ts';
import { ByteQueue } from './byte-queue.ts';
/** Option data accepted (names and queries are at most 4096 bytes each; a few of them fit). */
const MAX_OPTION_BYTES = 64 * 1024;
/** Options per handshake: a client looping in option haggling is cut off. */
const MAX_OPTIONS = 256;
const META_BASE_ALLOCATION = 'base:allocation';

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
  private tx: ServerTransmission | undefined;
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
    const full = (this.tx?.inFlightBytes ?? 0) >= MAX_INFLIGHT_BYTES || this.q.available > this.host.maxBlockBytes + MAX_OPTION_BYTES;
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
      case 'transmission': {
        const more = this.tx!.step();
        if (this.tx!.closing) this.phase = 'closing';
        return more;
      }
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
    this.tx = new ServerTransmission({
      host: this.host,
      io: this.io,
      q: this.q,
      exp,
      flags: this.flagsFor(),
      structured: this.structured,
      meta: this.meta !== undefined,
      closed: () => this.phase === 'closed',
      pump: () => this.pump(),
    });
    this.phase = 'transmission';
    this.onTransmission?.();
  }
}
