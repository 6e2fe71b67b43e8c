/**
 * The embedded stack serves every function invocation through one set of clients; in AWS
 * each invocation's container has its own, so the SDK's 50-socket pool is never shared.
 * These tests hold a real local HTTP server's answers until 60 requests are open at once.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { createClients, type ClientWiring } from '../functions/commons/clients.ts';
import { FUNCTION_CLIENT_WIRING } from '../local/stack.ts';

const WANTED = 60;
let server: Server | undefined;

afterEach(async () => {
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  server = undefined;
});

/** Sends 80 SendTaskSuccess at once through clients wired so; answers all once 60 are open (or, without that, all from 3 s on); the most open at once. */
async function mostOpenAtOnce(wiring: ClientWiring | undefined): Promise<number> {
  let open = 0;
  let most = 0;
  const held: (() => void)[] = [];
  let released = false;
  const releaseAll = () => {
    released = true;
    for (const answer of held.splice(0)) answer();
  };
  server = createServer((req, res) => {
    req.resume();
    open++;
    most = Math.max(most, open);
    held.push(() => {
      open--;
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0' }).end('{}');
    });
    if (released || open >= WANTED) releaseAll();
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const env = { tableName: 't', region: 'us-east-1', dynamodbEndpoint: url, sfnEndpoint: url };
  const clients = createClients(env, wiring);
  const fallback = setTimeout(releaseAll, 3000);
  const answers = await Promise.all(Array.from({ length: 80 }, (_, i) => clients.tasks.succeed(`token-${i}`, {})));
  clearTimeout(fallback);
  releaseAll();
  expect(answers.every(Boolean)).toBe(true);
  return most;
}

it("gives the embedded stack's function clients no 50-socket cap, as AWS's separate containers share no pool", async () => {
  expect(await mostOpenAtOnce(FUNCTION_CLIENT_WIRING)).toBeGreaterThanOrEqual(WANTED);
});

it("keeps the SDK's own socket cap for the clients a Lambda container builds", async () => {
  expect(await mostOpenAtOnce(undefined)).toBe(50);
});
