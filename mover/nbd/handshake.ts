/**
 * The fixed newstyle handshake, as a client: TLS first when asked (NBD_OPT_STARTTLS, and
 * nothing else is sent or believed in clear text), then structured replies, the metadata contexts
 * asked for, then NBD_OPT_GO with NBD_INFO_BLOCK_SIZE (NBD_OPT_EXPORT_NAME when the
 * server has no NBD_OPT_GO). Runs over any byte channel, so a test can drive it.
 */
import {
  encodeClientFlags,
  encodeGoOption,
  encodeMetaContextOption,
  encodeOption,
  encodeStructuredReplyOption,
  isOptionError,
  optionReplyName,
  parseExportNameReply,
  parseInfoReply,
  parseMetaContextReply,
  parseOptionErrorMessage,
  parseOptionReplyHeader,
  parseServerGreeting,
  type OptionReplyHeader,
} from './handshake-wire.ts';
import {
  ClientFlag,
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_ZEROES,
  GREETING_SIZE,
  HandshakeFlag,
  Info,
  NbdProtocolError,
  Option,
  OPTION_REPLY_HEADER_SIZE,
  OptionReply,
  TransmissionFlag,
} from './protocol.ts';

/** The byte channel the handshake runs over. */
export interface HandshakeIO {
  /** Resolves with exactly `n` bytes, or rejects when the connection ends first. */
  read(n: number): Promise<Buffer>;
  write(bytes: Buffer): void;
}

/** The server's size constraints (spec defaults when it sent none). */
export interface BlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

/** What the handshake agreed on. */
export interface Negotiated {
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Selected metadata contexts: name → id (ids are per connection). */
  metaContexts: Map<string, number>;
  /** Undefined when the server advertised none (the spec's defaults apply). */
  blockSize?: BlockSize;
}

/** The server refused an option for a reason it stated; `reply` is the error type. */
export class OptionRefused extends Error {
  readonly reply: number;
  readonly option: number;
  constructor(reply: number, option: number, message: string) {
    super(message);
    this.name = 'OptionRefused';
    this.reply = reply;
    this.option = option;
  }
}

/** Options of {@link handshake}. */
export interface HandshakeOptions {
  /**
   * TLS is required: NBD_OPT_STARTTLS is the first option, and once the server ACKs it,
   * `startTls` wraps the connection and returns the channel the rest of the handshake
   * runs over. A server that refuses fails the handshake; there is no clear-text fallback.
   */
  startTls?: () => Promise<HandshakeIO>;
}

/** Runs the handshake for `exportName`, asking for `metaContexts` (may be none). */
export async function handshake(plain: HandshakeIO, exportName: string, metaContexts: readonly string[], opts: HandshakeOptions = {}): Promise<Negotiated> {
  const { handshakeFlags } = parseServerGreeting(await plain.read(GREETING_SIZE));
  if (!(handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE)) throw new NbdProtocolError('server does not offer fixed newstyle negotiation');
  const noZeroes = (handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
  plain.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)));
  const io = opts.startTls ? await startTls(plain, opts.startTls) : plain;

  const structuredReplies = await negotiateStructuredReplies(io);
  // Block status needs structured replies; without them no context can be selected.
  const contexts = structuredReplies && metaContexts.length > 0 ? await selectMetaContexts(io, exportName, metaContexts) : new Map<string, number>();
  const go = await optGo(io, exportName, noZeroes);
  if (!(go.transmissionFlags & TransmissionFlag.HAS_FLAGS)) throw new NbdProtocolError('transmission flags lack NBD_FLAG_HAS_FLAGS');
  return { ...go, structuredReplies, metaContexts: contexts };
}

/**
 * NBD_OPT_STARTTLS: only an ACK without data lets the handshake go on, through TLS. Any
 * other answer (NBD_REP_ERR_UNSUP from a server without TLS, NBD_REP_ERR_POLICY, ...)
 * ends it: the caller asked for TLS, and the spec forbids a downgrade.
 */
async function startTls(io: HandshakeIO, wrap: () => Promise<HandshakeIO>): Promise<HandshakeIO> {
  io.write(encodeOption(Option.STARTTLS));
  const { header, data } = await readOptionReply(io, Option.STARTTLS);
  if (header.type === OptionReply.ACK) {
    if (data.length !== 0) throw new NbdProtocolError('NBD_REP_ACK to NBD_OPT_STARTTLS carries data');
    return wrap();
  }
  if (isOptionError(header.type)) {
    const text = parseOptionErrorMessage(data);
    throw new OptionRefused(
      header.type,
      Option.STARTTLS,
      `the server refused TLS (NBD_OPT_STARTTLS: ${optionReplyName(header.type)}${text ? `: ${text}` : ''}); TLS is required, so the client does not go on in clear text: enable TLS on the server (libvirt: backup_tls_x509_cert_dir in qemu.conf) or, on a trusted network only, use a plain nbd:// export`,
    );
  }
  throw new NbdProtocolError(`unexpected ${optionReplyName(header.type)} to NBD_OPT_STARTTLS`);
}

async function readOptionReply(io: HandshakeIO, option: number): Promise<{ header: OptionReplyHeader; data: Buffer }> {
  const header = parseOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_SIZE));
  if (header.option !== option) throw new NbdProtocolError(`option reply is for option ${header.option}, expected ${option}`);
  const data = header.length === 0 ? Buffer.alloc(0) : await io.read(header.length);
  return { header, data };
}

function refused(option: number, header: OptionReplyHeader, data: Buffer): OptionRefused {
  const text = parseOptionErrorMessage(data);
  const hint = header.type === OptionReply.ERR_TLS_REQD ? ' (the server requires TLS: use an nbds:// URI, i.e. "tls": true in the host\'s "exports")' : '';
  return new OptionRefused(header.type, option, `${optionReplyName(header.type)}${text ? `: ${text}` : ''}${hint}`);
}

async function negotiateStructuredReplies(io: HandshakeIO): Promise<boolean> {
  io.write(encodeStructuredReplyOption());
  const { header, data } = await readOptionReply(io, Option.STRUCTURED_REPLY);
  if (header.type === OptionReply.ACK) {
    if (data.length !== 0) throw new NbdProtocolError('NBD_REP_ACK to NBD_OPT_STRUCTURED_REPLY carries data');
    return true;
  }
  if (isOptionError(header.type)) {
    if (header.type === OptionReply.ERR_SHUTDOWN) throw refused(Option.STRUCTURED_REPLY, header, data);
    // An older server: simple replies only (reads still work, block status does not).
    return false;
  }
  throw new NbdProtocolError(`unexpected ${optionReplyName(header.type)} to NBD_OPT_STRUCTURED_REPLY`);
}

async function selectMetaContexts(io: HandshakeIO, exportName: string, queries: readonly string[]): Promise<Map<string, number>> {
  io.write(encodeMetaContextOption(exportName, queries));
  const contexts = new Map<string, number>();
  for (;;) {
    const { header, data } = await readOptionReply(io, Option.SET_META_CONTEXT);
    if (header.type === OptionReply.META_CONTEXT) {
      const { id, name } = parseMetaContextReply(data);
      contexts.set(name, id);
    } else if (header.type === OptionReply.ACK) {
      return contexts;
    } else if (isOptionError(header.type)) {
      if (header.type === OptionReply.ERR_SHUTDOWN) throw refused(Option.SET_META_CONTEXT, header, data);
      // The spec: a failed SET_META_CONTEXT selects nothing. Block status then reports
      // the context as missing, naming it.
      return new Map();
    } else {
      throw new NbdProtocolError(`unexpected ${optionReplyName(header.type)} to NBD_OPT_SET_META_CONTEXT`);
    }
  }
}

async function optGo(io: HandshakeIO, exportName: string, noZeroes: boolean): Promise<Omit<Negotiated, 'structuredReplies' | 'metaContexts'>> {
  io.write(encodeGoOption(exportName, [Info.BLOCK_SIZE]));
  let exportInfo: { size: number; flags: number } | undefined;
  let blockSize: BlockSize | undefined;
  for (;;) {
    const { header, data } = await readOptionReply(io, Option.GO);
    if (header.type === OptionReply.INFO) {
      const info = parseInfoReply(data);
      if (info.info === 'export') exportInfo = info;
      else if (info.info === 'block-size') blockSize = { minimum: info.minimum, preferred: info.preferred, maximum: info.maximum };
    } else if (header.type === OptionReply.ACK) {
      if (!exportInfo) throw new NbdProtocolError('server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
      return { size: exportInfo.size, transmissionFlags: exportInfo.flags, ...(blockSize && { blockSize }) };
    } else if (header.type === OptionReply.ERR_UNSUP) {
      return exportNameFallback(io, exportName, noZeroes);
    } else if (isOptionError(header.type)) {
      throw refused(Option.GO, header, data);
    } else {
      throw new NbdProtocolError(`unexpected ${optionReplyName(header.type)} to NBD_OPT_GO`);
    }
  }
}

async function exportNameFallback(io: HandshakeIO, exportName: string, noZeroes: boolean): Promise<{ size: number; transmissionFlags: number }> {
  io.write(encodeOption(Option.EXPORT_NAME, Buffer.from(exportName, 'utf8')));
  const { size, flags } = parseExportNameReply(await io.read(EXPORT_NAME_REPLY_SIZE));
  if (!noZeroes) await io.read(EXPORT_NAME_ZEROES);
  return { size, transmissionFlags: flags };
}
