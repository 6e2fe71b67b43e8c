/**
 * NBD over TCP, with and without TLS: the client's NBD_OPT_STARTTLS exchange against
 * servers in this test that refuse or misbehave (it never goes on in clear text), and
 * against qemu-nbd over TCP, with x509 credentials made at test time by openssl (a CA, the
 * server's certificate for 127.0.0.1, a client certificate: QEMU verifies clients by
 * default), reading the export byte-identical and mapping it as libnbd's nbdinfo does
 * with the same credentials folder.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../mover/nbd/client.ts';
import { mapExtents } from '../mover/nbd/extents.ts';
import { NbdPool } from '../mover/nbd/pool.ts';
import { encodeOptionReply, encodeServerGreeting } from '../mover/nbd/handshake-wire.ts';
import { Option, OptionReply } from '../mover/nbd/protocol.ts';
import { loadTlsCredentials, type NbdTlsCredentials } from '../mover/nbd/tls.ts';
import { parseNbdUri, tcpNbdUri } from '../mover/nbd/uri.ts';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const tools = ['qemu-nbd', 'qemu-img', 'qemu-io', 'nbdinfo', 'openssl'];
const missing = tools.filter((t) => spawnSync(t, [t === 'openssl' ? 'version' : '--version']).status !== 0);
if (missing.length > 0 && process.env.CI) throw new Error(`CI must install ${missing.join(', ')} (Debian: qemu-utils libnbd-bin openssl)`);

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...(env && { env: { ...process.env, ...env } }) });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

let dir = '';
const children = new Set<ChildProcess>();
const servers: Server[] = [];

afterEach(async () => {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

// ---- servers in this test ---------------------------------------------------------------

/** Options the fake server received, in order. */
interface FakeServer {
  port: number;
  options: number[];
}

/**
 * A server that greets, reads client flags, and answers the first option with `answer`
 * (for STARTTLS: an error, or an ACK followed by `inject` bytes in clear text); every
 * later option is recorded and answered NBD_REP_ERR_UNSUP.
 */
async function fakeServer(answer: (conn: Socket, option: number) => void): Promise<FakeServer> {
  const options: number[] = [];
  const server = createServer((conn) => {
    conn.on('error', () => {});
    conn.write(encodeServerGreeting(3));
    let buf = Buffer.alloc(0);
    let flags = false;
    conn.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!flags && buf.length >= 4) {
        buf = buf.subarray(4);
        flags = true;
      }
      while (flags && buf.length >= 16 && buf.length >= 16 + buf.readUInt32BE(12)) {
        const option = buf.readUInt32BE(8);
        buf = buf.subarray(16 + buf.readUInt32BE(12));
        options.push(option);
        if (options.length === 1) answer(conn, option);
        else conn.write(encodeOptionReply(option, OptionReply.ERR_UNSUP));
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, options };
}

const someCredentials: NbdTlsCredentials = { ca: '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n' };

describe('NBD_OPT_STARTTLS, as a client that requires TLS', () => {
  it('fails, naming the refusal, when the server refuses STARTTLS, and sends nothing else in clear text', async () => {
    const s = await fakeServer((conn, option) => conn.write(encodeOptionReply(option, OptionReply.ERR_UNSUP, Buffer.from('TLS not configured'))));
    await expect(NbdClient.connect(`nbds://127.0.0.1:${s.port}/vda`, { tls: someCredentials, timeoutMs: 2000 })).rejects.toThrow(
      /cannot open NBD export 'vda' at 127.0.0.1:\d+ \(TLS\): the server refused TLS \(NBD_OPT_STARTTLS: NBD_REP_ERR_UNSUP: TLS not configured\); TLS is required, so the client does not go on in clear text/,
    );
    expect(s.options).toEqual([Option.STARTTLS]);
  });

  it('fails when the server answers STARTTLS with a policy error', async () => {
    const s = await fakeServer((conn, option) => conn.write(encodeOptionReply(option, OptionReply.ERR_POLICY)));
    await expect(NbdClient.connect(`nbds://127.0.0.1:${s.port}/vda`, { tls: someCredentials, timeoutMs: 2000 })).rejects.toThrow(
      /refused TLS \(NBD_OPT_STARTTLS: NBD_REP_ERR_POLICY\)/,
    );
    expect(s.options).toEqual([Option.STARTTLS]);
  });

  it('refuses clear-text bytes the server slips in between its ACK and the TLS handshake', async () => {
    const s = await fakeServer((conn, option) =>
      conn.write(Buffer.concat([encodeOptionReply(option, OptionReply.ACK), encodeOptionReply(Option.GO, OptionReply.ACK)])),
    );
    await expect(NbdClient.connect(`nbds://127.0.0.1:${s.port}/vda`, { tls: someCredentials, timeoutMs: 2000 })).rejects.toThrow(
      /server sent 20 bytes after accepting NBD_OPT_STARTTLS, before the TLS handshake/,
    );
  });

  it('refuses an ACK to STARTTLS that carries data, and a reply to another option', async () => {
    const withData = await fakeServer((conn, option) => conn.write(encodeOptionReply(option, OptionReply.ACK, Buffer.from('x'))));
    await expect(NbdClient.connect(`nbds://127.0.0.1:${withData.port}/vda`, { tls: someCredentials, timeoutMs: 2000 })).rejects.toThrow(
      /NBD_REP_ACK to NBD_OPT_STARTTLS carries data/,
    );
    const other = await fakeServer((conn) => conn.write(encodeOptionReply(Option.GO, OptionReply.ACK)));
    await expect(NbdClient.connect(`nbds://127.0.0.1:${other.port}/vda`, { tls: someCredentials, timeoutMs: 2000 })).rejects.toThrow(
      /option reply is for option 7, expected 5/,
    );
  });

  it('does not connect at all to a TLS URI without credentials', async () => {
    const s = await fakeServer((conn, option) => conn.write(encodeOptionReply(option, OptionReply.ERR_UNSUP)));
    await expect(NbdClient.connect(`nbds://127.0.0.1:${s.port}/vda`)).rejects.toThrow(
      /requires TLS and this mover has no NBD TLS credentials \(set LIFEBOAT_NBD_TLS_DIR/,
    );
    expect(s.options).toEqual([]);
  });

  it('parses TLS URIs and writes TCP ones', () => {
    expect(parseNbdUri('nbds://10.0.0.5:10810/vda')).toEqual({ exportName: 'vda', host: '10.0.0.5', port: 10810, tls: true });
    expect(parseNbdUri('nbds+unix:///vda?socket=/run/s.sock&tls-hostname=kvm-01')).toEqual({
      exportName: 'vda',
      socket: '/run/s.sock',
      tls: true,
      tlsHostname: 'kvm-01',
    });
    expect(parseNbdUri('nbd://[fd00::5]:10810/vda')).toEqual({ exportName: 'vda', host: 'fd00::5', port: 10810 });
    expect(tcpNbdUri('fd00::5', 10810, 'vda', true)).toBe('nbds://[fd00::5]:10810/vda');
    expect(tcpNbdUri('kvm-01.example.com', 10809, 'lifeboat-ab/vda', false)).toBe('nbd://kvm-01.example.com:10809/lifeboat-ab%2Fvda');
  });
});

describe('TLS credentials folder', () => {
  it('needs the CA, and the client certificate and key together', async () => {
    const d = await mkdtemp(join(tmpdir(), 'lifeboat-tlsdir-'));
    try {
      await expect(loadTlsCredentials(d)).rejects.toThrow(/has no ca-cert.pem/);
      await writeFile(join(d, 'ca-cert.pem'), 'CA');
      expect(await loadTlsCredentials(d)).toEqual({ ca: 'CA', source: d });
      await writeFile(join(d, 'client-cert.pem'), 'CERT');
      await expect(loadTlsCredentials(d)).rejects.toThrow(/has client-cert.pem without client-key.pem/);
      await writeFile(join(d, 'client-key.pem'), 'KEY');
      expect(await loadTlsCredentials(d)).toEqual({ ca: 'CA', cert: 'CERT', key: 'KEY', source: d });
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});

// ---- qemu-nbd over TCP ------------------------------------------------------------------

/** A CA, and certificates it signs; `names` become subjectAltNames. */
function makeCa(d: string, cn: string): { key: string; cert: string } {
  const key = join(d, `${cn}-key.pem`);
  const cert = join(d, `${cn}-cert.pem`);
  run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '2',
    '-subj',
    `/CN=${cn}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { key, cert };
}

function issue(d: string, ca: { key: string; cert: string }, name: string, usage: 'serverAuth' | 'clientAuth', sans: string): { key: string; cert: string } {
  const key = join(d, `${name}-key.pem`);
  const csr = join(d, `${name}.csr`);
  const cert = join(d, `${name}-cert.pem`);
  const ext = join(d, `${name}.ext`);
  run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`]);
  spawnSync('sh', [
    '-c',
    `printf '%s\\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=${usage}' 'subjectAltName=${sans}' > '${ext}'`,
  ]);
  run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
  return { key, cert };
}

/** A port nothing listens on now (the kernel's pick). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Resolves once something accepts connections on the port (or the server exits). */
async function listening(port: number, child: ChildProcess, stderr: () => string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`qemu-nbd exited: ${stderr()}`);
    const ok = await new Promise<boolean>((r) => {
      const c = connect({ host: '127.0.0.1', port }, () => {
        c.destroy();
        r(true);
      });
      c.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`qemu-nbd does not listen on ${port}: ${stderr()}`);
}

describe.skipIf(missing.length > 0)('NBD client against qemu-nbd over TCP', () => {
  let image = '';
  let bytes: Buffer;
  let serverDir = '';
  let clientDir = '';
  let creds: NbdTlsCredentials;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-nbd-tls-'));
    image = join(dir, 'disk.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', image, String(SIZE)]);
    run('qemu-io', [
      '-f',
      'raw',
      '-c',
      `write -P 0xab ${1 * MiB} ${256 * 1024}`,
      '-c',
      `write -P 0x5c ${9 * MiB} ${3 * MiB}`,
      '-c',
      `write -P 0x01 ${SIZE - 4096} 4096`,
      image,
    ]);
    bytes = await readFile(image);
    const pki = join(dir, 'pki');
    await mkdir(pki);
    const ca = makeCa(pki, 'lifeboat-test-ca');
    const server = issue(pki, ca, 'server', 'serverAuth', 'IP:127.0.0.1,DNS:localhost');
    const client = issue(pki, ca, 'client', 'clientAuth', 'DNS:mover');
    // QEMU's x509 folder on the server; the mover's (and libnbd's) on the client.
    serverDir = join(dir, 'server');
    clientDir = join(dir, 'client');
    await mkdir(serverDir);
    await mkdir(clientDir);
    const copy = async (from: string, to: string) => writeFile(to, await readFile(from));
    await copy(ca.cert, join(serverDir, 'ca-cert.pem'));
    await copy(server.cert, join(serverDir, 'server-cert.pem'));
    await copy(server.key, join(serverDir, 'server-key.pem'));
    await copy(ca.cert, join(clientDir, 'ca-cert.pem'));
    await copy(client.cert, join(clientDir, 'client-cert.pem'));
    await copy(client.key, join(clientDir, 'client-key.pem'));
    creds = await loadTlsCredentials(clientDir);
  }, 60_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** qemu-nbd exporting the image as `disk` on 127.0.0.1, with TLS when `tlsDir` is given. */
  async function qemuNbd(tlsDir?: string): Promise<number> {
    const port = await freePort();
    const tls = tlsDir ? ['--object', `tls-creds-x509,id=tls0,dir=${tlsDir},endpoint=server`, '--tls-creds', 'tls0'] : [];
    const child = spawn(
      'qemu-nbd',
      ['--read-only', '--persistent', '--shared=8', '--bind=127.0.0.1', `--port=${port}`, '--format=raw', '--export-name=disk', ...tls, image],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.add(child);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    await listening(port, child, () => stderr);
    return port;
  }

  const nbdinfoMap = (uri: string, env?: NodeJS.ProcessEnv) =>
    (JSON.parse(run('nbdinfo', ['--map', '--json', uri], env)) as { offset: number; length: number; type: number }[]).filter((e) => (e.type & 3) === 0);

  it('reads a TLS export byte-identical, maps it as nbdinfo does with the same credentials, and the pool reads over several TLS connections', async () => {
    const port = await qemuNbd(serverDir);
    const uri = `nbds://127.0.0.1:${port}/disk`;
    const client = await NbdClient.connect(uri, { tls: creds, metaContexts: ['base:allocation'] });
    expect(client.size).toBe(SIZE);
    const buf = Buffer.alloc(SIZE, 0xee);
    expect(await client.read(buf, 0, SIZE)).toBe(SIZE);
    expect(buf.equals(bytes)).toBe(true);
    const map = await mapExtents(client, 'base:allocation');
    await client.close();
    // libnbd reads the same folder layout (tls-certificates) and verifies the server the same way.
    const reference = nbdinfoMap(`${uri}?tls-certificates=${clientDir}`);
    let merged: { offset: number; length: number }[] = [];
    for (const e of reference) {
      const last = merged[merged.length - 1];
      if (last && last.offset + last.length === e.offset) last.length += e.length;
      else merged.push({ offset: e.offset, length: e.length });
    }
    expect(map).toEqual(merged);
    merged = [];

    const pool = await NbdPool.connect(uri, { tls: creds, connections: 4 });
    expect(pool.clients).toHaveLength(4);
    const again = Buffer.alloc(SIZE);
    await Promise.all(Array.from({ length: 16 }, (_, i) => pool.read(again.subarray(i * MiB, (i + 1) * MiB), i * MiB, MiB)));
    expect(again.equals(bytes)).toBe(true);
    await pool.close();
  }, 60_000);

  it('is refused in clear text by a TLS server, naming TLS as the remedy', async () => {
    const port = await qemuNbd(serverDir);
    await expect(NbdClient.connect(`nbd://127.0.0.1:${port}/disk`, { timeoutMs: 5000 })).rejects.toThrow(/NBD_REP_ERR_TLS_REQD.*use an nbds:\/\/ URI/);
  });

  it('fails TLS with a server whose certificate another CA signed, or that names another host', async () => {
    const port = await qemuNbd(serverDir);
    const otherPki = join(dir, 'other');
    await mkdir(otherPki, { recursive: true });
    const rogue = makeCa(otherPki, 'rogue-ca');
    await expect(
      NbdClient.connect(`nbds://127.0.0.1:${port}/disk`, { tls: { ...creds, ca: await readFile(rogue.cert, 'utf8') }, timeoutMs: 5000 }),
    ).rejects.toThrow(/TLS with the NBD server failed: .*(self[- ]signed|unable to (get|verify))/i);
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/disk?tls-hostname=kvm-02.example.com`, { tls: creds, timeoutMs: 5000 })).rejects.toThrow(
      /TLS with the NBD server failed: .*kvm-02.example.com/,
    );
  });

  it('is refused by a server that verifies clients when the mover has no client certificate', async () => {
    const port = await qemuNbd(serverDir);
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/disk`, { tls: { ca: creds.ca }, timeoutMs: 5000 })).rejects.toThrow(
      /cannot open NBD export 'disk' at 127.0.0.1:\d+ \(TLS\): server closed the connection during the handshake \(after TLS was set up: the server may require a client certificate/,
    );
  });

  it('reads a plain TCP export byte-identical, and refuses to read it when TLS is asked for', async () => {
    const port = await qemuNbd();
    const client = await NbdClient.connect(tcpNbdUri('127.0.0.1', port, 'disk', false), { metaContexts: ['base:allocation'] });
    const buf = Buffer.alloc(SIZE, 0xee);
    await client.read(buf, 0, SIZE);
    expect(buf.equals(bytes)).toBe(true);
    await client.close();
    await expect(NbdClient.connect(tcpNbdUri('127.0.0.1', port, 'disk', true), { tls: creds, timeoutMs: 5000 })).rejects.toThrow(
      /the server refused TLS \(NBD_OPT_STARTTLS: NBD_REP_ERR_(UNSUP|POLICY)/,
    );
  });
});
