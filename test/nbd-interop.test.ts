/**
 * The NBD client against real servers: qemu-nbd exporting raw and qcow2 images (holes,
 * data at known offsets, a dirty bitmap) over unix sockets, checked against the image
 * bytes and against libnbd's own tools (nbdinfo, nbdcopy); nbdkit without structured
 * replies; and tiny servers in this test that die or stall.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SourceUnavailable } from '../contracts/errors.ts';
import { NbdClient } from '../mover/nbd/client.ts';
import { mapExtents } from '../mover/nbd/extents.ts';
import { NbdPool } from '../mover/nbd/pool.ts';
import { encodeInfoExport, encodeOptionReply, encodeServerGreeting } from '../mover/nbd/handshake-wire.ts';
import { Option, OptionReply, ReplyFlag, ChunkType, TransmissionFlag } from '../mover/nbd/protocol.ts';
import { encodeChunk, encodeOffsetData, parseRequest } from '../mover/nbd/transmission-wire.ts';
import type { Extent } from '../mover/sources/source.ts';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const tools = ['qemu-nbd', 'qemu-img', 'qemu-io', 'nbdinfo', 'nbdcopy', 'nbdkit'];
const missing = tools.filter((t) => spawnSync(t, ['--version']).status !== 0);
if (missing.length > 0 && process.env.CI) throw new Error(`CI must install ${missing.join(', ')} (Debian: qemu-utils libnbd-bin nbdkit)`);

/** Data written into every image: offset, length, byte. */
const WRITES = [
  { offset: 1 * MiB, length: 64 * 1024, byte: 0xab },
  { offset: 10 * MiB, length: 1 * MiB, byte: 0xcd },
  { offset: 63 * MiB, length: 4096, byte: 0x11 },
];
/** Written after the bitmap b0 was added to the qcow2 image (64 KiB aligned: the bitmap's granularity). */
const DIRTY = [
  { offset: 5 * MiB, length: 64 * 1024, byte: 0x22 },
  { offset: 20 * MiB, length: 128 * 1024, byte: 0x33 },
  { offset: 10 * MiB + 512 * 1024, length: 64 * 1024, byte: 0x44 },
];

let dir = '';
const children = new Set<ChildProcess>();

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

const qemuIoWrites = (ws: typeof WRITES) => ws.flatMap((w) => ['-c', `write -P ${w.byte} ${w.offset} ${w.length}`]);

/** Starts a server and resolves once its unix socket exists. */
async function serve(cmd: string, args: string[], socket: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  for (let i = 0; i < 200 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(socket)) throw new Error(`${cmd} did not create ${socket}: ${stderr}`);
  // The socket file appears at bind, before the server listens: wait until a connect is accepted.
  for (let i = 0; !(await accepts(socket)); i++) {
    if (i >= 200 || child.exitCode !== null) throw new Error(`${cmd} does not accept connections on ${socket}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return child;
}

/** Whether a connection to the Unix socket `path` is accepted (it is closed at once). */
function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path, () => {
      probe.destroy();
      resolve(true);
    });
    probe.on('error', () => resolve(false));
  });
}

let socketCount = 0;
/** qemu-nbd exporting `image` read-only; returns the export's URI and the process. */
async function qemuNbd(image: string, format: string, extra: string[] = []): Promise<{ uri: string; child: ChildProcess }> {
  const socket = join(dir, `qemu-nbd-${socketCount++}.sock`);
  const child = await serve(
    'qemu-nbd',
    ['--read-only', '--persistent', '--shared=8', `--socket=${socket}`, `--format=${format}`, '--export-name=disk', ...extra, image],
    socket,
  );
  return { uri: `nbd+unix:///disk?socket=${socket}`, child };
}

/** What nbdinfo (libnbd) reports for a context, as the extents of interest. */
function nbdinfoMap(uri: string, context: string, interesting: (type: number) => boolean): Extent[] {
  const entries = JSON.parse(run('nbdinfo', [`--map=${context}`, '--json', uri])) as { offset: number; length: number; type: number }[];
  const out: Extent[] = [];
  for (const e of entries.filter((x) => interesting(x.type))) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}

const withoutHoles = (t: number) => (t & 3) === 0;

describe.skipIf(missing.length > 0)('NBD client against qemu-nbd', () => {
  let raw = '';
  let qcow2 = '';
  let rawBytes: Buffer;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-nbd-'));
    raw = join(dir, 'disk.raw');
    qcow2 = join(dir, 'disk.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'raw', raw, String(SIZE)]);
    run('qemu-io', ['-f', 'raw', ...qemuIoWrites(WRITES), raw]);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, String(SIZE)]);
    run('qemu-io', ['-f', 'qcow2', ...qemuIoWrites(WRITES), qcow2]);
    run('qemu-img', ['bitmap', '--add', qcow2, 'b0']);
    run('qemu-io', ['-f', 'qcow2', ...qemuIoWrites(DIRTY), qcow2]);
    // qemu-nbd refuses to export an enabled bitmap read-only: freeze it, as a backup does.
    run('qemu-img', ['bitmap', '--disable', qcow2, 'b0']);
    rawBytes = await readFile(raw);
  });

  afterEach(() => {
    for (const c of children) c.kill('SIGKILL');
    children.clear();
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reads a raw export byte for byte and maps its data as nbdinfo does', async () => {
    const { uri } = await qemuNbd(raw, 'raw');
    const client = await NbdClient.connect(uri, { metaContexts: ['base:allocation'] });
    expect(client.size).toBe(SIZE);
    expect(client.exportName).toBe('disk');
    expect([...client.metaContexts.keys()]).toEqual(['base:allocation']);
    const buf = Buffer.alloc(SIZE, 0xee);
    expect(await client.read(buf, 0, SIZE)).toBe(SIZE);
    expect(buf.equals(rawBytes)).toBe(true);
    const map = await mapExtents(client, 'base:allocation');
    expect(map).toEqual(nbdinfoMap(uri, 'base:allocation', withoutHoles));
    // Every written extent is inside the map (a raw file's data is block-granular).
    for (const w of WRITES) expect(map!.some((e) => e.offset <= w.offset && e.offset + e.length >= w.offset + w.length)).toBe(true);
    await client.close();
  });

  it('reads a qcow2 export (holes come as zero chunks) as nbdcopy copies it', async () => {
    const { uri } = await qemuNbd(qcow2, 'qcow2');
    const copy = join(dir, 'copy.raw');
    run('nbdcopy', [uri, copy]);
    const expected = await readFile(copy);
    await rm(copy);
    const client = await NbdClient.connect(uri, { metaContexts: ['base:allocation'] });
    const buf = Buffer.alloc(SIZE, 0xee);
    expect(await client.read(buf, 0, SIZE)).toBe(SIZE);
    expect(buf.equals(expected)).toBe(true);
    expect(buf[DIRTY[0]!.offset]).toBe(0x22);
    expect(await mapExtents(client, 'base:allocation')).toEqual(nbdinfoMap(uri, 'base:allocation', withoutHoles));
    // The written clusters; the last 64 KiB cluster got 4 KiB, and qemu asks the host
    // file (sparse below the qcow2) which of it holds data.
    expect(await mapExtents(client, 'base:allocation')).toEqual([
      { offset: 1 * MiB, length: 64 * 1024 },
      { offset: 5 * MiB, length: 64 * 1024 },
      { offset: 10 * MiB, length: 1 * MiB },
      { offset: 20 * MiB, length: 128 * 1024 },
      { offset: 63 * MiB, length: 4096 },
    ]);
    await client.close();
  });

  it('lists exactly the extents written since the dirty bitmap was added', async () => {
    const { uri } = await qemuNbd(qcow2, 'qcow2', ['-B', 'b0']);
    const client = await NbdClient.connect(uri, { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
    expect([...client.metaContexts.keys()].sort()).toEqual(['base:allocation', 'qemu:dirty-bitmap:b0']);
    const dirty = await mapExtents(client, 'qemu:dirty-bitmap:b0');
    expect(dirty).toEqual([...DIRTY].sort((a, b) => a.offset - b.offset).map(({ offset, length }) => ({ offset, length })));
    expect(dirty).toEqual(nbdinfoMap(uri, 'qemu:dirty-bitmap:b0', (t) => (t & 1) === 1));
    // Small requests: the walk goes on from where each answer ends.
    expect(await mapExtents(client, 'qemu:dirty-bitmap:b0', { requestLength: 3 * MiB + 512 })).toEqual(dirty);
    expect(await mapExtents(client, 'qemu:dirty-bitmap:b0', { maxExtents: 2 })).toBeUndefined();
    await client.close();
  });

  it('keeps several reads in flight on one connection, each landing in its own buffer', async () => {
    const { uri } = await qemuNbd(raw, 'raw');
    const client = await NbdClient.connect(uri);
    const offsets = Array.from({ length: 16 }, (_, i) => (i * 4 * MiB + 1 * MiB - 4096) % (SIZE - 512 * 1024));
    const bufs = offsets.map(() => Buffer.alloc(512 * 1024));
    const reads = offsets.map((o, i) => client.read(bufs[i]!, o, 512 * 1024));
    expect(client.inFlight).toBe(16);
    await Promise.all(reads);
    offsets.forEach((o, i) => expect(bufs[i]!.equals(rawBytes.subarray(o, o + 512 * 1024))).toBe(true));
    // A read over the largest request goes as several; a read past the end is short.
    const big = Buffer.alloc(40 * MiB);
    expect(await client.read(big, 0, big.length)).toBe(40 * MiB);
    expect(big.equals(rawBytes.subarray(0, 40 * MiB))).toBe(true);
    expect(await client.read(Buffer.alloc(8192), SIZE - 4096, 8192)).toBe(4096);
    await client.close();
  });

  it('spreads reads over a pool of connections to a read-only export', async () => {
    const { uri } = await qemuNbd(raw, 'raw');
    const pool = await NbdPool.connect(uri, { connections: 4 });
    expect(pool.clients).toHaveLength(4);
    expect(pool.clients[0]!.readOnly).toBe(true);
    const buf = Buffer.alloc(SIZE);
    const slices = Array.from({ length: 8 }, (_, i) => pool.read(buf.subarray(i * 8 * MiB), i * 8 * MiB, 8 * MiB));
    expect(pool.clients.map((c) => c.inFlight)).toEqual([2, 2, 2, 2]);
    await Promise.all(slices);
    expect(buf.equals(rawBytes)).toBe(true);
    await pool.close();
  });

  it('fails a pending read quickly with SourceUnavailable when qemu-nbd dies', async () => {
    const { uri, child } = await qemuNbd(raw, 'raw');
    const client = await NbdClient.connect(uri);
    child.kill('SIGSTOP'); // the read is certainly pending when the server dies
    const started = Date.now();
    const read = client.read(Buffer.alloc(4 * MiB), 0, 4 * MiB);
    child.kill('SIGKILL');
    await expect(read).rejects.toThrow(SourceUnavailable);
    await expect(read).rejects.toThrow(/NBD export 'disk' at unix socket .*: (read ECONNRESET|server closed the connection).*\(1 requests in flight\)/);
    expect(Date.now() - started).toBeLessThan(2000);
    await expect(client.read(Buffer.alloc(512), 0, 512)).rejects.toThrow(SourceUnavailable);
    await client.close();
  });

  it('names the export when the server does not have it, or lacks a metadata context', async () => {
    const { uri } = await qemuNbd(raw, 'raw');
    const wrong = uri.replace('///disk', '///nosuch');
    await expect(NbdClient.connect(wrong)).rejects.toThrow(/cannot open NBD export 'nosuch' at unix socket .*: NBD_REP_ERR_UNKNOWN/);
    await expect(NbdClient.connect(uri.replace(/socket=.*/, `socket=${join(dir, 'absent.sock')}`))).rejects.toThrow(/cannot open NBD export 'disk' .*ENOENT/);
    const client = await NbdClient.connect(uri, { metaContexts: ['qemu:dirty-bitmap:b9'] });
    await expect(mapExtents(client, 'qemu:dirty-bitmap:b9')).rejects.toThrow(/has no metadata context 'qemu:dirty-bitmap:b9' \(selected: none\)/);
    await client.close();
  });

  it('reads with simple replies from a server without structured replies (nbdkit --no-sr)', async () => {
    const socket = join(dir, 'nbdkit.sock');
    await serve('nbdkit', ['-f', '--exit-with-parent', '--no-sr', '-r', '-U', socket, 'pattern', `size=${8 * MiB}`], socket);
    const client = await NbdClient.connect(`nbd+unix:///?socket=${socket}`, { metaContexts: ['base:allocation'] });
    expect(client.structuredReplies).toBe(false);
    expect(client.metaContexts.size).toBe(0);
    const buf = Buffer.alloc(1 * MiB);
    await Promise.all([client.read(buf, 3 * MiB, 512 * 1024), client.read(buf.subarray(512 * 1024), 3 * MiB + 512 * 1024, 512 * 1024)]);
    // The pattern plugin writes each 8-byte word's own offset.
    for (let at = 0; at < buf.length; at += 8)
      if (buf.readBigUInt64BE(at) !== BigInt(3 * MiB + at)) throw new Error(`word at ${3 * MiB + at} is ${buf.readBigUInt64BE(at)}`);
    await client.close();
  });
});

/** A server in this test: answers the handshake like a real one, then replies after `delayMs` (or never). */
function stallingServer(socket: string, opts: { answerHandshake: boolean; replyAfterMs?: number }): Promise<Server> {
  const server = createServer((conn) => {
    if (opts.answerHandshake) handshakeThenReply(conn, opts.replyAfterMs);
  });
  return new Promise((resolve) => server.listen(socket, () => resolve(server)));
}

function handshakeThenReply(conn: Socket, replyAfterMs: number | undefined): void {
  conn.write(encodeServerGreeting(3));
  let buf = Buffer.alloc(0);
  let stage: 'flags' | 'options' | 'requests' = 'flags';
  conn.on('error', () => {});
  conn.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (stage === 'flags' && buf.length >= 4) {
        buf = buf.subarray(4);
        stage = 'options';
      } else if (stage === 'options' && buf.length >= 16 && buf.length >= 16 + buf.readUInt32BE(12)) {
        const option = buf.readUInt32BE(8);
        buf = buf.subarray(16 + buf.readUInt32BE(12));
        if (option === Option.GO) {
          conn.write(encodeOptionReply(option, OptionReply.INFO, encodeInfoExport(1 * MiB, TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY)));
          stage = 'requests';
        }
        conn.write(encodeOptionReply(option, option === Option.STRUCTURED_REPLY || option === Option.GO ? OptionReply.ACK : OptionReply.ERR_UNSUP));
      } else if (stage === 'requests' && buf.length >= 28) {
        const req = parseRequest(buf.subarray(0, 28));
        buf = buf.subarray(28);
        const reply = encodeChunk(ReplyFlag.DONE, ChunkType.OFFSET_DATA, req.cookie, encodeOffsetData(req.offset, Buffer.alloc(req.length, 0x5a)));
        if (replyAfterMs !== undefined) setTimeout(() => conn.writable && conn.write(reply), replyAfterMs);
      } else {
        return;
      }
    }
  });
}

describe('NBD client deadlines', () => {
  let sdir = '';
  const servers: Server[] = [];
  beforeAll(async () => {
    sdir = await mkdtemp(join(tmpdir(), 'lifeboat-nbd-stall-'));
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r)).catch(() => {});
  });
  afterAll(async () => {
    await rm(sdir, { recursive: true, force: true });
  });

  it('gives up connecting to a server that accepts and never speaks', async () => {
    const socket = join(sdir, 'mute.sock');
    servers.push(await stallingServer(socket, { answerHandshake: false }));
    const started = Date.now();
    await expect(NbdClient.connect(`nbd+unix:///vda?socket=${socket}`, { timeoutMs: 200 })).rejects.toThrow(
      /cannot open NBD export 'vda' at unix socket .*mute.sock: no answer within 200 ms/,
    );
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it('fails a read the server never answers at its deadline, and drops the late reply unseen', async () => {
    const socket = join(sdir, 'slow.sock');
    servers.push(await stallingServer(socket, { answerHandshake: true, replyAfterMs: 400 }));
    const client = await NbdClient.connect(`nbd+unix:///vda?socket=${socket}`, { timeoutMs: 150 });
    const buf = Buffer.alloc(4096, 0xee);
    await expect(client.read(buf, 0, 4096)).rejects.toThrow(/NBD export 'vda' at unix socket .* did not answer READ of 4096 bytes at 0 within 150 ms/);
    await new Promise((r) => setTimeout(r, 500));
    // The late reply arrived, was parsed and dropped: the caller's buffer is untouched.
    expect(buf.every((b) => b === 0xee)).toBe(true);
    expect(client.inFlight).toBe(0);
    await client.close();
  });

  it('aborts connecting when the signal fires', async () => {
    const socket = join(sdir, 'mute2.sock');
    servers.push(await stallingServer(socket, { answerHandshake: false }));
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('shutting down')), 50);
    await expect(NbdClient.connect(`nbd+unix:///vda?socket=${socket}`, { signal: ac.signal })).rejects.toThrow('shutting down');
  });
});
