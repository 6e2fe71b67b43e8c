/**
 * The NBD wire format: encoders and parsers round-trip, malformed messages are refused
 * naming what is wrong, and fuzzed input (random and mutated bytes, whole reply streams
 * cut at random points) never lets anything but NbdProtocolError escape a parser.
 */
import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../mover/nbd/byte-queue.ts';
import {
  encodeClientFlags,
  encodeGoOption,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextOption,
  encodeMetaContextReply,
  encodeOption,
  encodeOptionReply,
  encodeServerGreeting,
  parseClientFlags,
  parseExportNameReply,
  parseGoOption,
  parseInfoReply,
  parseMetaContextOption,
  parseMetaContextReply,
  parseOptionErrorMessage,
  parseOptionHeader,
  parseOptionReplyHeader,
  parseServerGreeting,
} from '../mover/nbd/handshake-wire.ts';
import { ChunkType, Command, Info, NbdProtocolError, Option, OptionReply, ReplyFlag } from '../mover/nbd/protocol.ts';
import {
  encodeBlockStatus,
  encodeChunk,
  encodeErrorChunk,
  encodeOffsetData,
  encodeOffsetHole,
  encodeRequest,
  encodeSimpleReply,
  parseBlockStatus,
  parseChunk,
  parseErrorChunk,
  parseOffsetData,
  parseOffsetHole,
  parseReplyHeader,
  parseRequest,
} from '../mover/nbd/transmission-wire.ts';
import { ReplyReceiver, type InFlight } from '../mover/nbd/receiver.ts';
import { prng } from './helpers/prng.ts';

const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};

describe('NBD encoders and parsers round-trip', () => {
  it('greeting, client flags and option requests', () => {
    expect(parseServerGreeting(encodeServerGreeting(3))).toEqual({ handshakeFlags: 3 });
    expect(parseClientFlags(encodeClientFlags(1))).toBe(1);
    const go = encodeGoOption('disk é', [Info.BLOCK_SIZE, Info.NAME]);
    expect(parseOptionHeader(go.subarray(0, 16))).toEqual({ option: Option.GO, length: go.length - 16 });
    expect(parseGoOption(go.subarray(16))).toEqual({ exportName: 'disk é', infos: [Info.BLOCK_SIZE, Info.NAME] });
    const meta = encodeMetaContextOption('vda', ['base:allocation', 'qemu:dirty-bitmap:b0']);
    expect(parseOptionHeader(meta.subarray(0, 16)).option).toBe(Option.SET_META_CONTEXT);
    expect(parseMetaContextOption(meta.subarray(16))).toEqual({ exportName: 'vda', queries: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
    expect(encodeOption(Option.STRUCTURED_REPLY)).toHaveLength(16);
  });

  it('option replies: headers, export and block size information, meta contexts, error text', () => {
    const r = encodeOptionReply(Option.GO, OptionReply.INFO, encodeInfoExport(2 ** 40 + 512, 0x10f));
    expect(parseOptionReplyHeader(r.subarray(0, 20))).toEqual({ option: Option.GO, type: OptionReply.INFO, length: 12 });
    expect(parseInfoReply(r.subarray(20))).toEqual({ info: 'export', size: 2 ** 40 + 512, flags: 0x10f });
    expect(parseInfoReply(encodeInfoBlockSize(512, 4096, 32 << 20))).toEqual({ info: 'block-size', minimum: 512, preferred: 4096, maximum: 32 << 20 });
    expect(parseInfoReply(Buffer.from([0, 9, 1, 2]))).toEqual({ info: 'unknown', type: 9 });
    expect(parseMetaContextReply(encodeMetaContextReply(7, 'qemu:dirty-bitmap:b0'))).toEqual({ id: 7, name: 'qemu:dirty-bitmap:b0' });
    expect(parseOptionErrorMessage(Buffer.from('no such export'))).toBe('no such export');
    expect(parseOptionReplyHeader(encodeOptionReply(Option.GO, OptionReply.ERR_UNKNOWN).subarray(0, 20)).type).toBe(OptionReply.ERR_UNKNOWN);
    const legacy = Buffer.concat([u64(1n << 20n), Buffer.from([0, 3])]);
    expect(parseExportNameReply(legacy)).toEqual({ size: 1 << 20, flags: 3 });
  });

  it('requests, simple replies and every structured chunk type', () => {
    const req = { flags: 0, type: Command.BLOCK_STATUS, cookie: 0xfedcba9876543210n, offset: 2 ** 50, length: 0xffffffff };
    expect(parseRequest(encodeRequest(req))).toEqual(req);
    expect(parseReplyHeader(encodeSimpleReply(5, 42n))).toEqual({ kind: 'simple', error: 5, cookie: 42n });
    const chunk = encodeChunk(ReplyFlag.DONE, ChunkType.OFFSET_HOLE, 9n, encodeOffsetHole(4096, 512));
    const h = parseReplyHeader(chunk.subarray(0, 20));
    expect(h).toEqual({ kind: 'structured', flags: 1, type: ChunkType.OFFSET_HOLE, cookie: 9n, length: 12 });
    expect(parseChunk({ flags: 1, type: ChunkType.OFFSET_HOLE }, chunk.subarray(20))).toEqual({ type: 'hole', offset: 4096, length: 512 });
    expect(parseChunk({ flags: 1, type: ChunkType.NONE }, Buffer.alloc(0))).toEqual({ type: 'none' });
    expect(parseOffsetData(encodeOffsetData(512, Buffer.from('abc')))).toEqual({ type: 'data', offset: 512, data: Buffer.from('abc') });
    const extents = [
      { length: 4096, flags: 3 },
      { length: 1, flags: 0xffffffff },
    ];
    expect(parseBlockStatus(encodeBlockStatus(2, extents))).toEqual({ type: 'block-status', contextId: 2, extents });
    expect(parseErrorChunk(ChunkType.ERROR, encodeErrorChunk(5, 'disk gone'))).toEqual({ type: 'error', error: 5, message: 'disk gone' });
    expect(parseErrorChunk(ChunkType.ERROR_OFFSET, encodeErrorChunk(5, 'bad sector', 1024))).toEqual({
      type: 'error',
      error: 5,
      message: 'bad sector',
      offset: 1024,
    });
  });
});

describe('NBD parsers refuse malformed messages, naming what is wrong', () => {
  const bad = (f: () => unknown, message: RegExp) =>
    expect(f).toThrow(expect.objectContaining({ name: 'NbdProtocolError', message: expect.stringMatching(message) }));

  it('in the handshake', () => {
    bad(() => parseServerGreeting(Buffer.alloc(18)), /does not start with NBDMAGIC/);
    const old = encodeServerGreeting(0);
    old.writeBigUInt64BE(0x00420281861253n, 8);
    bad(() => parseServerGreeting(old), /old-style handshake/);
    bad(() => parseServerGreeting(encodeServerGreeting(1).subarray(0, 17)), /greeting must be 18 bytes, got 17/);
    bad(() => parseOptionReplyHeader(Buffer.alloc(20)), /option reply has wrong magic/);
    const huge = encodeOptionReply(Option.GO, OptionReply.INFO);
    huge.writeUInt32BE(0xffffffff, 16);
    bad(() => parseOptionReplyHeader(huge), /claims 4294967295 bytes of data/);
    bad(() => parseInfoReply(encodeInfoExport(1, 1).subarray(0, 11)), /NBD_INFO_EXPORT must be 12 bytes, got 11/);
    bad(() => parseInfoReply(Buffer.concat([Buffer.from([0, 0]), u64(2n ** 63n), Buffer.from([0, 1])])), /export size 9223372036854775808 is beyond 2\^53-1/);
    bad(() => parseInfoReply(encodeInfoBlockSize(3, 4096, 1 << 20)), /minimum 3 is not a power of 2/);
    bad(() => parseInfoReply(encodeInfoBlockSize(4096, 512, 1 << 20)), /preferred 512/);
    bad(() => parseMetaContextReply(Buffer.from([0, 0, 0, 1])), /at least 5 bytes/);
    bad(() => parseMetaContextReply(Buffer.concat([Buffer.alloc(4), Buffer.from([0x61, 0x3a, 0xff])])), /meta context name is not valid UTF-8/);
    bad(() => parseMetaContextReply(encodeMetaContextReply(1, 'nocolon')), /lacks its namespace/);
    bad(() => parseGoOption(Buffer.from([0, 0, 0, 9, 0, 0])), /export name length 9 runs past/);
  });

  it('in the transmission phase', () => {
    bad(() => parseReplyHeader(Buffer.from([0xde, 0xad, 0xbe, 0xef])), /unknown magic 0xdeadbeef/);
    bad(() => parseReplyHeader(encodeSimpleReply(0, 1n).subarray(0, 15)), /reply header must be 16 bytes, got 15/);
    bad(() => parseChunk({ flags: 0, type: ChunkType.NONE }, Buffer.alloc(0)), /NONE without NBD_REPLY_FLAG_DONE/);
    bad(() => parseChunk({ flags: 1, type: ChunkType.NONE }, Buffer.alloc(1)), /must have no payload/);
    bad(() => parseChunk({ flags: 1, type: 77 }, Buffer.alloc(0)), /unknown structured reply chunk type 77/);
    bad(() => parseOffsetData(Buffer.alloc(8)), /at least 9 bytes, got 8/);
    bad(() => parseOffsetData(Buffer.concat([u64(2n ** 64n - 1n), Buffer.alloc(1)])), /beyond 2\^53-1/);
    bad(() => parseOffsetData(Buffer.concat([u64(2n ** 53n - 2n), Buffer.alloc(4)])), /ends beyond 2\^53-1/);
    bad(() => parseOffsetHole(encodeOffsetHole(0, 0)), /hole chunk has size 0/);
    bad(() => parseOffsetHole(Buffer.alloc(13)), /must be 12 bytes, got 13/);
    bad(() => parseBlockStatus(Buffer.alloc(4)), /4 \+ 8n bytes \(n >= 1\), got 4/);
    bad(() => parseBlockStatus(Buffer.alloc(15)), /got 15/);
    bad(() => parseBlockStatus(encodeBlockStatus(0, [{ length: 0, flags: 0 }])), /descriptor 0 has length 0/);
    const tooLong = encodeErrorChunk(5, 'abc');
    tooLong.writeUInt16BE(100, 4);
    bad(() => parseErrorChunk(ChunkType.ERROR, tooLong), /message length 100 runs past its 9-byte payload/);
    bad(() => parseErrorChunk(ChunkType.ERROR, encodeErrorChunk(0, '')), /carries error 0/);
    bad(() => parseErrorChunk(ChunkType.ERROR_OFFSET, encodeErrorChunk(5, 'x')), /message length 1 runs past/);
  });

  it('reads an unknown error chunk type as an error (the spec lets the client go on)', () => {
    expect(parseChunk({ flags: 1, type: 0x8000 + 99 }, encodeErrorChunk(22, 'new kind', 0))).toEqual({ type: 'error', error: 22, message: 'new kind' });
  });
});

/** Only NbdProtocolError may come out of `f`; anything else (RangeError, TypeError) fails. */
function onlyProtocolErrors(f: () => unknown): 'ok' | 'refused' {
  try {
    f();
    return 'ok';
  } catch (err) {
    if (err instanceof NbdProtocolError) return 'refused';
    throw err;
  }
}

/** Random bytes, or a valid message mutated: truncated, extended, bytes flipped, a field set to an extreme. */
function mutate(rand: (n: number) => number, valid: Buffer): Buffer {
  const b = Buffer.from(valid);
  switch (rand(6)) {
    case 0:
      return Buffer.from(Array.from({ length: rand(48) }, () => rand(256)));
    case 1:
      return b.subarray(0, rand(b.length + 1));
    case 2:
      return Buffer.concat([b, Buffer.from(Array.from({ length: 1 + rand(16) }, () => rand(256)))]);
    case 3: {
      for (let i = 1 + rand(3); i > 0 && b.length > 0; i--) b[rand(b.length)] = rand(256);
      return b;
    }
    case 4: {
      // An extreme 32-bit field (a length or count) at a 2-aligned position.
      if (b.length >= 4) b.writeUInt32BE([0, 1, 0x7fffffff, 0xffffffff, b.length, b.length + 1][rand(6)]!, 2 * rand((b.length - 2) >> 1));
      return b;
    }
    default: {
      // An extreme 64-bit field (an offset or size).
      if (b.length >= 8) b.writeBigUInt64BE([0n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 64n - 1n][rand(4)]!, rand(b.length - 7));
      return b;
    }
  }
}

describe('NBD parsers under fuzzing', () => {
  const valid = {
    greeting: encodeServerGreeting(3),
    optionReply: encodeOptionReply(Option.GO, OptionReply.INFO, encodeInfoExport(1 << 30, 3)).subarray(0, 20),
    infoExport: encodeInfoExport(1 << 30, 0x10b),
    infoBlockSize: encodeInfoBlockSize(512, 4096, 1 << 25),
    metaContext: encodeMetaContextReply(1, 'base:allocation'),
    goOption: encodeGoOption('vda', [3]).subarray(16),
    metaOption: encodeMetaContextOption('vda', ['base:allocation']).subarray(16),
    simple: encodeSimpleReply(0, 7n),
    chunkHeader: encodeChunk(1, ChunkType.OFFSET_DATA, 7n, encodeOffsetData(0, Buffer.alloc(4))).subarray(0, 20),
    data: encodeOffsetData(4096, Buffer.alloc(16, 0xab)),
    hole: encodeOffsetHole(4096, 512),
    blockStatus: encodeBlockStatus(1, [
      { length: 4096, flags: 3 },
      { length: 512, flags: 0 },
    ]),
    error: encodeErrorChunk(5, 'oops'),
    errorOffset: encodeErrorChunk(5, 'oops', 4096),
    request: encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 512 }),
    exportName: Buffer.concat([u64(1n << 30n), Buffer.from([0, 3])]),
  };
  const parsers: [string, Buffer, (b: Buffer) => unknown][] = [
    ['greeting', valid.greeting, parseServerGreeting],
    ['option reply header', valid.optionReply, parseOptionReplyHeader],
    ['info (export)', valid.infoExport, parseInfoReply],
    ['info (block size)', valid.infoBlockSize, parseInfoReply],
    ['meta context reply', valid.metaContext, parseMetaContextReply],
    ['option error text', Buffer.from('no'), parseOptionErrorMessage],
    ['NBD_OPT_GO data', valid.goOption, parseGoOption],
    ['NBD_OPT_SET_META_CONTEXT data', valid.metaOption, parseMetaContextOption],
    ['export name reply', valid.exportName, parseExportNameReply],
    ['simple reply', valid.simple, parseReplyHeader],
    ['chunk header', valid.chunkHeader, parseReplyHeader],
    ['request', valid.request, parseRequest],
    ['offset data', valid.data, (b) => parseChunk({ flags: 1, type: ChunkType.OFFSET_DATA }, b)],
    ['offset hole', valid.hole, (b) => parseChunk({ flags: 1, type: ChunkType.OFFSET_HOLE }, b)],
    ['block status', valid.blockStatus, (b) => parseChunk({ flags: 1, type: ChunkType.BLOCK_STATUS }, b)],
    ['error', valid.error, (b) => parseChunk({ flags: 1, type: ChunkType.ERROR }, b)],
    ['error with offset', valid.errorOffset, (b) => parseChunk({ flags: 1, type: ChunkType.ERROR_OFFSET }, b)],
    ['a chunk of any type', valid.hole, (b) => parseChunk({ flags: b[0]! & 1, type: b.length > 1 ? b.readUInt16BE(0) : 0 }, b.subarray(2))],
  ];

  it.each(parsers)('%s: 3,000 random and mutated inputs raise nothing but NbdProtocolError', (_name, good, parse) => {
    const rand = prng(0x4e4244 ^ good.length);
    const outcomes = { ok: 0, refused: 0 };
    for (let i = 0; i < 3000; i++) outcomes[onlyProtocolErrors(() => parse(mutate(rand, good)))]++;
    // Both kinds occur: the fuzzer reaches past the first check.
    expect(outcomes.refused).toBeGreaterThan(100);
    expect(outcomes.ok).toBeGreaterThan(0);
  });
});

/** A READ of `length` bytes at `offset`, as the client tracks it. */
const readReq = (cookie: bigint, offset: number, length: number): InFlight => ({
  cookie,
  command: Command.READ,
  offset,
  length,
  dest: Buffer.alloc(length, 0xee),
  destAt: 0,
  ranges: [],
  covered: 0,
  statuses: new Map(),
});
const statusReq = (cookie: bigint, offset: number, length: number): InFlight => ({
  ...readReq(cookie, offset, length),
  command: Command.BLOCK_STATUS,
  dest: undefined,
});

/** Feeds `stream` to a receiver in pieces cut at random points; returns the requests completed. */
function receive(stream: Buffer, reqs: InFlight[], rand: (n: number) => number, structuredReplies = true): InFlight[] {
  const queue = new ByteQueue();
  const done: InFlight[] = [];
  const byCookie = new Map(reqs.map((r) => [r.cookie, r]));
  const rx = new ReplyReceiver(
    queue,
    (c) => byCookie.get(c),
    (r) => done.push(r),
    { structuredReplies, contextIds: new Set([1, 2]) },
  );
  for (let at = 0; at < stream.length; ) {
    const n = 1 + rand(Math.min(64, stream.length - at));
    queue.push(stream.subarray(at, at + n));
    at += n;
    rx.pump();
  }
  return done;
}

describe('NBD reply stream', () => {
  const data = Buffer.alloc(1000, 0xab);
  const goodStream = () =>
    Buffer.concat([
      encodeChunk(0, ChunkType.OFFSET_DATA, 1n, encodeOffsetData(4096 + 24, data.subarray(0, 1000))),
      encodeChunk(0, ChunkType.BLOCK_STATUS, 2n, encodeBlockStatus(1, [{ length: 512, flags: 3 }])),
      encodeChunk(0, ChunkType.OFFSET_HOLE, 1n, encodeOffsetHole(4096, 24)),
      encodeChunk(ReplyFlag.DONE, ChunkType.BLOCK_STATUS, 2n, encodeBlockStatus(2, [{ length: 1024, flags: 1 }])),
      encodeChunk(ReplyFlag.DONE, ChunkType.NONE, 1n),
    ]);

  it('assembles interleaved replies the same however the stream is cut', () => {
    const rand = prng(7);
    for (let i = 0; i < 50; i++) {
      const read = readReq(1n, 4096, 1024);
      const status = statusReq(2n, 0, 1024);
      expect(receive(goodStream(), [read, status], rand).map((r) => r.cookie)).toEqual([2n, 1n]);
      expect(read.dest).toEqual(Buffer.concat([Buffer.alloc(24), data]));
      expect(status.statuses).toEqual(
        new Map([
          [1, [{ length: 512, flags: 3 }]],
          [2, [{ length: 1024, flags: 1 }]],
        ]),
      );
    }
  });

  it('reads a simple reply with its data when structured replies are off', () => {
    const read = readReq(5n, 0, 8);
    const stream = Buffer.concat([encodeSimpleReply(0, 5n), Buffer.from('12345678')]);
    expect(receive(stream, [read], prng(1), false)).toEqual([read]);
    expect(read.dest!.toString()).toBe('12345678');
  });

  it('refuses overlapping, out-of-range, short and unasked-for replies', () => {
    const refuse = (stream: Buffer, message: RegExp) =>
      expect(() => receive(stream, [readReq(1n, 4096, 1024), statusReq(2n, 0, 1024)], prng(3))).toThrow(message);
    const chunk = (flags: number, type: number, cookie: bigint, payload: Buffer) => encodeChunk(flags, type, cookie, payload);
    refuse(Buffer.concat([chunk(0, 2, 1n, encodeOffsetHole(4096, 512)), chunk(1, 2, 1n, encodeOffsetHole(4096 + 511, 513))]), /overlaps an earlier one/);
    refuse(chunk(1, 1, 1n, encodeOffsetData(4096 + 1000, Buffer.alloc(25))), /lies outside the request \[4096, 5120\)/);
    refuse(chunk(1, 2, 1n, encodeOffsetHole(0, 512)), /lies outside the request/);
    refuse(chunk(1, 2, 1n, encodeOffsetHole(4096, 1000)), /ended a read of 1024 bytes at 4096 having sent 1000/);
    refuse(chunk(1, 0, 9n, Buffer.alloc(0)), /cookie 9, which no request in flight has/);
    refuse(chunk(1, 5, 2n, encodeBlockStatus(3, [{ length: 1, flags: 0 }])), /meta context id 3, which was not negotiated/);
    refuse(
      Buffer.concat([chunk(0, 5, 2n, encodeBlockStatus(1, [{ length: 1, flags: 0 }])), chunk(1, 5, 2n, encodeBlockStatus(1, [{ length: 1, flags: 0 }]))]),
      /two block status chunks/,
    );
    refuse(encodeSimpleReply(0, 1n), /simple reply to NBD_CMD_READ although structured replies were negotiated/);
    refuse(chunk(1, 1, 2n, encodeOffsetData(0, Buffer.alloc(1))), /data chunk in the reply to a command 7/);
  });

  it('raises nothing but NbdProtocolError on 3,000 mutated reply streams', () => {
    const rand = prng(0xbeef);
    const outcomes = { ok: 0, refused: 0 };
    for (let i = 0; i < 3000; i++) {
      const stream = mutate(rand, goodStream());
      outcomes[onlyProtocolErrors(() => receive(stream, [readReq(1n, 4096, 1024), statusReq(2n, 0, 1024)], rand))]++;
    }
    expect(outcomes.refused).toBeGreaterThan(1000);
    expect(outcomes.ok).toBeGreaterThan(0);
  });
});
