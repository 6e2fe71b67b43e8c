/**
 * A Lifeboat mover process for the bench, run the way a mover runs: started once, then
 * taking jobs one after another (a mover is a long-running appliance process, not a
 * command started per backup). It loads its modules and its keys once, says so on stdout
 * with how long that took, then reads jobs, one JSON line each, from stdin, and answers
 * each with one JSON line of the job's figures:
 *
 *   node bench/lifeboat-child.ts <endpoint> <bucket> <keyFile>
 *   → {"ready":{"seconds":0.3,"peakRssKiB":61234}}
 *   ← {"phase":"full","path":"/…/disk.raw"}        (full | incr | restore; restore: the target)
 *   → {"phase":"full","seconds":8.7,"cpuSeconds":7.4,"peakRssKiB":171234,"rssAtStartKiB":80123,"stats":{…}}
 *
 * A job's CPU time counts every thread of this process and its children (qemu-img); its
 * peak RSS is the process's peak from the job's start (the kernel's high-water mark, reset
 * per job), so what an earlier job left resident counts too.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { objectKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { defaultPoolSize } from '../mover/pipeline/chunk-pool.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { FolderDriver } from '../mover/sources/folder.ts';

const [endpoint, bucket, keyFile] = process.argv.slice(2);
if (!endpoint || !bucket || !keyFile) throw new Error('usage: lifeboat-child.ts <endpoint> <bucket> <keyFile>; then jobs on stdin');

/** This process's peak RSS since the last reset (VmHWM), in KiB. */
const peakRssKiB = (): number => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
/** Starts a new peak: the high-water mark drops to the RSS now (Linux: clear_refs 5). */
const resetPeakRss = (): void => writeFileSync('/proc/self/clear_refs', '5');
/** CPU seconds of every thread of this process and of its waited-for children (utime, stime, cutime, cstime). */
const cpuSeconds = (): number => {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields.slice(11, 15).reduce((a, f) => a + Number(f), 0) / 100; // clock ticks (USER_HZ, 100 on Linux)
};

// As the mover builds its store (mover/main.ts): retries, at most 16 requests at once.
const client = s3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
const store = withConcurrencyLimit(withRetry(new S3ObjectStore(client, bucket)), 16);
const repository = new Repository(store, await readFile(keyFile));
const diskId = 'disk0';

async function job(phase: string, path: string): Promise<unknown> {
  if (phase === 'full' || phase === 'incr') {
    const disk = { diskId, path, sizeBytes: (await stat(path)).size };
    const reader = await new FolderDriver().openDisk(disk);
    try {
      const r = await backupDisk({
        repository,
        reader,
        disk,
        backupId: `bench-${phase}`,
        chunkSize: Number(process.env.BENCH_CHUNK_KIB ?? 512) * 1024,
        parallelism: 8,
        packBytes: Number(process.env.BENCH_PACK_MIB ?? 8) * 1024 * 1024,
        ...(phase === 'incr' ? { parentManifestKey: objectKeys.manifest('bench-full', diskId), parentBackupId: 'bench-full' } : {}),
      });
      return { ...r.stats, chunkWorkers: defaultPoolSize() };
    } finally {
      await reader.close();
    }
  }
  if (phase === 'restore') return restoreDisk({ repository, backupId: 'bench-incr', diskId, target: path });
  throw new Error(`unknown phase '${phase}' (full, incr or restore)`);
}

const say = (line: unknown) => process.stdout.write(JSON.stringify(line) + '\n');
say({ ready: { seconds: performance.now() / 1000, peakRssKiB: peakRssKiB() } });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { phase, path } = JSON.parse(line) as { phase: string; path: string };
  resetPeakRss();
  const rssAtStartKiB = peakRssKiB(); // what earlier jobs left resident
  const cpuBefore = cpuSeconds();
  const started = performance.now();
  const stats = await job(phase, path);
  say({ phase, seconds: (performance.now() - started) / 1000, cpuSeconds: cpuSeconds() - cpuBefore, peakRssKiB: peakRssKiB(), rssAtStartKiB, stats });
}
