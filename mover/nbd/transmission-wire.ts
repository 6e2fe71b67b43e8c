/**
 * The NBD transmission phase's wire format (NetworkBlockDevice/nbd `doc/proto.md`):
 * requests, simple replies and structured reply chunks (data, holes, block status, errors).
 * Pure encoders and parsers; each parser throws {@link NbdProtocolError} on anything malformed.
 */
import {
  CHUNK_ERR,
  ChunkType,
  EXTENDED_REPLY_MAGIC,
  NbdProtocolError,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  ReplyFlag,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  decodeString,
  expectLength,
  readSafeU64,
} from './protocol.ts';

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
