/**
 * A fault-injecting HTTP front for an S3 endpoint (the embedded S3 in tests): a loopback
 * proxy that passes requests through unchanged, except those a rule picks, which get a
 * fault instead: an S3 error status (500 InternalError, 503 SlowDown), a reset connection,
 * a PUT whose body is cut half-way on its way to the server, a response whose body is cut
 * half-way (the connection dropped), or a response that stalls
 * (before its headers, or after them and part of its body). Rules match by method and key
 * and fire for the first `times` matching requests, or with a probability drawn from a
 * seeded generator, so a failing run can be replayed.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { prng } from './prng.ts';

export type Fault =
  | { kind: 'status'; status: 500 | 503; code?: 'InternalError' | 'SlowDown' | 'ServiceUnavailable' }
  | { kind: 'reset' }
  /** Forwards half of a PUT's body to the server, then drops both connections. */
  | { kind: 'cut-put' }
  /** Sends a response's headers and half its body, then drops the connection (a link cut mid-download). */
  | { kind: 'cut-body' }
  /** Holds the response: sends nothing (`before-headers`) or its headers and half its body, then nothing. Until closed. */
  | { kind: 'stall'; at?: 'before-headers' | 'mid-body' };

export interface FaultRule {
  /** HTTP method to match (default: any). */
  method?: string;
  /** Matches the request's path without its query, `/<bucket>/<key>` (default: any). */
  path?: RegExp;
  /** Fires for the first `times` matching requests (default: unlimited, see `probability`). */
  times?: number;
  /** Fires with this probability per matching request (default 1). */
  probability?: number;
  fault: Fault;
}

export interface FaultProxy {
  readonly url: string;
  /** Faults injected so far, each with its method and path. */
  readonly injected: { kind: Fault['kind']; method: string; path: string }[];
  /** Requests seen so far. */
  readonly requests: number;
  /** Replaces the rules (their `times` counts start again). */
  setRules(rules: FaultRule[]): void;
  close(): Promise<void>;
}

const errorBody = (code: string) => `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by the fault proxy</Message></Error>`;

/** Starts the proxy on 127.0.0.1 in front of `target` (an http:// URL). */
export async function startFaultProxy(o: { target: string; rules?: FaultRule[]; seed?: number }): Promise<FaultProxy> {
  const upstream = new URL(o.target);
  const random = prng(o.seed ?? 1);
  let rules: { rule: FaultRule; left: number }[] = [];
  const setRules = (r: FaultRule[]) => {
    rules = r.map((rule) => ({ rule, left: rule.times ?? Infinity }));
  };
  setRules(o.rules ?? []);
  const injected: FaultProxy['injected'] = [];
  const sockets = new Set<Socket>();
  let requests = 0;

  const pick = (req: IncomingMessage): Fault | undefined => {
    const path = (req.url ?? '').split('?')[0]!;
    for (const r of rules) {
      if (r.left <= 0 || (r.rule.method && r.rule.method !== req.method) || (r.rule.path && !r.rule.path.test(path))) continue;
      if (r.rule.probability !== undefined && random(1_000_000) >= r.rule.probability * 1_000_000) continue;
      r.left--;
      return r.rule.fault;
    }
    return undefined;
  };

  const forward = (req: IncomingMessage, res: ServerResponse, fault?: Fault) => {
    const up = httpRequest({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      if (fault?.kind === 'stall' || fault?.kind === 'cut-body') {
        // Headers and half the body, then silence (the client sees a body that stops coming), or a dropped connection.
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        const half = Math.floor(Number(upRes.headers['content-length'] ?? 0) / 2);
        let sent = 0;
        upRes.on('data', (d: Buffer) => {
          const part = d.subarray(0, Math.max(0, half - sent));
          sent += part.length;
          if (part.length) res.write(part);
          if (fault.kind === 'cut-body' && sent >= half) res.write('', () => res.socket?.destroy());
        });
        return;
      }
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    if (fault?.kind !== 'cut-put') return void req.pipe(up);
    const half = Math.floor(Number(req.headers['content-length'] ?? 0) / 2);
    let sent = 0;
    req.on('data', (d: Buffer) => {
      const part = d.subarray(0, Math.max(0, half - sent));
      sent += part.length;
      if (part.length) up.write(part);
      // Once half is through, both connections drop, as a client dying mid-upload would.
      if (sent >= half)
        setImmediate(() => {
          up.destroy();
          req.socket.destroy();
        });
    });
  };

  const server = createServer((req, res) => {
    requests++;
    const fault = pick(req);
    if (fault) injected.push({ kind: fault.kind, method: req.method ?? '', path: req.url ?? '' });
    if (!fault || fault.kind === 'cut-put' || fault.kind === 'cut-body' || (fault.kind === 'stall' && fault.at === 'mid-body')) return forward(req, res, fault);
    if (fault.kind === 'reset') return void req.socket.resetAndDestroy();
    if (fault.kind === 'stall') return void req.resume(); // never answered
    req.resume();
    req.on('end', () => {
      res.writeHead(fault.status, { 'content-type': 'application/xml' });
      res.end(errorBody(fault.code ?? (fault.status === 503 ? 'SlowDown' : 'InternalError')));
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    injected,
    get requests() {
      return requests;
    },
    setRules,
    close: () =>
      new Promise<void>((ok) => {
        for (const s of sockets) s.destroy();
        server.close(() => ok());
      }),
  };
}
