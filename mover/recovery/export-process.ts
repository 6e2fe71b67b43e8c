/**
 * An instant recovery's exports, served by a process of their own (export-process-main.ts)
 * that outlives the mover task which started it: the running VM's reads of its backup go
 * there, so a mover that dies, is restarted or upgrades itself mid-move leaves the guest and
 * its block copy running, and the resumed task re-attaches to the same process. The
 * recovery's folder owns it: `export.pid` names it, `export.ready.json` has its URIs once it
 * listens, `export.log` its log, `export.result.json` what it served once it stopped. The
 * completed move (or a recovery given up before its VM ran) stops it; a domain removed by
 * hand leaves it without a client, and its idle timeout ends it.
 */
import { spawn } from 'node:child_process';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportResult, type ExportJob, type ExportResult } from '../../contracts/export-job.ts';

export const EXPORT_FILES = { job: 'export.json', pid: 'export.pid', ready: 'export.ready.json', log: 'export.log', result: 'export.result.json' } as const;
const MAIN = fileURLToPath(new URL('./export-process-main.ts', import.meta.url));

export interface ExportProcess {
  pid: number;
  /** Each disk's NBD URI. */
  uris: Record<string, string>;
}

/** Whether `pid` runs (a zombie, exited but not yet reaped by whoever adopted it, does not). */
const alive = async (pid: number) => {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
};

async function logTail(dir: string): Promise<string> {
  return (await readFile(join(dir, EXPORT_FILES.log), 'utf8').catch(() => '')).trim().split('\n').slice(-5).join('\n');
}

/**
 * Starts the export process for `job` in `dir` (its own session: a signal to the mover's
 * process group does not reach it) and resolves once it listens. Rejects naming the folder
 * and quoting its log when it fails to start or does not listen within `timeoutMs`.
 */
export async function startExportProcess(dir: string, job: ExportJob, o: { timeoutMs?: number } = {}): Promise<ExportProcess> {
  await writeFile(join(dir, EXPORT_FILES.job), JSON.stringify(job));
  await rm(join(dir, EXPORT_FILES.ready), { force: true });
  await rm(join(dir, EXPORT_FILES.result), { force: true });
  const log = await open(join(dir, EXPORT_FILES.log), 'a');
  try {
    const child = spawn(process.execPath, [...process.execArgv, MAIN, dir], { detached: true, stdio: ['ignore', log.fd, log.fd, 'ipc'], env: process.env });
    await writeFile(join(dir, EXPORT_FILES.pid), String(child.pid));
    const timeoutMs = o.timeoutMs ?? 60_000;
    const uris = await new Promise<Record<string, string>>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`did not listen within ${timeoutMs / 1000} s`)), timeoutMs);
      child.once('message', (m: { uris?: Record<string, string>; error?: string }) => (m.uris ? ok(m.uris) : fail(new Error(m.error ?? 'it failed'))));
      child.once('exit', (code, signal) => fail(new Error(`it exited (${signal ?? `code ${code}`}) before it listened`)));
      child.once('error', fail);
      child.once('message', () => clearTimeout(timer));
    }).catch(async (err: Error) => {
      child.kill('SIGKILL');
      throw new Error(`the export process of ${dir} did not start: ${err.message}; its log ${join(dir, EXPORT_FILES.log)} ends: ${await logTail(dir)}`);
    });
    // From now on it runs on its own.
    child.disconnect();
    child.unref();
    return { pid: child.pid!, uris };
  } finally {
    await log.close();
  }
}

/** The export process of `dir` when it still runs and listens (its pid alive, and that pid is this folder's export process). */
export async function attachExportProcess(dir: string): Promise<ExportProcess | undefined> {
  const ready = await readFile(join(dir, EXPORT_FILES.ready), 'utf8').then((t) => JSON.parse(t) as ExportProcess, () => undefined);
  if (!ready || !(await alive(ready.pid))) return undefined;
  // A pid is reused once its process is gone: it must still be our program, for this folder.
  const cmdline = await readFile(`/proc/${ready.pid}/cmdline`, 'utf8').catch(() => '');
  if (!cmdline.includes(MAIN) || !cmdline.split('\0').includes(dir)) return undefined;
  return ready;
}

/**
 * Stops the export process of `dir` (SIGTERM, then SIGKILL after `graceMs`) and answers what
 * it served, when it could say (a killed one cannot).
 */
export async function stopExportProcess(dir: string, o: { graceMs?: number } = {}): Promise<ExportResult | undefined> {
  const pid = Number(await readFile(join(dir, EXPORT_FILES.pid), 'utf8').catch(() => ''));
  const ours = pid > 0 && (await alive(pid)) && (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').includes(dir);
  if (ours) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + (o.graceMs ?? 10_000);
    while ((await alive(pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (await alive(pid)) process.kill(pid, 'SIGKILL');
    while (await alive(pid)) await new Promise((r) => setTimeout(r, 50));
  }
  const text = await readFile(join(dir, EXPORT_FILES.result), 'utf8').catch(() => undefined);
  return text ? exportResult.parse(JSON.parse(text)) : undefined;
}
