/**
 * The read-only NBD server against Lifeboat's own client and raw sockets: reads and
 * block status equal the export, option haggling answers as the spec says, writes are
 * refused, bad requests get EINVAL, the connection cap refuses cleanly, the idle timeout
 * closes the server, and fuzzed client byte streams (random, and mutated valid sessions)
 * never crash it: it answers or hangs up, and serves the next client.
 */
import { connect, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../mover/nbd/client.ts';
import { encodeClientFlags, encodeGoOption, encodeMetaContextOption, encodeOption } from '../mover/nbd/handshake-wire.ts';
import { Command, CommandFlag, Info, Option, OptionReply, StateFlag } from '../mover/nbd/protocol.ts';
import { encodeRequest, parseChunk, parseReplyHeader, type BlockDescriptor } from '../mover/nbd/transmission-wire.ts';
import { ExportIoError, type BlockExport } from '../mover/nbd/block-export.ts';
import { NbdServerSession } from '../mover/nbd/server-session.ts';
import { NbdServer } from '../mover/nbd/server.ts';
import { prng } from './helpers/prng.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;

/** An export over a buffer: chunks that are all zero are holes; reads of `bad` chunks fail with EIO. */
function memoryExport(data: Buffer, bad = new Set<number>()): BlockExport & { reads: number } {
  const e = {
    size: data.length,
    description: 'a test export',
    reads: 0,
    async read(offset: number, length: number) {
      e.reads++;
      for (let i = Math.floor(offset / CHUNK); i * CHUNK < offset + length; i++) if (bad.has(i)) throw new ExportIoError(`chunk ${i} is damaged`);
      return Buffer.from(data.subarray(offset, offset + length));
    },
    allocation(offset: number, length: number): BlockDescriptor[] {
      const out: BlockDescriptor[] = [];
      for (let at = offset; at < offset + length; ) {
        const i = Math.floor(at / CHUNK);
        const next = Math.min(offset + length, (i + 1) * CHUNK);
        const zero = data.subarray(i * CHUNK, (i + 1) * CHUNK).every((b) => b === 0);
        const flags = zero ? StateFlag.HOLE | StateFlag.ZERO : 0;
        const prev = out.at(-1);
        if (prev?.flags === flags) prev.length += next - at;
        else out.push({ length: next - at, flags });
        at = next;
      }
      return out;
    },
  };
  return e;
}

function pattern(size: number, seed: number): Buffer {
  const rand = prng(seed);
  const b = Buffer.alloc(size);
  for (let c = 0; c < size / CHUNK; c++) {
    if (rand(3) === 0) continue; // a hole
    for (let i = c * CHUNK; i < (c + 1) * CHUNK; i += 4) b.writeUInt32BE(rand(2 ** 32) >>> 0, i);
  }
  return b;
}

let dir = '';
const DATA = pattern(4 * MiB, 1);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-server-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
async function serve(exp: BlockExport = memoryExport(DATA), opts: Partial<Parameters<typeof NbdServer.listen>[1]> = {}) {
  return NbdServer.listen({ socket: join(dir, `s${n++}.sock`) }, { exports: new Map([['vda', exp]]), ...opts });
}

/** A raw client: collects everything the server sends until it closes or `ms` pass without news. */
class Raw {
  readonly got: Buffer[] = [];
  closed = false;
  private readonly s: Socket;
  private waiters: (() => void)[] = [];
  constructor(path: string) {
    this.s = connect(path);
    this.s.on('data', (d: Buffer) => {
      this.got.push(d);
      this.wake();
    });
    this.s.on('close', () => {
      this.closed = true;
      this.wake();
    });
    this.s.on('error', () => {});
  }
  private wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  send(b: Buffer) {
    if (!this.s.destroyed) this.s.write(b);
  }
  get bytes(): Buffer {
    return Buffer.concat(this.got);
  }
  /** Waits until at least `n` bytes came (or the socket closed). */
  async until(n: number): Promise<Buffer> {
    while (this.bytes.length < n && !this.closed) await new Promise<void>((ok) => this.waiters.push(ok));
    return this.bytes;
  }
  async closedByServer(): Promise<void> {
    while (!this.closed) await new Promise<void>((ok) => this.waiters.push(ok));
  }
  end() {
    this.s.destroy();
  }
}

/** Option replies in `b` from `at`: { option, type, data }. */
function optionReplies(b: Buffer, at: number, count = Infinity) {
  const out: { option: number; type: number; data: Buffer }[] = [];
  while (at + 20 <= b.length && out.length < count) {
    const len = b.readUInt32BE(at + 16);
    if (at + 20 + len > b.length) break;
    out.push({ option: b.readUInt32BE(at + 8), type: b.readUInt32BE(at + 12), data: b.subarray(at + 20, at + 20 + len) });
    at += 20 + len;
  }
  return { replies: out, at };
}

async function handshake(path: string): Promise<Raw> {
  const r = new Raw(path);
  await r.until(18);
  r.send(encodeClientFlags(3));
  return r;
}

describe('NBD server with Lifeboat client', () => {
  it('serves reads equal to the export at random offsets, and base:allocation holes', async () => {
    const srv = await serve();
    const c = await NbdClient.connect(srv.uri('vda'), { metaContexts: ['base:allocation'] });
    expect(c.size).toBe(DATA.length);
    const rand = prng(9);
    for (let i = 0; i < 50; i++) {
      const offset = rand(DATA.length - 1);
      const length = 1 + rand(Math.min(DATA.length - offset, 300 * KiB));
      const buf = Buffer.alloc(length);
      await c.read(buf, offset, length);
      expect(buf.equals(DATA.subarray(offset, offset + length))).toBe(true);
    }
    const extents = await c.blockStatus('base:allocation', 0, DATA.length);
    let at = 0;
    for (const e of extents) {
      const zero = DATA.subarray(at, at + e.length).every((b) => b === 0);
      expect(e.flags === (StateFlag.HOLE | StateFlag.ZERO)).toBe(zero);
      at += e.length;
    }
    expect(at).toBe(DATA.length);
    await c.close();
    expect(srv.stats.bytesServed).toBeGreaterThan(0);
    await srv.close();
  });

  it('fails only the read that touches a damaged chunk, with EIO and the reason', async () => {
    const srv = await serve(memoryExport(DATA, new Set([5])));
    const c = await NbdClient.connect(srv.uri('vda'));
    await expect(c.read(Buffer.alloc(CHUNK), 5 * CHUNK, CHUNK)).rejects.toThrow(/EIO.*chunk 5 is damaged/);
    const ok = Buffer.alloc(CHUNK);
    await c.read(ok, 6 * CHUNK, CHUNK);
    expect(ok.equals(DATA.subarray(6 * CHUNK, 7 * CHUNK))).toBe(true);
    await c.close();
    await srv.close();
  });
});

describe('NBD server option haggling and requests', () => {
  it('lists exports, answers INFO with size, flags, name and block size, and refuses unknown options and exports', async () => {
    const srv = await serve();
    const path = (srv.address as { socket: string }).socket;
    const r = await handshake(path);
    r.send(encodeOption(Option.LIST));
    r.send(encodeGoOption('vda', [Info.NAME, Info.BLOCK_SIZE, Info.DESCRIPTION], Option.INFO));
    r.send(encodeGoOption('nope', [], Option.INFO));
    r.send(encodeOption(99));
    r.send(encodeOption(Option.STARTTLS));
    r.send(encodeMetaContextOption('vda', ['base:allocation'])); // before structured replies: invalid
    r.send(encodeOption(Option.ABORT));
    await r.closedByServer();
    const { replies } = optionReplies(r.bytes, 18);
    const types = replies.map((x) => [x.option, x.type]);
    expect(types).toEqual([
      [Option.LIST, OptionReply.SERVER],
      [Option.LIST, OptionReply.ACK],
      [Option.INFO, OptionReply.INFO],
      [Option.INFO, OptionReply.INFO],
      [Option.INFO, OptionReply.INFO],
      [Option.INFO, OptionReply.INFO],
      [Option.INFO, OptionReply.ACK],
      [Option.INFO, OptionReply.ERR_UNKNOWN],
      [99, OptionReply.ERR_UNSUP],
      [Option.STARTTLS, OptionReply.ERR_POLICY],
      [Option.SET_META_CONTEXT, OptionReply.ERR_INVALID],
      [Option.ABORT, OptionReply.ACK],
    ]);
    expect(replies[0]!.data.subarray(4).toString()).toBe('vda');
    const exportInfo = replies[2]!.data;
    expect(exportInfo.readBigUInt64BE(2)).toBe(BigInt(DATA.length));
    expect(exportInfo.readUInt16BE(10) & 2).toBe(2); // READ_ONLY
    expect(
      replies
        .slice(3, 6)
        .map((x) => x.data.readUInt16BE(0))
        .sort(),
    ).toEqual([Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE].sort());
    expect(replies[7]?.data.toString()).toContain("'nope'");
    await srv.close();
  });

  it('refuses writes, trims and write-zeroes with EPERM, bad reads with EINVAL, and keeps serving', async () => {
    const srv = await serve();
    const r = await handshake((srv.address as { socket: string }).socket);
    r.send(encodeOption(Option.STRUCTURED_REPLY));
    r.send(encodeGoOption('vda', []));
    const req = (cookie: bigint, type: number, offset: number, length: number, flags = 0) => encodeRequest({ cookie, type, offset, length, flags });
    r.send(Buffer.concat([req(1n, Command.WRITE, 0, 512), Buffer.alloc(512, 7)]));
    r.send(req(2n, Command.TRIM, 0, 512));
    r.send(req(3n, Command.WRITE_ZEROES, 0, 512));
    r.send(req(4n, Command.READ, DATA.length - 10, 20));
    r.send(req(5n, Command.READ, 0, 33 * MiB));
    r.send(req(6n, Command.READ, 0, 0));
    r.send(req(7n, Command.READ, 0, 512, CommandFlag.FUA));
    r.send(req(8n, Command.BLOCK_STATUS, 0, 512)); // no context negotiated
    r.send(req(9n, 42, 0, 512));
    r.send(req(10n, Command.FLUSH, 0, 0));
    r.send(req(11n, Command.READ, 0, 512, CommandFlag.DF));
    r.send(req(12n, Command.DISC, 0, 0));
    await r.closedByServer();
    const b = r.bytes;
    // After the option replies (structured ACK, INFO, ACK): the replies to the requests.
    let at = optionReplies(b, 18, 3).at;
    const errors = new Map<bigint, number>();
    let readData: Buffer | undefined;
    while (at < b.length) {
      const magic = b.readUInt32BE(at);
      const h = parseReplyHeader(b.subarray(at, at + (magic === 0x67446698 ? 16 : 20)));
      if (h.kind === 'simple') {
        errors.set(h.cookie, h.error);
        at += 16;
        continue;
      }
      const payload = b.subarray(at + 20, at + 20 + h.length);
      const chunk = parseChunk(h, payload);
      if (chunk.type === 'error') errors.set(h.cookie, chunk.error);
      if (chunk.type === 'data') readData = chunk.data;
      at += 20 + h.length;
    }
    expect(Object.fromEntries([...errors].map(([k, v]) => [String(k), v]))).toEqual({ 1: 1, 2: 1, 3: 1, 4: 22, 5: 22, 6: 22, 7: 22, 8: 22, 9: 22, 10: 0 });
    expect(readData?.equals(DATA.subarray(0, 512))).toBe(true);
    await srv.close();
  });

  it('serves connections up to the cap and refuses the next with NBD_REP_ERR_POLICY', async () => {
    const srv = await serve(memoryExport(DATA), { maxConnections: 3 });
    const clients = await Promise.all([0, 1, 2].map(() => NbdClient.connect(srv.uri('vda'))));
    await expect(NbdClient.connect(srv.uri('vda'), { timeoutMs: 5000 })).rejects.toThrow(/ERR_POLICY.*at most 3/);
    const bufs = await Promise.all(
      clients.map(async (c, i) => {
        const b = Buffer.alloc(64 * KiB);
        await c.read(b, i * 64 * KiB, 64 * KiB);
        return b;
      }),
    );
    bufs.forEach((b, i) => expect(b.equals(DATA.subarray(i * 64 * KiB, (i + 1) * 64 * KiB))).toBe(true));
    await clients[0]!.close();
    // A place is free again once a client left.
    for (let i = 0; srv.stats.active > 2 && i < 100; i++) await new Promise((ok) => setImmediate(ok));
    const again = await NbdClient.connect(srv.uri('vda'));
    await again.close();
    await Promise.all(clients.slice(1).map((c) => c.close()));
    expect(srv.stats.refused).toBe(1);
    await srv.close();
  });

  it('closes itself after the idle timeout with no connection, not while one is open', async () => {
    const srv = await serve(memoryExport(DATA), { idleTimeoutMs: 200 });
    const c = await NbdClient.connect(srv.uri('vda'));
    const early = await Promise.race([srv.done, new Promise((ok) => setTimeout(() => ok('open'), 400))]);
    expect(early).toBe('open');
    await c.close();
    expect(await srv.done).toBe('idle');
    await expect(NbdClient.connect(srv.uri('vda'), { timeoutMs: 2000 })).rejects.toThrow();
  });
});

describe('NBD server under fuzzing', () => {
  /** A session fed `stream` in random pieces over a recording transport: returns whether it closed. */
  async function feed(stream: Buffer, rand: (n: number) => number): Promise<{ closed: boolean; out: number }> {
    let out = 0;
    let closed = false;
    const exp = memoryExport(DATA.subarray(0, 256 * KiB));
    const s = new NbdServerSession(
      { exports: new Map([['vda', exp]]), maxBlockBytes: 1 * MiB, served: () => {} },
      {
        write: (b, done) => {
          out += Buffer.isBuffer(b) ? b.length : b.reduce((n, x) => n + x.length, 0);
          if (done) queueMicrotask(done);
        },
        end: () => {
          closed = true;
        },
        pause: () => {},
        resume: () => {},
      },
    );
    for (let at = 0; at < stream.length && !closed; ) {
      const n = 1 + rand(64);
      s.push(stream.subarray(at, at + n));
      at += n;
      if (rand(4) === 0) await new Promise((ok) => setImmediate(ok)); // let reads complete between pieces
    }
    await new Promise((ok) => setImmediate(ok));
    return { closed: closed || s.closed, out };
  }

  /** A valid client session: flags, options, then requests of every kind. */
  function validSession(rand: (n: number) => number): Buffer {
    const parts = [
      encodeClientFlags(3),
      encodeOption(Option.STRUCTURED_REPLY),
      encodeMetaContextOption('vda', ['base:allocation']),
      encodeGoOption('vda', [Info.BLOCK_SIZE]),
    ];
    for (let i = 0; i < 8; i++) {
      const type = [Command.READ, Command.BLOCK_STATUS, Command.FLUSH, Command.TRIM][rand(4)]!;
      parts.push(encodeRequest({ cookie: BigInt(i), type, offset: rand(200) * 512, length: 1 + rand(64 * KiB), flags: 0 }));
    }
    parts.push(encodeRequest({ cookie: 99n, type: Command.DISC, offset: 0, length: 0, flags: 0 }));
    return Buffer.concat(parts);
  }

  it('survives random byte streams: never throws, hangs up on garbage', async () => {
    const rand = prng(0x5e4e);
    let closed = 0;
    for (let i = 0; i < 300; i++) {
      const stream = Buffer.alloc(1 + rand(600));
      for (let j = 0; j < stream.length; j++) stream[j] = rand(256);
      // Half the streams start like a real client, so the fuzzer reaches option parsing.
      if (i % 2) encodeClientFlags(rand(4)).copy(stream, 0);
      const r = await feed(stream, rand);
      if (r.closed) closed++;
    }
    expect(closed).toBeGreaterThan(100);
  });

  it('survives mutated valid sessions (flipped, cut, duplicated and inserted bytes)', async () => {
    const rand = prng(0xf1a9);
    const outcomes = { closed: 0, open: 0 };
    for (let i = 0; i < 400; i++) {
      const good = validSession(rand);
      const m = Buffer.from(good);
      const kind = rand(4);
      if (kind === 0)
        for (let k = 0; k < 1 + rand(4); k++) {
          const at = rand(m.length);
          m[at] = m[at]! ^ (1 << rand(8));
        }
      let stream = m;
      if (kind === 1) stream = m.subarray(0, rand(m.length));
      if (kind === 2) {
        const at = rand(m.length);
        stream = Buffer.concat([m.subarray(0, at), m.subarray(at - Math.min(at, rand(40)))]);
      }
      if (kind === 3) {
        const at = rand(m.length);
        const junk = Buffer.alloc(1 + rand(12));
        for (let j = 0; j < junk.length; j++) junk[j] = rand(256);
        stream = Buffer.concat([m.subarray(0, at), junk, m.subarray(at)]);
      }
      const r = await feed(stream, rand);
      outcomes[r.closed ? 'closed' : 'open']++;
    }
    // Both outcomes occur: mutations reach past the first checks.
    expect(outcomes.closed).toBeGreaterThan(0);
    expect(outcomes.open).toBeGreaterThan(0);
  });

  it('serves a good client after fuzzed clients on the same server', async () => {
    const srv = await serve();
    const path = (srv.address as { socket: string }).socket;
    const rand = prng(77);
    for (let i = 0; i < 30; i++) {
      const r = new Raw(path);
      await r.until(18);
      const junk = Buffer.alloc(1 + rand(200));
      for (let j = 0; j < junk.length; j++) junk[j] = rand(256);
      r.send(Buffer.concat([encodeClientFlags(3), junk]));
      r.end();
    }
    const c = await NbdClient.connect(srv.uri('vda'));
    const b = Buffer.alloc(4096);
    await c.read(b, 8192, 4096);
    expect(b.equals(DATA.subarray(8192, 12288))).toBe(true);
    await c.close();
    await srv.close();
  });
});
