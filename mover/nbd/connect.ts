/**
 * Opening an NBD connection: the socket (unix or TCP), STARTTLS when the target asks for
 * TLS, and the handshake (handshake.ts) under a deadline. What is left is a socket in
 * transmission, paused, and the bytes that came with the end of the handshake.
 */
import { createConnection, type Socket } from 'node:net';
import { SourceUnavailable } from '../../contracts/errors.ts';
import { ByteQueue } from './byte-queue.ts';
import { handshake, type HandshakeIO, type Negotiated } from './handshake.ts';
import { NbdProtocolError } from './protocol.ts';
import { startTls, type NbdTlsCredentials } from './tls.ts';
import { describeTarget, NBD_PORT, type NbdTarget } from './uri.ts';

/** A connection that finished its handshake. */
export interface OpenConnection {
  socket: Socket;
  queue: ByteQueue;
  negotiated: Negotiated;
}

/** Connects to `t` and negotiates its export; fails with SourceUnavailable naming the target, or with the signal's reason. */
export async function openConnection(
  t: NbdTarget,
  opts: { metaContexts?: readonly string[] | undefined; signal?: AbortSignal | undefined; timeoutMs: number; tls?: NbdTlsCredentials | undefined },
): Promise<OpenConnection> {
  opts.signal?.throwIfAborted();
  if (t.tls && !opts.tls)
    throw new SourceUnavailable(
      `cannot open ${describeTarget(t)}: it requires TLS and this mover has no NBD TLS credentials (set LIFEBOAT_NBD_TLS_DIR to a folder with ca-cert.pem, client-cert.pem and client-key.pem)`,
    );
  let socket: Socket =
    t.socket !== undefined ? createConnection({ path: t.socket }) : createConnection({ host: t.host, port: t.port ?? NBD_PORT, noDelay: true });
  let queue = new ByteQueue();
  let io = socketIO(socket, queue);
  const plain = socket;
  const upgrade = async () => {
    io.detach();
    // Bytes the server sent after its ACK and before the TLS handshake would be clear
    // text taken as if protected (an injection): the spec's server sends nothing there.
    if (queue.available > 0) throw new NbdProtocolError(`server sent ${queue.available} bytes after accepting NBD_OPT_STARTTLS, before the TLS handshake`);
    socket = await startTls(plain, opts.tls!, t.tlsHostname ?? t.host ?? 'localhost');
    queue = new ByteQueue();
    io = socketIO(socket, queue);
    return io;
  };
  try {
    const n = await withDeadline(handshake(io, t.exportName, opts.metaContexts ?? [], t.tls ? { startTls: upgrade } : {}), opts.timeoutMs, opts.signal);
    io.detach();
    return { socket, queue, negotiated: n };
  } catch (err) {
    socket.destroy();
    plain.destroy();
    if (opts.signal?.aborted) throw opts.signal.reason;
    // Under TLS 1.3 a server that rejects the client's certificate just hangs up after the TLS handshake.
    const hint =
      t.tls && socket !== plain && /closed the connection/.test(messageOf(err))
        ? ' (after TLS was set up: the server may require a client certificate this mover lacks or that its CA did not sign: client-cert.pem in LIFEBOAT_NBD_TLS_DIR)'
        : '';
    throw new SourceUnavailable(`cannot open ${describeTarget(t)}: ${messageOf(err)}${hint}`, err);
  }
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The handshake's byte channel over the socket; leftover bytes stay in `queue`. */
function socketIO(socket: Socket, queue: ByteQueue): HandshakeIO & { detach(): void } {
  let want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  let ended: Error | undefined;
  const check = () => {
    if (!want) return;
    if (queue.available >= want.n) {
      const w = want;
      want = undefined;
      w.resolve(queue.take(w.n));
    } else if (ended) {
      want.reject(ended);
      want = undefined;
    }
  };
  const onData = (chunk: Buffer) => {
    queue.push(chunk);
    check();
  };
  const onEnd = (err?: Error) => {
    ended ??= err ?? new Error('server closed the connection during the handshake');
    check();
  };
  const onClose = () => onEnd();
  socket.on('data', onData);
  socket.on('error', onEnd);
  socket.on('close', onClose);
  return {
    read: (n) => {
      const p = new Promise<Buffer>((resolve, reject) => (want = { n, resolve, reject }));
      check();
      return p;
    },
    write: (bytes) => void socket.write(bytes),
    // Paused until the client's own listeners are in place, so no byte goes unseen.
    detach: () => {
      socket.pause();
      socket.off('data', onData);
      socket.off('error', onEnd);
      socket.off('close', onClose);
    },
  };
}

/** Settles with `work`, or rejects at the deadline or when `signal` aborts. */
async function withDeadline<T>(work: Promise<T>, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    onAbort = () => reject(signal!.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, stop]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}
