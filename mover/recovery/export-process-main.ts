/**
 * The export process of an instant recovery (mover/recovery/export-process.ts): serves a
 * backup's disks over NBD from `<dir>/export.json` (an export job) until SIGTERM or until no
 * client has been connected for the job's idle timeout, apart from the mover that started it,
 * so that a mover that dies or restarts does not take the running VM's disks with it.
 * Reads the repository with the mover's own settings (the environment it inherited).
 * Usage: node export-process-main.ts DIR  (started by the mover, with an IPC channel that
 * gets `{ uris }` once it listens; its logs are JSON lines on stdout, the folder's export.log)
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJob } from '../../contracts/export-job.ts';
import { repositoryAccess } from '../repository-access.ts';
import type { Logger } from '../worker.ts';
import { runExportTask } from './export-task.ts';
import { EXPORT_FILES } from './export-process.ts';

const dir = process.argv[2];
const line = (level: string) => (event: string, fields?: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ t: new Date().toISOString(), pid: process.pid, level, event, ...fields })}\n`);
const logger: Logger = { info: line('info'), error: line('error') };

async function main(): Promise<void> {
  if (!dir) throw new Error('usage: export-process-main.ts DIR');
  const job = exportJob.parse(JSON.parse(await readFile(join(dir, EXPORT_FILES.job), 'utf8')));
  const { store, keys } = await repositoryAccess(process.env, { logger }).repository(job.repository);
  const stop = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => stop.abort(sig));
  // The mover that started it may be gone: its channel closing is not a reason to stop.
  process.on('disconnect', () => {});
  const result = await runExportTask(job, {
    store, keys, logger, signal: stop.signal, record: false,
    onListening: (uris) => {
      void (async () => {
        const tmp = join(dir, `${EXPORT_FILES.ready}.tmp`);
        await writeFile(tmp, JSON.stringify({ pid: process.pid, uris }));
        await rename(tmp, join(dir, EXPORT_FILES.ready));
        process.send?.({ uris });
      })();
    },
  });
  await writeFile(join(dir, EXPORT_FILES.result), JSON.stringify(result));
  logger.info('export.process.exit', { closed: result.closed, bytesServed: result.bytesServed });
}

main().then(() => process.exit(0), (err: Error) => {
  logger.error('export.process.failed', { error: err.message });
  process.send?.({ error: err.message });
  process.exit(1);
});
