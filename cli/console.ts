/**
 * `lifeboat console`: the web console for a stack, served on this machine. With `--stack`
 * the pages read the deployed stack's operator API (the `OperatorApiUrl` function URL,
 * SigV4-signed with your credentials) and the actions start its state machines, as
 * `lifeboat backup|restore|verify --stack` do; without it, the running embedded stack's
 * (which `lifeboat up` serves itself too). Same pages, same server (local/console/server.ts).
 */
import type { Command } from 'commander';
import { randomUUID } from 'node:crypto';
import { startConsoleServer } from '../local/console/server.ts';
import { guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

export function registerConsoleCommand(program: Command, defaultDataDir: string, io: Out, port: (v: string) => number): void {
  stackOptions(
    program
      .command('console')
      .description(
        'serve the web console (on 127.0.0.1) for a deployed stack (--stack: its operator API, signed with your credentials, and its workflows) or the running embedded stack, until Ctrl-C',
      )
      .option('--port <port>', 'port on 127.0.0.1 (0: any free port)', port, 8085),
    defaultDataDir,
  ).action(
    guarded(async (opts: StackOptions & { port: number }) => {
      const client = await StackClient.connect(opts);
      try {
        // Fails here, not on the first page, when the API is out of reach or refuses the caller's credentials.
        await client.request('GET', '/api/policies');
        const server = await startConsoleServer({
          port: opts.port,
          groups: client.info.groups,
          api: (method, path, body) => client.call(method, path, body),
          start: async (workflow, input) => {
            const name = randomUUID();
            await client.start(workflow, name, input);
            return { name };
          },
          describe: (workflow, name) => client.describe(workflow, name),
        });
        io.out(`Web console for ${client.info.where}: ${server.url}/ (Ctrl-C stops it)`);
        await new Promise<void>((ok) => {
          process.once('SIGINT', ok);
          process.once('SIGTERM', ok);
        });
        await server.close();
      } finally {
        client.close();
      }
    }),
  );
}
