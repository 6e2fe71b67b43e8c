/**
 * One full restore of a disk into a file, in a process of its own as a mover runs it, for
 * bench/export.ts: the restore that an export's sequential read is compared with. ROOT is
 * the checkout whose restore runs (this one, or another worktree: the peer moves while
 * others make restores faster); the repository is reached with the mover's settings
 * (LIFEBOAT_S3_ENDPOINT, LIFEBOAT_KEY_FILE), as the export process reaches it.
 * Prints one JSON line: `{ seconds, cpuSeconds, peakRssMiB }`.
 * Usage: node bench/restore-child.ts ROOT BUCKET BACKUP DISK TARGET
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repositoryAccess } from '../mover/repository-access.ts';

const [root, bucket, backupId, diskId, target] = process.argv.slice(2);
if (!root || !bucket || !backupId || !diskId || !target) throw new Error('usage: restore-child.ts ROOT BUCKET BACKUP DISK TARGET');

const quiet = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => process.stderr.write(`${event} ${JSON.stringify(f)}\n`) };
const repository = await repositoryAccess(process.env, { logger: quiet }).repository({ bucket });
const { restoreDisk } = (await import(pathToFileURL(join(root, 'mover/pipeline/restore-disk.ts')).href)) as typeof import('../mover/pipeline/restore-disk.ts');
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const cpu0 = cpu();
const t0 = performance.now();
await restoreDisk({ repository, backupId, diskId, target });
const seconds = (performance.now() - t0) / 1000;
const peakKiB = Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
process.stdout.write(`${JSON.stringify({ seconds, cpuSeconds: cpu() - cpu0, peakRssMiB: peakKiB / 1024 })}\n`);
process.exit(0);
