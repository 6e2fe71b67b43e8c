/**
 * A small read-only NBD server (NetworkBlockDevice/nbd `doc/proto.md`): fixed newstyle
 * handshake, NBD_OPT_GO / INFO / EXPORT_NAME / LIST / ABORT / STRUCTURED_REPLY /
 * LIST_META_CONTEXT / SET_META_CONTEXT (`base:allocation`), and the commands READ,
 * BLOCK_STATUS, FLUSH (nothing to flush) and DISC; WRITE, TRIM and WRITE_ZEROES are
 * refused with EPERM. Exports are {@link BlockExport}s, named.
 *
 * Everything a client sends is untrusted: every message is checked before it is used,
 * requests are bounded (`maxBlockBytes`, bytes in flight per connection, options per
 * handshake and their size, a handshake deadline, a connection cap), and a client that
 * breaks the protocol loses its connection, never the process.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { BlockExport, ServerLogger, SessionHost } from './block-export.ts';
import { NbdServerSession } from './server-session.ts';
import { unixNbdUri } from './uri.ts';

/** Where a server listens: a unix socket, or a TCP port (127.0.0.1 unless told). */
export type ListenAddress = { socket: string } | { host?: string; port?: number };

export interface NbdServerOptions {
  /** The exports by name (the disk id). The first one is also the default export (the empty name). */
  exports: ReadonlyMap<string, BlockExport>;
  /** Connections served at once (default 16); more are answered NBD_REP_ERR_POLICY and closed. */
  maxConnections?: number;
  /** Largest READ or BLOCK_STATUS length, and NBD_INFO_BLOCK_SIZE's maximum (default 32 MiB, the spec's interoperable maximum). */
  maxBlockBytes?: number;
  /** The server closes itself after this long with no connection (0: never; default 0). */
  idleTimeoutMs?: number;
  /** A connection must reach transmission within this (default 30 s). */
  handshakeTimeoutMs?: number;
  logger?: ServerLogger;
}

const MiB = 1024 * 1024;

/** Counters of a server, for progress and results. */
export interface NbdServerStats {
  bytesServed: number;
  connections: number;
  refused: number;
  active: number;
}

/**
 * A listening NBD server. `done` resolves with why it stopped: 'idle' (no connection for
 * `idleTimeoutMs`) or 'closed' (`close()`).
 */
export class NbdServer {
  readonly stats: NbdServerStats = { bytesServed: 0, connections: 0, refused: 0, active: 0 };
  readonly done: Promise<'idle' | 'closed'>;
  private readonly server: Server;
  private readonly o: Required<Omit<NbdServerOptions, 'logger'>> & Pick<NbdServerOptions, 'logger'>;
  private readonly sockets = new Set<Socket>();
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveDone!: (why: 'idle' | 'closed') => void;
  private closing: Promise<void> | undefined;
  address: { socket: string } | { host: string; port: number } = { host: '', port: 0 };

  private constructor(o: NbdServerOptions) {
    if (o.exports.size === 0) throw new RangeError('an NBD server needs at least one export');
    this.o = { maxConnections: 16, maxBlockBytes: 32 * MiB, idleTimeoutMs: 0, handshakeTimeoutMs: 30_000, ...o };
    if (!Number.isInteger(this.o.maxBlockBytes) || this.o.maxBlockBytes < 4096 || this.o.maxBlockBytes > 0xffffffff)
      throw new RangeError(`maxBlockBytes ${this.o.maxBlockBytes} must be a whole number from 4096 to 2^32-1`);
    this.done = new Promise((ok) => (this.resolveDone = ok));
    this.server = createServer((s) => this.accept(s));
  }

  static async listen(address: ListenAddress, o: NbdServerOptions): Promise<NbdServer> {
    const srv = new NbdServer(o);
    await new Promise<void>((ok, fail) => {
      srv.server.once('error', fail);
      if ('socket' in address) srv.server.listen(address.socket, ok);
      else srv.server.listen(address.port ?? 0, address.host ?? '127.0.0.1', ok);
    });
    const a = srv.server.address();
    srv.address = typeof a === 'string' ? { socket: a } : { host: a!.address, port: a!.port };
    srv.armIdle();
    return srv;
  }

  /** An `nbd+unix://` or `nbd://` URI of an export of this server. */
  uri(exportName: string): string {
    const a = this.address;
    return 'socket' in a ? unixNbdUri(a.socket, exportName) : `nbd://${a.host}:${a.port}/${encodeURIComponent(exportName)}`;
  }

  /** Stops listening and ends every connection. */
  close(why: 'idle' | 'closed' = 'closed'): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.idleTimer);
      const closed = new Promise<void>((ok) => this.server.close(() => ok()));
      for (const s of this.sockets) s.destroy();
      await closed;
      this.o.logger?.info('nbd.closed', { why, ...this.stats });
      this.resolveDone(why);
    })();
    return this.closing;
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.o.idleTimeoutMs > 0 && this.stats.active === 0) {
      this.idleTimer = setTimeout(() => void this.close('idle'), this.o.idleTimeoutMs);
    }
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    const over = this.stats.active >= this.o.maxConnections;
    // Refused connections are bounded too: a client opening sockets in a loop gets them closed at once.
    if (over && this.sockets.size >= 2 * this.o.maxConnections) return void socket.destroy();
    this.sockets.add(socket);
    socket.setNoDelay(true);
    if (over) this.stats.refused++;
    else {
      this.stats.active++;
      this.stats.connections++;
      clearTimeout(this.idleTimer);
    }
    const host: SessionHost = {
      exports: this.o.exports,
      maxBlockBytes: this.o.maxBlockBytes,
      served: (n) => (this.stats.bytesServed += n),
      ...(this.o.logger ? { logger: this.o.logger } : {}),
    };
    const session = new NbdServerSession(
      host,
      {
        write: (b, done) => {
          if (socket.destroyed) return done?.();
          if (Buffer.isBuffer(b)) return void socket.write(b, done ? () => done() : undefined);
          // One reply's header and data pieces go out together (one writev), not a packet each.
          socket.cork();
          b.forEach((x, i) => socket.write(x, i === b.length - 1 && done ? () => done() : undefined));
          socket.uncork();
          if (b.length === 0) done?.();
        },
        end: (hard) => (hard ? socket.destroy() : socket.end()),
        pause: () => socket.pause(),
        resume: () => socket.resume(),
      },
      over ? `too many connections: this export serves at most ${this.o.maxConnections} at once` : undefined,
    );
    const deadline = setTimeout(() => {
      this.o.logger?.error('nbd.disconnect', { reason: `no transmission within ${this.o.handshakeTimeoutMs} ms of connecting` });
      socket.destroy();
    }, this.o.handshakeTimeoutMs);
    session.onTransmission = () => clearTimeout(deadline);
    socket.on('data', (d: Buffer) => session.push(d));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(deadline);
      session.gone();
      this.sockets.delete(socket);
      if (!over) {
        this.stats.active--;
        this.armIdle();
      }
    });
  }
}
