/**
 * The export process of an instant recovery (mover/recovery/export-process.ts): serves a
 * backup's disks over NBD from `<dir>/export.json` (an export job) until SIGTERM or until no
 * client has been connected for the job's idle timeout, apart from the mover that started it,
 * so that a mover that dies or restarts does not take the running VM's disks with it.
 * Reads the repository with the mover's own settings (the environment it inherited).
 * Usage: node export-process-main.ts DIR, or --spare: loaded and waiting for `{ dir }` on its
 * IPC channel (it exits if the channel closes first). It answers `{ uris }` there once it
 * listens; its logs are JSON lines in DIR/export.log.
 */
import { createWriteStream } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJob } from '../../contracts/export-job.ts';
import { repositoryAccess } from '../repository-access.ts';
import type { Logger } from '../worker.ts';
import { runExportTask, warmChunkPool } from './export-task.ts';
import { EXPORT_FILES, processStarted } from './export-process.ts';

/** The recovery's folder: from the command line, or (a spare) from the mover once it has one. */
function folder(): Promise<string> {
  const arg = process.argv[2];
  if (!arg) throw new Error('usage: export-process-main.ts DIR | --spare');
  if (arg !== '--spare') return Promise.resolve(arg);
  return new Promise((ok) => {
    const gone = () => process.exit(0); // its mover went without giving it a recovery
    process.once('disconnect', gone);
    process.once('message', (m: { dir: string }) => {
      process.off('disconnect', gone);
      ok(m.dir);
    });
  });
}

// A spare loads the chunk pool's worker while it waits for a recovery, too.
const warming = warmChunkPool().catch(() => {});
const dir = await folder();
await warming;
const out = createWriteStream(join(dir, EXPORT_FILES.log), { flags: 'a' });
const line = (level: string) => (event: string, fields?: Record<string, unknown>) =>
  out.write(`${JSON.stringify({ t: new Date().toISOString(), pid: process.pid, level, event, ...fields })}\n`);
const logger: Logger = { info: line('info'), error: line('error') };

async function main(): Promise<void> {
  const job = exportJob.parse(JSON.parse(await readFile(join(dir, EXPORT_FILES.job), 'utf8')));
  const repository = await repositoryAccess(process.env, { logger }).repository(job.repository);
  const stop = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => stop.abort(sig));
  // The mover that started it may be gone: its channel closing is not a reason to stop.
  process.on('disconnect', () => {});
  const started = await processStarted('self');
  const result = await runExportTask(job, {
    repository,
    logger,
    signal: stop.signal,
    record: false,
    onListening: (uris) => {
      void (async () => {
        const tmp = join(dir, `${EXPORT_FILES.ready}.tmp`);
        await writeFile(tmp, JSON.stringify({ pid: process.pid, started, uris }));
        await rename(tmp, join(dir, EXPORT_FILES.ready));
        process.send?.({ uris });
      })();
    },
  });
  await writeFile(join(dir, EXPORT_FILES.result), JSON.stringify(result));
  logger.info('export.process.exit', { closed: result.closed, bytesServed: result.bytesServed });
}

main().then(
  () => out.end(() => process.exit(0)),
  (err: Error) => {
    logger.error('export.process.failed', { error: err.message });
    process.send?.({ error: err.message });
    out.end(() => process.exit(1));
  },
);
