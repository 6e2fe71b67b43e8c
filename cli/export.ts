/**
 * `lifeboat export`: serve a backup's disks over NBD from this machine, straight from the
 * running embedded stack's repository, by running the mover's export task in this process
 * (no workflow starts exports yet). Ends after the idle timeout or on Ctrl-C.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { resolve } from 'node:path';
import { exportJob, type ExportListen } from '../contracts/export-job.ts';
import { openRepository } from '../local/stack.ts';
import { runExportTask } from '../mover/recovery/export-task.ts';
import { endpoints, guarded, stackCatalog, type Out } from './stack-client.ts';

/** `--listen`: a unix socket path (absolute, or `unix:PATH`), or `[HOST]:PORT` (127.0.0.1 when HOST is left out). */
export function listenAddress(v: string): ExportListen {
  if (v.startsWith('unix:')) return { socket: resolve(v.slice(5)) };
  if (v.startsWith('/') || v.startsWith('.')) return { socket: resolve(v) };
  const m = /^(?:\[?([^\]]*)\]?)?:(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new InvalidArgumentError(`'${v}' is not an address to listen on: give a unix socket path (/run/x.sock or unix:PATH) or [HOST]:PORT (e.g. :10809, 127.0.0.1:10809)`);
  return { ...(m[1] ? { host: m[1] } : {}), port: Number(m[2]) };
}

export function registerExportCommand(program: Command, defaultDataDir: string, io: Out): void {
  program
    .command('export')
    .description('serve a backup\'s disks read-only over NBD (one export per disk, named by disk id) from the running stack\'s repository, until idle or Ctrl-C')
    .requiredOption('--vm <id>', 'the VM')
    .requiredOption('--listen <addr>', 'a unix socket path, or [HOST]:PORT (HOST defaults to 127.0.0.1)', listenAddress)
    .option('--backup <id>', 'the backup (default: the newest committed)')
    .option('--idle-timeout <seconds>', 'close after this long with no client', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > 7 * 24 * 3600) throw new InvalidArgumentError(`'${v}' is not an idle timeout: give whole seconds from 1 to ${7 * 24 * 3600}`);
      return n;
    }, 600)
    .option('--data-dir <dir>', 'state folder of the running embedded stack', defaultDataDir)
    .option('--endpoints <file>', 'endpoints file of the running stack (default: <data-dir>/endpoints.json)')
    .action(guarded(async (opts: { vm: string; listen: ExportListen; backup?: string; idleTimeout: number; dataDir: string; endpoints?: string }) => {
      const e = await endpoints(opts);
      const catalog = stackCatalog(e);
      const backups = await catalog.listBackups(opts.vm);
      const backup = opts.backup ? backups.find((b) => b.backupId === opts.backup) : await catalog.latestCommitted(opts.vm);
      if (!backup) throw new Error(opts.backup ? `VM '${opts.vm}' has no backup '${opts.backup}' (it has ${backups.map((b) => b.backupId).join(', ') || 'none'})` : `VM '${opts.vm}' has no committed backup`);
      if (backup.status !== 'committed') throw new Error(`backup ${backup.backupId} of VM '${opts.vm}' is ${backup.status}, not committed: only committed backups are served`);
      const job = exportJob.parse({
        exportId: `cli-${process.pid}`, vmId: opts.vm, backupId: backup.backupId, repository: { bucket: e.bucket },
        diskIds: (backup.disks ?? []).map((d) => d.diskId), listen: opts.listen, idleTimeoutSeconds: opts.idleTimeout,
      });
      const { store, keys } = await openRepository(e);
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      process.once('SIGTERM', () => abort.abort());
      const logger = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => io.out(`${event} ${JSON.stringify(f)}`) };
      const r = await runExportTask(job, {
        store, keys, logger, signal: abort.signal,
        onListening: (uris) => {
          io.out(`serving backup ${backup.backupId} of VM '${opts.vm}' read-only; closes after ${opts.idleTimeout} s without a client, or on Ctrl-C`);
          for (const [disk, uri] of Object.entries(uris)) io.out(`  ${disk}: ${uri}`);
        },
      });
      io.out(`export closed (${r.closed}): served ${(r.bytesServed / 2 ** 20).toFixed(1)} MiB to ${r.connections} connection(s), downloaded ${(r.bytesDownloaded / 2 ** 20).toFixed(1)} MiB${r.damagedChunks ? `, ${r.damagedChunks} damaged chunk(s)` : ''}`);
    }));
}
