/**
 * The NBD handshake's wire format (NetworkBlockDevice/nbd `doc/proto.md`): the greeting,
 * client flags, option requests and option replies (NBD_OPT_GO/INFO, meta contexts,
 * NBD_REP_INFO). Pure encoders and parsers; each parser throws {@link NbdProtocolError} on
 * anything malformed.
 */
import {
  CLISERV_MAGIC,
  EXPORT_NAME_REPLY_SIZE,
  GREETING_SIZE,
  IHAVEOPT,
  Info,
  MAX_CONTROL_PAYLOAD,
  MAX_STRING,
  NBDMAGIC,
  NbdProtocolError,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  Option,
  OptionReply,
  REP_ERR,
  decodeString,
  encodeString,
  expectLength,
  readSafeU64,
} from './protocol.ts';

/** The server's opening of the newstyle handshake. */
export interface ServerGreeting {
  handshakeFlags: number;
}

/** Parses the 18-byte newstyle greeting; refuses old-style servers. */
export function parseServerGreeting(buf: Buffer): ServerGreeting {
  if (buf.length < 16) throw new NbdProtocolError(`greeting must be ${GREETING_SIZE} bytes, got ${buf.length}`);
  if (buf.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdProtocolError(`greeting does not start with NBDMAGIC (got 0x${buf.readBigUInt64BE(0).toString(16)})`);
  const second = buf.readBigUInt64BE(8);
  if (second === CLISERV_MAGIC) throw new NbdProtocolError('server speaks the old-style handshake, which has no named exports and is not supported');
  if (second !== IHAVEOPT) throw new NbdProtocolError(`greeting's second magic is not IHAVEOPT (got 0x${second.toString(16)})`);
  expectLength(buf, GREETING_SIZE, 'greeting');
  return { handshakeFlags: buf.readUInt16BE(16) };
}

/** Encodes the server's greeting (for test servers). */
export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(GREETING_SIZE);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** The client's 32-bit flags answering the greeting. */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** Parses the client's flags (for test servers). */
export function parseClientFlags(buf: Buffer): number {
  expectLength(buf, 4, 'client flags');
  return buf.readUInt32BE(0);
}

// ---- Options ---------------------------------------------------------------------------

/** An option request: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

/** A parsed option request header (for test servers). */
export interface OptionHeader {
  option: number;
  length: number;
}

/** Parses the 16-byte header of an option request. */
export function parseOptionHeader(buf: Buffer): OptionHeader {
  expectLength(buf, 16, 'option header');
  if (buf.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError('option request does not start with IHAVEOPT');
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

/** NBD_OPT_STRUCTURED_REPLY: no data. */
export function encodeStructuredReplyOption(): Buffer {
  return encodeOption(Option.STRUCTURED_REPLY);
}

/** NBD_OPT_GO (or NBD_OPT_INFO): the export's name and the information requests. */
export function encodeGoOption(exportName: string, infos: readonly number[], option: number = Option.GO): Buffer {
  const name = encodeString(exportName, 'export name');
  const data = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  data.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((info, i) => data.writeUInt16BE(info, 6 + name.length + 2 * i));
  return encodeOption(option, data);
}

/** NBD_OPT_GO's data (for test servers). */
export interface GoRequest {
  exportName: string;
  infos: number[];
}

/** Parses NBD_OPT_GO/NBD_OPT_INFO data. */
export function parseGoOption(data: Buffer): GoRequest {
  if (data.length < 6) throw new NbdProtocolError(`NBD_OPT_GO data must be at least 6 bytes, got ${data.length}`);
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) throw new NbdProtocolError(`NBD_OPT_GO export name length ${nameLength} runs past its ${data.length}-byte data`);
  const exportName = decodeString(data.subarray(4, 4 + nameLength), 'NBD_OPT_GO export name');
  const count = data.readUInt16BE(4 + nameLength);
  expectLength(data, 6 + nameLength + 2 * count, `NBD_OPT_GO with ${count} information requests`);
  const infos = Array.from({ length: count }, (_, i) => data.readUInt16BE(6 + nameLength + 2 * i));
  return { exportName, infos };
}

/** NBD_OPT_SET_META_CONTEXT (or LIST_META_CONTEXT): export name and queries. */
export function encodeMetaContextOption(exportName: string, queries: readonly string[], option: number = Option.SET_META_CONTEXT): Buffer {
  const name = encodeString(exportName, 'export name');
  const qs = queries.map((q) => encodeString(q, `meta context query '${q}'`));
  const data = Buffer.alloc(4 + name.length + 4 + qs.reduce((n, q) => n + 4 + q.length, 0));
  let at = data.writeUInt32BE(name.length, 0);
  at += name.copy(data, at);
  at = data.writeUInt32BE(qs.length, at);
  for (const q of qs) {
    at = data.writeUInt32BE(q.length, at);
    at += q.copy(data, at);
  }
  return encodeOption(option, data);
}

/** NBD_OPT_SET_META_CONTEXT's data (for test servers). */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Parses NBD_OPT_SET_META_CONTEXT/LIST_META_CONTEXT data. */
export function parseMetaContextOption(data: Buffer): MetaContextRequest {
  let at = 0;
  const field = (what: string): string => {
    if (at + 4 > data.length) throw new NbdProtocolError(`${what} length runs past the option's ${data.length} bytes`);
    const n = data.readUInt32BE(at);
    if (n > data.length - at - 4) throw new NbdProtocolError(`${what} length ${n} runs past the option's ${data.length} bytes`);
    at += 4 + n;
    return decodeString(data.subarray(at - n, at), what);
  };
  const exportName = field('meta context export name');
  if (at + 4 > data.length) throw new NbdProtocolError('meta context option lacks its query count');
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(field(`meta context query ${i}`));
  if (at !== data.length) throw new NbdProtocolError(`meta context option has ${data.length - at} bytes after its last query`);
  return { exportName, queries };
}

/** An option reply's header; its payload (`length` bytes) follows. */
export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** Parses the 20-byte option reply header. */
export function parseOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  expectLength(buf, OPTION_REPLY_HEADER_SIZE, 'option reply header');
  const magic = buf.readBigUInt64BE(0);
  if (magic !== OPTION_REPLY_MAGIC) throw new NbdProtocolError(`option reply has wrong magic 0x${magic.toString(16)}`);
  const header = { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
  if (header.length > MAX_CONTROL_PAYLOAD)
    throw new NbdProtocolError(`option reply claims ${header.length} bytes of data, over the ${MAX_CONTROL_PAYLOAD} accepted`);
  return header;
}

/** Encodes an option reply (for test servers). */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** Whether an option reply type is an error (bit 31). */
export function isOptionError(type: number): boolean {
  return type >= REP_ERR;
}

/** An option reply type's name, for messages. */
export function optionReplyName(type: number): string {
  const name = Object.entries(OptionReply).find(([, v]) => v === type)?.[0];
  return name ? `NBD_REP_${name}` : `option reply ${type >>> 0}`;
}

/** The text of an error reply (may be empty). */
export function parseOptionErrorMessage(data: Buffer): string {
  if (data.length > MAX_STRING) throw new NbdProtocolError(`option error message is ${data.length} bytes, over ${MAX_STRING}`);
  return decodeString(data, 'option error message');
}

/** One NBD_REP_INFO item. */
export type InfoReply =
  | { info: 'export'; size: number; flags: number }
  | { info: 'name'; name: string }
  | { info: 'description'; description: string }
  | { info: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { info: 'unknown'; type: number };

/** Parses an NBD_REP_INFO payload. */
export function parseInfoReply(data: Buffer): InfoReply {
  if (data.length < 2) throw new NbdProtocolError(`NBD_REP_INFO must be at least 2 bytes, got ${data.length}`);
  const type = data.readUInt16BE(0);
  switch (type) {
    case Info.EXPORT:
      expectLength(data, 12, 'NBD_INFO_EXPORT');
      return { info: 'export', size: readSafeU64(data, 2, 'export size'), flags: data.readUInt16BE(10) };
    case Info.NAME:
      return { info: 'name', name: decodeString(data.subarray(2), 'NBD_INFO_NAME') };
    case Info.DESCRIPTION:
      return { info: 'description', description: decodeString(data.subarray(2), 'NBD_INFO_DESCRIPTION') };
    case Info.BLOCK_SIZE:
      expectLength(data, 14, 'NBD_INFO_BLOCK_SIZE');
      return checkBlockSize(data.readUInt32BE(2), data.readUInt32BE(6), data.readUInt32BE(10));
    default:
      return { info: 'unknown', type };
  }
}

const isPowerOf2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

function checkBlockSize(minimum: number, preferred: number, maximum: number): InfoReply {
  if (!isPowerOf2(minimum) || minimum > 65536) throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE minimum ${minimum} is not a power of 2 up to 65536`);
  if (!isPowerOf2(preferred) || preferred < Math.max(minimum, 512))
    throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE preferred ${preferred} is not a power of 2 of at least max(minimum, 512)`);
  if (maximum < minimum || (maximum !== 0xffffffff && maximum % minimum !== 0))
    throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE maximum ${maximum} is not a multiple of the minimum ${minimum}`);
  return { info: 'block-size', minimum, preferred, maximum };
}

/** Encodes an NBD_REP_INFO payload (for test servers). */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** Encodes an NBD_INFO_BLOCK_SIZE payload (for test servers). */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** One selected metadata context. */
export interface MetaContextReply {
  id: number;
  name: string;
}

/** Parses an NBD_REP_META_CONTEXT payload. */
export function parseMetaContextReply(data: Buffer): MetaContextReply {
  if (data.length < 5) throw new NbdProtocolError(`NBD_REP_META_CONTEXT must be at least 5 bytes, got ${data.length}`);
  if (data.length > 4 + MAX_STRING) throw new NbdProtocolError(`NBD_REP_META_CONTEXT name is ${data.length - 4} bytes, over ${MAX_STRING}`);
  const name = decodeString(data.subarray(4), 'meta context name');
  if (!name.includes(':')) throw new NbdProtocolError(`meta context name '${name}' lacks its namespace`);
  return { id: data.readUInt32BE(0), name };
}

/** Encodes an NBD_REP_META_CONTEXT payload (for test servers). */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME (the fallback for servers without NBD_OPT_GO). */
export function parseExportNameReply(buf: Buffer): { size: number; flags: number } {
  expectLength(buf, EXPORT_NAME_REPLY_SIZE, 'NBD_OPT_EXPORT_NAME reply');
  return { size: readSafeU64(buf, 0, 'export size'), flags: buf.readUInt16BE(8) };
}
