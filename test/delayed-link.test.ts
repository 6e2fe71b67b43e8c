/**
 * The bench's emulated WAN link (bench/delayed-link.ts): bytes pass intact and in order in
 * both directions, each request pays the round trip, and a half-close passes through.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDelayedLink, type DelayedLink } from '../bench/delayed-link.ts';

let server: Server;
let url: string;
let link: DelayedLink;

beforeAll(async () => {
  // Echoes the SHA-256 of the body it received, then the body itself.
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      res.setHeader('x-sha256', createHash('sha256').update(body).digest('hex'));
      res.end(body);
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const a = server.address();
  url = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  link = await startDelayedLink(url, 60);
});
afterAll(async () => {
  await link.close();
  await new Promise((ok) => server.close(ok));
});

it('passes a large body both ways intact and in order, a round trip later', async () => {
  const body = randomBytes(6 * 1024 * 1024);
  const started = performance.now();
  const res = await fetch(`${link.url}/echo`, { method: 'PUT', body });
  const back = Buffer.from(await res.arrayBuffer());
  expect(res.headers.get('x-sha256')).toBe(createHash('sha256').update(body).digest('hex'));
  expect(back.equals(body)).toBe(true);
  // The connection's set-up and the request each pay the 60 ms round trip.
  expect(performance.now() - started).toBeGreaterThanOrEqual(2 * 60 - 5);
});

it('serves requests in parallel on separate connections', async () => {
  const bodies = Array.from({ length: 4 }, () => randomBytes(100_000));
  const answers = await Promise.all(bodies.map(async (b) => Buffer.from(await (await fetch(`${link.url}/p`, { method: 'PUT', body: b })).arrayBuffer())));
  answers.forEach((a, i) => expect(a.equals(bodies[i]!)).toBe(true));
});

it('refuses a round trip of 0 ms or less', async () => {
  await expect(startDelayedLink(url, 0)).rejects.toThrow(/round trip above 0 ms/);
});
