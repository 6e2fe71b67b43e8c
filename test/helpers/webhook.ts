/**
 * A webhook receiver on loopback for alert tests: each JSON body it accepts goes through `keep`
 * into `received`; `status` picks each answer (default 204).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Webhook {
  url: string;
  close(): Promise<void>;
}

export async function startWebhook<T>(received: T[], o: { keep: (body: unknown) => T; status?: () => number }): Promise<Webhook> {
  const status = o.status ?? (() => 204);
  const hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += String(c);
    });
    req.on('end', () => {
      const code = status();
      if (code < 300) received.push(o.keep(JSON.parse(body)));
      res.writeHead(code).end();
    });
  });
  await new Promise<void>((ok) => hook.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`,
    close: () =>
      new Promise((ok) => {
        hook.closeAllConnections();
        hook.close(() => ok());
      }),
  };
}
