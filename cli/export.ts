/**
 * `lifeboat export`: serve a backup's disks over NBD, read-only, from a mover of the VM's
 * site, through the Export workflow: it starts the execution, prints where to connect as
 * soon as the mover listens (its endpoint record), and waits; Ctrl-C or
 * `lifeboat export stop ID` stops the execution, which closes the export. It also ends
 * by itself after the idle timeout.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ExportListen, ExportResult } from '../contracts/export-job.ts';
import { readEndpoint, waitForEndpoint } from './export-endpoint.ts';
import { guarded, lambdaMessage, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

/** `--listen`: a unix socket path (absolute, or `unix:PATH`), or `[HOST]:PORT` (127.0.0.1 when HOST is left out). */
export function listenAddress(v: string): ExportListen {
  if (v.startsWith('unix:')) return { socket: resolve(v.slice(5)) };
  if (v.startsWith('/') || v.startsWith('.')) return { socket: resolve(v) };
  const m = /^(?:\[?([^\]]*)\]?)?:(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535)
    throw new InvalidArgumentError(
      `'${v}' is not an address to listen on: give a unix socket path (/run/x.sock or unix:PATH) or [HOST]:PORT (e.g. :10809, 127.0.0.1:10809)`,
    );
  return { ...(m[1] ? { host: m[1] } : {}), port: Number(m[2]) };
}

export function registerExportCommand(program: Command, defaultDataDir: string, io: Out): void {
  const cmd = program
    .command('export')
    .description(
      "serve a backup's disks read-only over NBD (one export per disk, named by disk id) from a mover of the VM's site (the Export workflow), until idle, Ctrl-C or `lifeboat export stop ID`",
    )
    .option('--vm <id>', 'the VM')
    .option(
      '--listen <addr>',
      'on the mover: a unix socket path, or [HOST]:PORT (HOST defaults to 127.0.0.1; default: an ephemeral port on 127.0.0.1)',
      listenAddress,
    )
    .option('--backup <id>', 'the backup (default: the newest committed)')
    .option('--group <id>', "the mover group that serves it (default: the group of the VM's host)")
    .option(
      '--idle-timeout <seconds>',
      'close after this long with no client',
      (v) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > 7 * 24 * 3600)
          throw new InvalidArgumentError(`'${v}' is not an idle timeout: give whole seconds from 1 to ${7 * 24 * 3600}`);
        return n;
      },
      600,
    );
  stackOptions(cmd, defaultDataDir).action(
    guarded(async (opts: StackOptions & { vm?: string; listen?: ExportListen; backup?: string; group?: string; idleTimeout: number }) => {
      if (!opts.vm) throw new Error('lifeboat export needs --vm ID (or: lifeboat export stop ID)');
      const client = await StackClient.connect(opts);
      const exportId = `export-${opts.vm.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40)}-${Date.now()}`;
      const input = {
        vmId: opts.vm,
        ...(opts.backup ? { backupId: opts.backup } : {}),
        ...(opts.group ? { moverGroup: opts.group } : {}),
        ...(opts.listen ? { listen: opts.listen } : {}),
        idleTimeoutSeconds: opts.idleTimeout,
      };
      const arn = await client.start('Export', exportId, input);
      const store = client.store;
      let stopping = false;
      const stop = () => {
        if (stopping) return;
        stopping = true;
        io.out(`stopping export ${exportId}…`);
        void client.stop(arn, 'stopped by lifeboat export (Ctrl-C)');
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        const at = await waitForEndpoint({
          sfn: client.sfn,
          executionArn: arn,
          store,
          exportId,
          ready: (r) => r.state === 'listening',
          what: `export of VM '${opts.vm}'`,
        }).catch((err: Error) => {
          throw new Error(lambdaMessage(err.message));
        });
        io.out(
          `export ${exportId}: backup ${at.backupId} of VM '${opts.vm}' served read-only by mover ${at.mover}; closes after ${opts.idleTimeout} s without a client, on Ctrl-C, or with \`lifeboat export stop ${exportId}\``,
        );
        for (const [disk, uri] of Object.entries(at.uris)) io.out(`  ${disk}: ${uri}`);
        const d = await client.waitFor(arn);
        if (d.status === 'SUCCEEDED') {
          const r = JSON.parse(d.output ?? '{}') as ExportResult;
          io.out(
            `export closed (${r.closed}): served ${(r.bytesServed / 2 ** 20).toFixed(1)} MiB to ${r.connections} connection(s), downloaded ${(r.bytesDownloaded / 2 ** 20).toFixed(1)} MiB${r.damagedChunks ? `, ${r.damagedChunks} damaged chunk(s)` : ''}`,
          );
          return;
        }
        if (d.status !== 'ABORTED') throw new Error(`export ${exportId} ${d.status}: ${d.error ?? ''}: ${lambdaMessage(d.cause ?? '')}`);
        // Stopped: the mover closes it at its next heartbeat; say so once its record does.
        for (let i = 0; i < 60; i++) {
          if ((await readEndpoint(store, exportId))?.state === 'closed') return io.out(`export ${exportId} stopped and closed`);
          await sleep(250);
        }
        io.out(`export ${exportId} stopped; the mover closes it at its next heartbeat`);
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        client.close();
      }
    }),
  );
  stackOptions(cmd.command('stop <exportId>').description('stop a running export (its execution); the mover closes it'), defaultDataDir).action(
    guarded(async (exportId: string, opts: StackOptions) => {
      const client = await StackClient.connect(opts);
      await client
        .stop(client.executionArn('Export', exportId), 'stopped by lifeboat export stop')
        .catch((err: Error) => {
          throw new Error(`no running export '${exportId}' (${err.message}): \`lifeboat export\` printed its id when it started`);
        })
        .finally(() => client.close());
      io.out(`export ${exportId} stopped; the mover closes it at its next heartbeat`);
    }),
  );
}
