/**
 * The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): its constants and the field
 * codecs shared by the handshake's messages (handshake-wire.ts) and transmission's
 * (transmission-wire.ts); pure, no I/O. Every parser checks lengths and fields and
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

/** Bit 31 of an option reply type: an error. */
export const REP_ERR = 0x80000000;
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
/** Bit 15 of a chunk type: an error chunk. */
export const CHUNK_ERR = 1 << 15;
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

/** Encodes a string field, refusing one over {@link MAX_STRING} bytes or with a NUL. */
export function encodeString(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING) throw new NbdProtocolError(`${what} is ${b.length} bytes, over the protocol's ${MAX_STRING}`);
  if (s.includes('\0')) throw new NbdProtocolError(`${what} contains a NUL character`);
  return b;
}

/** Refuses a message of any other size than `n`. */
export function expectLength(buf: Buffer, n: number, what: string): void {
  if (buf.length !== n) throw new NbdProtocolError(`${what} must be ${n} bytes, got ${buf.length}`);
}

/** Reads an unsigned 64-bit value that must fit a JavaScript number exactly (offsets, sizes). */
export function readSafeU64(buf: Buffer, at: number, what: string): number {
  if (at < 0 || at + 8 > buf.length) throw new NbdProtocolError(`${what} runs past the end of a ${buf.length}-byte message`);
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${what} ${v} is beyond 2^53-1`);
  return Number(v);
}

/** An error value's name, for messages ('EIO (5)'). */
export function errorName(error: number): string {
  return `${ErrorName[error] ?? 'error'} (${error})`;
}
