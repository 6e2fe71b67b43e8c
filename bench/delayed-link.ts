/**
 * An emulated WAN link for benchmarks: a TCP proxy on 127.0.0.1 that holds every piece of
 * data `rttMs / 2` in each direction before passing it on (order kept: every piece waits
 * the same time, and Node runs timers of one duration in the order they were set). Movers
 * sit on-premises and the repository is often a cloud region away; on loopback every
 * request's round trip is free, which hides what costs round trips (a request waiting for
 * another, `Expect: 100-continue`, too few requests in flight). Bandwidth is not limited:
 * only latency is emulated. The kernel cannot do it here (no netem qdisc on these machines).
 *
 * A delay line, not a window: the proxy reads each side as fast as it comes and holds
 * every piece in memory for its delay, so one connection can carry any bandwidth (a real
 * WAN's TCP window would cap one connection at window / round trip: more lenient than a
 * real link, to every tool alike). A new connection's first bytes also wait one round trip
 * more, as a TCP handshake would make them (the client's connect to the proxy is local and
 * instant): a tool that opens connections often pays for it as it would on a WAN.
 */
import { createServer, connect, type Socket } from 'node:net';

export interface DelayedLink {
  /** `http://127.0.0.1:<port>`: the target, `rttMs` away. */
  readonly url: string;
  close(): Promise<void>;
}

/** Starts a proxy to `target` (an http URL on this machine) with `rttMs` of round trip. */
export async function startDelayedLink(target: string, rttMs: number): Promise<DelayedLink> {
  if (!Number.isFinite(rttMs) || rttMs <= 0) throw new RangeError(`a delayed link needs a round trip above 0 ms, got ${rttMs}`);
  const { hostname, port } = new URL(target);
  const oneWay = rttMs / 2;
  const sockets = new Set<Socket>();
  /** Passes what `from` sends to `to` `oneWay` late, once `open` (a handshake's round trip) has passed. */
  const forward = (from: Socket, to: Socket, open: Promise<void>) => {
    const later = (f: () => void) => open.then(() => setTimeout(f, oneWay)); // in order: promise jobs and timers of one duration keep it
    from.on('data', (d) => later(() => to.write(d)));
    from.on('end', () => later(() => to.end()));
    from.on('error', () => to.destroy());
    from.on('close', () => sockets.delete(from));
  };
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    for (const s of [client, upstream]) sockets.add(s);
    const handshake = new Promise<void>((ok) => setTimeout(ok, rttMs));
    forward(client, upstream, handshake);
    forward(upstream, client, Promise.resolve());
  });
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('delayed link: no TCP address');
  return {
    url: `http://127.0.0.1:${address.port}`,
    close: () =>
      new Promise<void>((ok) => {
        for (const s of sockets) s.destroy();
        server.close(() => ok());
      }),
  };
}
