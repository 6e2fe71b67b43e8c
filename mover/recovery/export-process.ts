/**
 * An instant recovery's exports, served by a process of their own (export-process-main.ts)
 * that outlives the mover task which started it: the running VM's reads of its backup go
 * there, so a mover that dies, is restarted or upgrades itself mid-move leaves the guest and
 * its block copy running, and the resumed task re-attaches to the same process. The
 * recovery's folder owns it: `export.pid` names it (pid and start time, so a reused pid is
 * never taken for it), `export.ready.json` has the same and its URIs once it listens,
 * `export.log` its log, `export.result.json` what it served once it stopped. The completed
 * move (or a recovery given up before its VM ran) stops it; a domain removed by hand leaves
 * it without a client, and its idle timeout ends it.
 *
 * An export process that dies while the VM runs (killed, crashed) is started again on the same
 * socket by its watchdog (export-watchdog-main.ts, started with it, `export.watch.pid`): QEMU's
 * NBD client reconnects on the guest's next read of the backup. The overlays' disks are defined
 * with `rerror_policy`/`error_policy` `stop`, so a read that fails in between pauses the VM
 * instead of failing in the guest, and the watchdog resumes it once the export listens again.
 * (QEMU's `reconnect-delay`, which would hold such reads instead, is dropped by libvirt 9.0 from
 * the overlay's backing: it passes only the NBD options it knows.) When the export cannot be
 * started again, the watchdog writes why to `export.failed.json` and its log, and the VM stays
 * paused until the recovery is resumed.
 *
 * Starting one costs a Node process loading its modules (seconds on a loaded host). A mover
 * that may run instant recoveries keeps a spare one started ({@link prepareSpareExportProcess},
 * `LIFEBOAT_INSTANT_SPARE=1`): it has loaded its code and waits, on its IPC channel, for the
 * folder of a recovery; it exits when its mover goes without having given it one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportResult, type ExportJob, type ExportResult } from '../../contracts/export-job.ts';

export const EXPORT_FILES = {
  job: 'export.json',
  pid: 'export.pid',
  ready: 'export.ready.json',
  log: 'export.log',
  result: 'export.result.json',
  /** The watchdog's pid and start time. */
  watch: 'export.watch.pid',
  /** The VM the watchdog resumes after a restart ({@link ExportGuest}). */
  guest: 'export.guest.json',
  /** Present once the export is being stopped on purpose: the watchdog restarts nothing. */
  stop: 'export.stop',
  /** Why the watchdog could not start the export again. */
  failed: 'export.failed.json',
} as const;
const MAIN = fileURLToPath(new URL('./export-process-main.ts', import.meta.url));
const WATCHDOG = fileURLToPath(new URL('./export-watchdog-main.ts', import.meta.url));

/** The VM served by an export process: paused by reads that failed while its export was down, resumed after a restart. */
export interface ExportGuest {
  uri: string;
  domain: string;
}

export interface ExportProcess {
  pid: number;
  /** The process's start time (/proc/PID/stat, clock ticks since boot): with the pid, who it is. */
  started: number;
  /** Each disk's NBD URI. */
  uris: Record<string, string>;
}

/** The start time of `pid` while it runs (a zombie, exited but not yet reaped by whoever adopted it, does not). */
export async function processStarted(pid: number | 'self'): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return stat && fields[0] !== 'Z' ? Number(fields[19]) : undefined;
}

/** Whether the process named by `p` still runs (same pid, same start time, our program: the export process unless told). */
export async function running(p: { pid: number; started: number }, program = MAIN): Promise<boolean> {
  if (!(p.pid > 0) || (await processStarted(p.pid)) !== p.started) return false;
  return (await readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '')).includes(program);
}

/** The pid and start time in `dir`'s pid file `file` (zeros when there is none). */
export async function readPidFile(dir: string, file: string): Promise<{ pid: number; started: number }> {
  const [pid = 0, started = -1] = (await readFile(join(dir, file), 'utf8').catch(() => '')).split(' ').map(Number);
  return { pid, started };
}

/**
 * Starts the watchdog of `dir`'s export process unless one runs: it starts the export again
 * when it dies (see the top of this file). Returns its pid.
 */
export async function ensureExportWatchdog(dir: string): Promise<number> {
  const w = await readPidFile(dir, EXPORT_FILES.watch);
  if (await running(w, WATCHDOG)) return w.pid;
  const log = await open(join(dir, EXPORT_FILES.log), 'a');
  try {
    const child = spawn(process.execPath, [...process.execArgv, WATCHDOG, dir], { detached: true, stdio: ['ignore', log.fd, log.fd], env: process.env });
    child.on('error', () => {});
    child.unref();
    await writeFile(join(dir, EXPORT_FILES.watch), `${child.pid} ${(await processStarted(child.pid!)) ?? 0}`);
    return child.pid!;
  } finally {
    await log.close();
  }
}

async function logTail(dir: string): Promise<string> {
  return (await readFile(join(dir, EXPORT_FILES.log), 'utf8').catch(() => '')).trim().split('\n').slice(-5).join('\n');
}

let spare: ChildProcess | undefined;
let spareLogDir: string | undefined;

/**
 * Starts a spare export process (when none waits), logging its start to `logDir/export-spare.log`;
 * the next {@link startExportProcess} hands it its recovery instead of starting one, and a
 * new spare is started after.
 */
export function prepareSpareExportProcess(logDir: string): void {
  spareLogDir = logDir;
  if (spare?.connected) return;
  mkdirSync(logDir, { recursive: true });
  const log = openSync(join(logDir, 'export-spare.log'), 'a');
  try {
    const child = spawn(process.execPath, [...process.execArgv, MAIN, '--spare'], { detached: true, stdio: ['ignore', log, log, 'ipc'], env: process.env });
    child.on('error', () => {});
    child.once('exit', () => {
      if (spare === child) spare = undefined;
    });
    // It must not keep the mover alive, nor the mover it.
    child.unref();
    child.channel?.unref();
    spare = child;
  } finally {
    closeSync(log);
  }
}

/**
 * Starts the export process for `job` in `dir` (its own session: a signal to the mover's
 * process group does not reach it), or hands the job to the spare one, and resolves once it
 * listens. Rejects naming the folder and quoting its log when it fails to start or does not
 * listen within `timeoutMs`.
 */
export async function startExportProcess(
  dir: string,
  job: ExportJob,
  o: {
    timeoutMs?: number;
    /** The VM it serves, resumed by the watchdog after a restart. */
    guest?: ExportGuest;
    /** The watchdog's restart: no spare, no new watchdog. */
    restart?: boolean;
  } = {},
): Promise<ExportProcess> {
  if (!o.restart) {
    await rm(join(dir, EXPORT_FILES.stop), { force: true });
    await rm(join(dir, EXPORT_FILES.failed), { force: true });
    if (o.guest) await writeFile(join(dir, EXPORT_FILES.guest), JSON.stringify(o.guest));
  }
  await writeFile(join(dir, EXPORT_FILES.job), JSON.stringify(job));
  await rm(join(dir, EXPORT_FILES.ready), { force: true });
  await rm(join(dir, EXPORT_FILES.result), { force: true });
  const taken = !o.restart && spare?.connected ? spare : undefined;
  if (taken) spare = undefined;
  const log = await open(join(dir, EXPORT_FILES.log), 'a');
  try {
    const child =
      taken ?? spawn(process.execPath, [...process.execArgv, MAIN, dir], { detached: true, stdio: ['ignore', log.fd, log.fd, 'ipc'], env: process.env });
    if (taken) {
      taken.ref();
      taken.channel?.ref();
      taken.send({ dir });
      if (spareLogDir) prepareSpareExportProcess(spareLogDir);
    }
    const started = (await processStarted(child.pid!)) ?? 0;
    await writeFile(join(dir, EXPORT_FILES.pid), `${child.pid} ${started}`);
    const timeoutMs = o.timeoutMs ?? 60_000;
    const uris = await new Promise<Record<string, string>>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`did not listen within ${timeoutMs / 1000} s`)), timeoutMs);
      child.once('message', (m: { uris?: Record<string, string>; error?: string }) => {
        clearTimeout(timer);
        if (m.uris) ok(m.uris);
        else fail(new Error(m.error ?? 'it failed'));
      });
      child.once('exit', (code, signal) => fail(new Error(`it exited (${signal ?? `code ${code}`}) before it listened`)));
      child.once('error', fail);
    }).catch(async (err: Error) => {
      child.kill('SIGKILL');
      throw new Error(`the export process of ${dir} did not start: ${err.message}; its log ${join(dir, EXPORT_FILES.log)} ends: ${await logTail(dir)}`);
    });
    // From now on it runs on its own, watched.
    child.disconnect();
    child.unref();
    if (!o.restart) await ensureExportWatchdog(dir);
    return { pid: child.pid!, started, uris };
  } finally {
    await log.close();
  }
}

/** The export process of `dir` when it still runs and listens. */
export async function attachExportProcess(dir: string): Promise<ExportProcess | undefined> {
  const ready = await readFile(join(dir, EXPORT_FILES.ready), 'utf8').then(
    (t) => JSON.parse(t) as ExportProcess,
    () => undefined,
  );
  return ready && (await running(ready)) ? ready : undefined;
}

/**
 * Stops the export process of `dir` (SIGTERM, then SIGKILL after `graceMs`) and answers what
 * it served, when it could say (a killed one cannot).
 */
export async function stopExportProcess(dir: string, o: { graceMs?: number } = {}): Promise<ExportResult | undefined> {
  // Its watchdog first, or it would start the export again.
  await writeFile(join(dir, EXPORT_FILES.stop), '').catch(() => {});
  const w = await readPidFile(dir, EXPORT_FILES.watch);
  if (await running(w, WATCHDOG)) process.kill(w.pid, 'SIGTERM');
  const p = await readPidFile(dir, EXPORT_FILES.pid);
  const { pid } = p;
  if (await running(p)) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + (o.graceMs ?? 10_000);
    while ((await running(p)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (await running(p)) process.kill(pid, 'SIGKILL');
    while (await running(p)) await new Promise((r) => setTimeout(r, 50));
  }
  const text = await readFile(join(dir, EXPORT_FILES.result), 'utf8').catch(() => undefined);
  return text ? exportResult.parse(JSON.parse(text)) : undefined;
}
