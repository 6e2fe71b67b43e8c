/**
 * The watchdog of an instant recovery's export process (export-process.ts): while the export
 * process named by `<dir>/export.pid` runs, it waits; when it dies without having stopped (no
 * `export.result.json`, no `export.stop`), it starts it again on the same socket, with the
 * same job (`export.json`). While the export runs it resumes the VM (`export.guest.json`)
 * whenever reads that failed paused it: QEMU's NBD client reconnects in the background after
 * its connection was lost, so the first reads after a restart may still fail and pause the VM
 * again; one paused over and over (a damaged chunk, an overlay whose file system is full) is
 * left paused after 10 tries, and logged. Given up after a few attempts: `export.failed.json` and its log say
 * why and what to do, and it exits. It exits too when the export stops on purpose or its
 * folder goes. Usage: node export-watchdog-main.ts DIR (started by `ensureExportWatchdog`).
 */
import { existsSync } from 'node:fs';
import { appendFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { exportJob } from '../../contracts/export-job.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import { reconnectBackings } from './block-copy.ts';
import { EXPORT_FILES, readPidFile, running, startExportProcess, type ExportGuest } from './export-process.ts';

const ATTEMPTS = 5;
const POLL_MS = 200;
/** How often the VM's state is looked at while its export serves. */
const GUEST_LOOK_MS = 1000;

const dir = process.argv[2];
if (!dir) throw new Error('usage: export-watchdog-main.ts DIR');
const log = (level: 'info' | 'error', event: string, fields: Record<string, unknown> = {}) =>
  appendFile(join(dir, EXPORT_FILES.log), `${JSON.stringify({ t: new Date().toISOString(), pid: process.pid, level, event, ...fields })}\n`).catch(() => {});
const stopping = () => !existsSync(dir) || existsSync(join(dir, EXPORT_FILES.stop));
process.once('SIGTERM', () => process.exit(0));

async function guest(): Promise<ExportGuest | undefined> {
  return readFile(join(dir!, EXPORT_FILES.guest), 'utf8').then(
    (t) => JSON.parse(t) as ExportGuest,
    () => undefined,
  );
}

const MAX_RESUMES = 10;
/** Resumes in a row (the VM paused again within 10 s of the last): reset once it has run 10 s. */
let resumes = 0;
let pausedAt = 0;

/** Resumes the VM if reads of its backup paused it (QEMU retries them on resume). */
async function tendGuest(g: ExportGuest): Promise<void> {
  const virsh = new Virsh(g.uri);
  const state = (await virsh.run(['domstate', '--reason', '--', g.domain], { timeoutMs: 30_000 }).catch(() => '')).trim();
  if (!/^paused \(I\/O error\)/.test(state)) {
    if (Date.now() - pausedAt > 10_000) resumes = 0;
    return;
  }
  pausedAt = Date.now();
  if (resumes >= MAX_RESUMES) {
    if (resumes++ === MAX_RESUMES)
      await log('error', 'export.guest.stays-paused', {
        domain: g.domain,
        error: `the VM '${g.domain}' was paused by I/O errors ${MAX_RESUMES} times in a row while its export served: see this log for damaged chunks, and the room left for its overlays in ${dir}; 'virsh resume ${g.domain}' once fixed`,
      });
    return;
  }
  resumes++;
  await virsh.run(['resume', '--', g.domain]).then(
    () => log('info', 'export.guest.resumed', { domain: g.domain }),
    (err: Error) => log('error', 'export.guest.resume.failed', { domain: g.domain, error: err.message }),
  );
}

/** Starts the export again; the last error when every attempt failed. */
async function restart(): Promise<Error | undefined> {
  let last: Error | undefined;
  for (let attempt = 1; attempt <= ATTEMPTS && !stopping(); attempt++) {
    try {
      const job = exportJob.parse(JSON.parse(await readFile(join(dir!, EXPORT_FILES.job), 'utf8')));
      // The dead process's socket: nobody listens on it any more.
      if (job.listen && 'socket' in job.listen && job.listen.socket) await rm(job.listen.socket, { force: true });
      const p = await startExportProcess(dir!, job, { restart: true, timeoutMs: 120_000 });
      await log('info', 'export.restarted', { exportPid: p.pid, attempt });
      return undefined;
    } catch (err) {
      last = err as Error;
      await log('error', 'export.restart.attempt.failed', { attempt, error: last.message });
      await sleep(1000 * attempt);
    }
  }
  return last;
}

for (;;) {
  const p = await readPidFile(dir, EXPORT_FILES.pid);
  const served = await guest();
  let lastLook = 0;
  while (await running(p)) {
    if (stopping()) process.exit(0);
    if (served && Date.now() - lastLook >= GUEST_LOOK_MS) {
      await tendGuest(served);
      lastLook = Date.now();
    }
    await sleep(POLL_MS);
  }
  // Stopped on purpose, or ended by itself (idle, SIGTERM: it wrote what it served).
  if (stopping() || existsSync(join(dir, EXPORT_FILES.result))) process.exit(0);
  await log('error', 'export.process.died', { exportPid: p.pid });
  const failed = await restart();
  const g = await guest();
  if (failed) {
    if (stopping()) process.exit(0);
    const error =
      `the export process of ${dir} died and could not be started again (${ATTEMPTS} attempts): ${failed.message}. ` +
      `${g ? `The VM '${g.domain}' pauses when it reads what it has not written (its writes are kept in its overlays). ` : ''}` +
      'Fix the cause (see export.log there), then resume the instant recovery (the same request with "instant": {"resume": true}, lifeboat restore ... --instant --resume): it starts the export again and resumes the VM';
    await writeFile(join(dir, EXPORT_FILES.failed), JSON.stringify({ error, at: new Date().toISOString() }));
    await log('error', 'export.restart.failed', { error });
    process.exit(1);
  }
  if (g) {
    await reconnectBackings(new Virsh(g.uri), g.domain).catch((err: Error) =>
      log('error', 'export.reconnect.failed', { domain: g.domain, error: err.message }),
    );
    await tendGuest(g);
  }
}
