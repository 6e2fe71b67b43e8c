/**
 * One full restore of a disk into a file, in a process of its own as a mover runs it, for
 * bench/export.ts: the restore that an export's sequential read is compared with. ROOT is
 * the checkout whose restore runs (this one, or another worktree: the peer moves while
 * others make restores faster); the repository is reached with the mover's settings
 * (LIFEBOAT_S3_ENDPOINT, LIFEBOAT_KEY_FILE), as the export process reaches it.
 * Prints one JSON line: `{ seconds, cpuSeconds, peakRssMiB, runQueueSeconds, mainRunQueueSeconds }`.
 * Usage: node bench/restore-child.ts ROOT BUCKET BACKUP DISK TARGET
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [root, bucket, backupId, diskId, target] = process.argv.slice(2);
if (!root || !bucket || !backupId || !diskId || !target) throw new Error('usage: restore-child.ts ROOT BUCKET BACKUP DISK TARGET');

const print = (event: string, f?: Record<string, unknown>) => process.stderr.write(`${event} ${JSON.stringify(f)}\n`);
// LIFEBOAT_S3_TRACE=1: every GET's timing on standard error (mover/repository-access.ts).
const logger = { info: process.env.LIFEBOAT_S3_TRACE === '1' ? print : () => {}, error: print };
const fromRoot = async <T>(path: string) => (await import(pathToFileURL(join(root, path)).href)) as T;
// Both from ROOT: opening the repository is part of the restore being compared.
const { repositoryAccess } = await fromRoot<typeof import('../mover/repository-access.ts')>('mover/repository-access.ts');
const { restoreDisk } = await fromRoot<typeof import('../mover/pipeline/restore-disk.ts')>('mover/pipeline/restore-disk.ts');
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const cpu0 = cpu();
const t0 = performance.now();
const repository = await repositoryAccess(process.env, { logger }).repository({ bucket });
// LIFEBOAT_RESTORE_IN_FLIGHT_MIB as a mover takes it (mover/main.ts); unset: ROOT's default.
const inFlightMiB = Number(process.env.LIFEBOAT_RESTORE_IN_FLIGHT_MIB ?? 0);
await restoreDisk({ repository, backupId, diskId, target, ...(inFlightMiB > 0 ? { inFlightBytes: inFlightMiB * 1024 * 1024 } : {}) });
const seconds = (performance.now() - t0) / 1000;
/** Seconds this process's threads were ready to run but waited for a core (/proc's schedstat): a busy machine's share of the wall. */
const waited = (task: string) => Number(readFileSync(`/proc/self/task/${task}/schedstat`, 'utf8').split(' ')[1]) / 1e9;
const runQueueSeconds = readdirSync('/proc/self/task').reduce((n, t) => n + waited(t), 0);
const mainRunQueueSeconds = waited(String(process.pid));
const peakKiB = Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
process.stdout.write(`${JSON.stringify({ seconds, cpuSeconds: cpu() - cpu0, peakRssMiB: peakKiB / 1024, runQueueSeconds, mainRunQueueSeconds })}\n`);
process.exit(0);
