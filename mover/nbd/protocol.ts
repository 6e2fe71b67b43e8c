/**
 * The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): constants and pure
 * encoders and parsers on Buffers, no I/O. Every parser checks lengths and fields and
 * throws {@link NbdProtocolError} on anything malformed: bytes from a server are never
 * trusted to index a buffer.
 */

/** A server (or a caller) broke the NBD protocol: the connection cannot be trusted further. */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
/** The old-style handshake's second magic: a server too old for named exports. */
export const CLISERV_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** Extended headers (not negotiated by this client, so a server must never send it). */
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

/** Handshake flags (server) and client flags. */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;

/** Transmission flags, sent with the export's size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STAT_PAYLOAD: 1 << 12,
} as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
  ERR_EXT_HEADER_REQD: REP_ERR + 10,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Command = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const CommandFlag = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;

export const ReplyFlag = { DONE: 1 } as const;
const CHUNK_ERR = 1 << 15;
export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: CHUNK_ERR + 1,
  ERROR_OFFSET: CHUNK_ERR + 2,
} as const;

/** base:allocation flags. */
export const StateFlag = { HOLE: 1, ZERO: 2 } as const;
/** qemu:dirty-bitmap:* flags. */
export const DirtyFlag = { DIRTY: 1 } as const;

/** Error values of simple replies and error chunks (named for messages). */
export const ErrorName: Readonly<Record<number, string>> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};
export const ESHUTDOWN = 108;

export const GREETING_SIZE = 18;
export const OPTION_REPLY_HEADER_SIZE = 20;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const REQUEST_SIZE = 28;
/** Reply to NBD_OPT_EXPORT_NAME: size, flags, then 124 zeroes unless NO_ZEROES. */
export const EXPORT_NAME_REPLY_SIZE = 10;
export const EXPORT_NAME_ZEROES = 124;
/**
 * The largest option reply or non-data chunk payload accepted: a block-status chunk of
 * 2^20 extents (the spec's SHOULD) is 8 MiB; anything bigger is a server gone wrong, and
 * allocating what it claims would let it exhaust our memory.
 */
export const MAX_CONTROL_PAYLOAD = 4 + 8 * (1 << 20) + 64 * 1024;
/** Strings (names, messages) must be no longer than this (spec: "MUST be no longer than 4096 bytes"). */
export const MAX_STRING = 4096;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes a UTF-8 string field, refusing invalid UTF-8 and NULs. */
export function decodeString(bytes: Buffer, what: string): string {
  let s: string;
  try {
    s = utf8.decode(bytes);
  } catch {
    throw new NbdProtocolError(`${what} is not valid UTF-8`);
  }
  if (s.includes('\0')) throw new NbdProtocolError(`${what} contains a NUL character`);
  return s;
}

function encodeString(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING) throw new NbdProtocolError(`${what} is ${b.length} bytes, over the protocol's ${MAX_STRING}`);
  if (s.includes('\0')) throw new NbdProtocolError(`${what} contains a NUL character`);
  return b;
}

function expectLength(buf: Buffer, n: number, what: string): void {
  if (buf.length !== n) throw new NbdProtocolError(`${what} must be ${n} bytes, got ${buf.length}`);
}

/** Reads an unsigned 64-bit value that must fit a JavaScript number exactly (offsets, sizes). */
export function readSafeU64(buf: Buffer, at: number, what: string): number {
  if (at < 0 || at + 8 > buf.length) throw new NbdProtocolError(`${what} runs past the end of a ${buf.length}-byte message`);
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${what} ${v} is beyond 2^53-1`);
  return Number(v);
}

// ---- Handshake -------------------------------------------------------------------------

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

// ---- Transmission ----------------------------------------------------------------------

/** A transmission request. `cookie` (the spec's older name: handle) matches its replies. */
export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

/** Encodes a 28-byte request header (NBD_CMD_WRITE data would follow; never sent here). */
export function encodeRequest(r: Request): Buffer {
  if (!Number.isSafeInteger(r.offset) || r.offset < 0) throw new NbdProtocolError(`request offset ${r.offset} is not a whole number of bytes`);
  if (!Number.isInteger(r.length) || r.length < 0 || r.length > 0xffffffff) throw new NbdProtocolError(`request length ${r.length} does not fit 32 bits`);
  const b = Buffer.alloc(REQUEST_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

/** Parses a request header (for test servers). */
export function parseRequest(buf: Buffer): Request {
  expectLength(buf, REQUEST_SIZE, 'request');
  if (buf.readUInt32BE(0) !== REQUEST_MAGIC) throw new NbdProtocolError(`request has wrong magic 0x${buf.readUInt32BE(0).toString(16)}`);
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.readBigUInt64BE(8),
    offset: readSafeU64(buf, 16, 'request offset'),
    length: buf.readUInt32BE(24),
  };
}

/** A reply header: a whole simple reply, or a structured chunk's header (its payload follows). */
export type ReplyHeader =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'structured'; flags: number; type: number; cookie: bigint; length: number };

/**
 * How many bytes the reply header starting with this magic takes. Reading 4 bytes first
 * and then the rest keeps the stream parser exact without look-ahead past a message.
 */
export function replyHeaderSize(magic: number): number {
  if (magic === SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_SIZE;
  if (magic === STRUCTURED_REPLY_MAGIC) return STRUCTURED_HEADER_SIZE;
  if (magic === EXTENDED_REPLY_MAGIC) throw new NbdProtocolError('server sent an extended-header reply, which was not negotiated');
  throw new NbdProtocolError(`reply has unknown magic 0x${(magic >>> 0).toString(16)}`);
}

/** Parses a simple reply (16 bytes) or a structured chunk header (20 bytes). */
export function parseReplyHeader(buf: Buffer): ReplyHeader {
  if (buf.length < 4) throw new NbdProtocolError(`reply header must be at least 4 bytes, got ${buf.length}`);
  const size = replyHeaderSize(buf.readUInt32BE(0));
  expectLength(buf, size, 'reply header');
  if (size === SIMPLE_REPLY_SIZE) return { kind: 'simple', error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
  return { kind: 'structured', flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), length: buf.readUInt32BE(16) };
}

/** Encodes a simple reply header (for test servers). */
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

/** Encodes a structured chunk, header and payload (for test servers). */
export function encodeChunk(flags: number, type: number, cookie: bigint, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(STRUCTURED_HEADER_SIZE + payload.length);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, STRUCTURED_HEADER_SIZE);
  return b;
}

/** One parsed structured reply chunk. */
export type Chunk =
  | { type: 'none' }
  | { type: 'data'; offset: number; data: Buffer }
  | { type: 'hole'; offset: number; length: number }
  | { type: 'block-status'; contextId: number; extents: BlockDescriptor[] }
  | { type: 'error'; error: number; message: string; offset?: number };

/** One block-status descriptor: `length` bytes with these status flags. */
export interface BlockDescriptor {
  length: number;
  flags: number;
}

/**
 * Parses a structured chunk's payload by its header. Unknown non-error types are a
 * protocol violation (the spec says: hard disconnect); an unknown type with bit 15 set is
 * an error chunk whose message is still readable.
 */
export function parseChunk(header: { flags: number; type: number }, payload: Buffer): Chunk {
  switch (header.type) {
    case ChunkType.NONE:
      if (payload.length !== 0) throw new NbdProtocolError(`NBD_REPLY_TYPE_NONE must have no payload, got ${payload.length} bytes`);
      if (!(header.flags & ReplyFlag.DONE)) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE');
      return { type: 'none' };
    case ChunkType.OFFSET_DATA:
      return parseOffsetData(payload);
    case ChunkType.OFFSET_HOLE:
      return parseOffsetHole(payload);
    case ChunkType.BLOCK_STATUS:
      return parseBlockStatus(payload);
    default:
      if (header.type & CHUNK_ERR) return parseErrorChunk(header.type, payload);
      throw new NbdProtocolError(`unknown structured reply chunk type ${header.type}`);
  }
}

/** NBD_REPLY_TYPE_OFFSET_DATA: the 8-byte offset; `data` is a view of the payload. */
export function parseOffsetData(payload: Buffer): Chunk & { type: 'data' } {
  if (payload.length < 9) throw new NbdProtocolError(`NBD_REPLY_TYPE_OFFSET_DATA must be at least 9 bytes, got ${payload.length}`);
  const offset = readSafeU64(payload, 0, 'data chunk offset');
  const data = payload.subarray(8);
  if (offset + data.length > Number.MAX_SAFE_INTEGER) throw new NbdProtocolError(`data chunk at ${offset} of ${data.length} bytes ends beyond 2^53-1`);
  return { type: 'data', offset, data };
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: offset and a nonzero hole size. */
export function parseOffsetHole(payload: Buffer): Chunk & { type: 'hole' } {
  expectLength(payload, 12, 'NBD_REPLY_TYPE_OFFSET_HOLE');
  const offset = readSafeU64(payload, 0, 'hole chunk offset');
  const length = payload.readUInt32BE(8);
  if (length === 0) throw new NbdProtocolError('hole chunk has size 0');
  if (offset + length > Number.MAX_SAFE_INTEGER) throw new NbdProtocolError(`hole chunk at ${offset} of ${length} bytes ends beyond 2^53-1`);
  return { type: 'hole', offset, length };
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: a context id and one or more nonzero-length descriptors. */
export function parseBlockStatus(payload: Buffer): Chunk & { type: 'block-status' } {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0)
    throw new NbdProtocolError(`NBD_REPLY_TYPE_BLOCK_STATUS must be 4 + 8n bytes (n >= 1), got ${payload.length}`);
  const extents: BlockDescriptor[] = [];
  for (let at = 4; at < payload.length; at += 8) {
    const length = payload.readUInt32BE(at);
    if (length === 0) throw new NbdProtocolError(`block status descriptor ${(at - 4) / 8} has length 0`);
    extents.push({ length, flags: payload.readUInt32BE(at + 4) });
  }
  return { type: 'block-status', contextId: payload.readUInt32BE(0), extents };
}

/** Encodes a block status payload (for test servers). */
export function encodeBlockStatus(contextId: number, extents: readonly BlockDescriptor[]): Buffer {
  const b = Buffer.alloc(4 + 8 * extents.length);
  b.writeUInt32BE(contextId, 0);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.length, 4 + 8 * i);
    b.writeUInt32BE(e.flags >>> 0, 8 + 8 * i);
  });
  return b;
}

/** Error chunks: error, message length, message, then (ERROR_OFFSET) the 8-byte offset. */
export function parseErrorChunk(type: number, payload: Buffer): Chunk & { type: 'error' } {
  if (payload.length < 6) throw new NbdProtocolError(`error chunk must be at least 6 bytes, got ${payload.length}`);
  const error = payload.readUInt32BE(0);
  if (error === 0) throw new NbdProtocolError('error chunk carries error 0');
  const messageLength = payload.readUInt16BE(4);
  const trailer = type === ChunkType.ERROR_OFFSET ? 8 : 0;
  if (6 + messageLength + trailer > payload.length)
    throw new NbdProtocolError(`error chunk message length ${messageLength} runs past its ${payload.length}-byte payload`);
  const message = decodeString(payload.subarray(6, 6 + messageLength), 'error chunk message');
  if (type === ChunkType.ERROR) {
    if (payload.length !== 6 + messageLength)
      throw new NbdProtocolError(`NBD_REPLY_TYPE_ERROR has ${payload.length - 6 - messageLength} bytes after its message`);
    return { type: 'error', error, message };
  }
  if (type === ChunkType.ERROR_OFFSET) {
    expectLength(payload, 6 + messageLength + 8, 'NBD_REPLY_TYPE_ERROR_OFFSET');
    return { type: 'error', error, message, offset: readSafeU64(payload, 6 + messageLength, 'error chunk offset') };
  }
  // An unknown error type: the spec lets the client go on, the reply counted as failed.
  return { type: 'error', error, message };
}

/** Encodes an error chunk payload (for test servers). */
export function encodeErrorChunk(error: number, message: string, offset?: number): Buffer {
  const m = Buffer.from(message, 'utf8');
  const b = Buffer.alloc(6 + m.length + (offset === undefined ? 0 : 8));
  b.writeUInt32BE(error, 0);
  b.writeUInt16BE(m.length, 4);
  m.copy(b, 6);
  if (offset !== undefined) b.writeBigUInt64BE(BigInt(offset), 6 + m.length);
  return b;
}

/** Encodes an offset-data or offset-hole payload (for test servers). */
export function encodeOffsetData(offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(8 + data.length);
  b.writeBigUInt64BE(BigInt(offset), 0);
  data.copy(b, 8);
  return b;
}

/** Encodes an offset-hole payload (for test servers). */
export function encodeOffsetHole(offset: number, length: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeBigUInt64BE(BigInt(offset), 0);
  b.writeUInt32BE(length, 8);
  return b;
}

/** An error value's name, for messages ('EIO (5)'). */
export function errorName(error: number): string {
  return `${ErrorName[error] ?? 'error'} (${error})`;
}
