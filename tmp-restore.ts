import { join } from 'node:path';
import { rm, stat } from 'node:fs/promises';
import { startLocalS3 } from './local/s3-server.ts';
import { startBenchMover } from './bench/mover-process.ts';
import { startDelayedLink } from './bench/delayed-link.ts';
import { loadavg } from 'node:os';
const dir = '.lifeboat/bench';
const bucket = process.argv[2] ?? 'lifeboat-bench-thick-1';
const n = Number(process.argv[3] ?? 3);
const rtt = Number(process.env.BENCH_RTT_MS ?? 0);
const s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: [bucket] });
const link = rtt ? await startDelayedLink(s3.url, rtt) : undefined;
const mover = await startBenchMover({ endpoint: link?.url ?? s3.url, bucket, keyFile: join(dir, 'master.key'), compileCacheDir: join(dir, 'compile-cache') });
for (let i = 0; i < n; i++) {
  const target = join(dir, 'tmp-restore.raw');
  await rm(target, { force: true });
  const before = process.cpuUsage();
  const req = s3.requests.get(bucket) ?? 0;
  const j = await mover.job('restore', target);
  const c = process.cpuUsage(before);
  console.log(`restore ${j.seconds.toFixed(2)} s, mover cpu ${j.cpuSeconds.toFixed(2)} s, server cpu ${((c.user + c.system) / 1e6).toFixed(2)} s, rss ${j.peakRssMiB.toFixed(0)} (start ${j.rssAtStartMiB.toFixed(0)}), requests ${(s3.requests.get(bucket) ?? 0) - req}, written ${((await stat(target)).blocks * 512 / 2 ** 20).toFixed(0)} MiB, load ${loadavg()[0]!.toFixed(1)}`);
  await rm(target, { force: true });
}
await mover.close(); await link?.close(); await s3.close();
