/**
 * The bench's mover process (bench/mover-process.ts, bench/lifeboat-child.ts): one process
 * takes a full backup, an incremental and a restore as jobs against the local S3 endpoint,
 * and reports each job's own figures; a failing job ends it with the error on record.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startBenchMover } from '../bench/mover-process.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';

const MiB = 1024 * 1024;
let dir: string;
let s3: LocalS3;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-bench-mover-'));
  s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: ['bench'] });
  await writeFile(join(dir, 'master.key'), randomBytes(32));
});
afterAll(async () => {
  await s3.close();
  await rm(dir, { recursive: true, force: true });
});

const sha256 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

it('runs full, incremental and restore as jobs of one process, each with its own figures', async () => {
  const base = join(dir, 'base.raw');
  const changed = join(dir, 'changed.raw');
  const restored = join(dir, 'restored.raw');
  const image = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), Buffer.from('text '.repeat(MiB / 5))]);
  await writeFile(base, image);
  image.fill(7, 0, 4096); // one chunk of the incremental differs
  await writeFile(changed, image);

  const mover = await startBenchMover({ endpoint: s3.url, bucket: 'bench', keyFile: join(dir, 'master.key'), compileCacheDir: join(dir, 'compile-cache') });
  try {
    expect(mover.start.seconds).toBeGreaterThan(0);
    expect(mover.start.peakRssMiB).toBeGreaterThan(10);
    const full = await mover.job('full', base);
    const incr = await mover.job('incr', changed);
    const restore = await mover.job('restore', restored);
    for (const j of [full, incr, restore]) {
      expect(j.seconds).toBeGreaterThan(0);
      expect(j.cpuSeconds).toBeGreaterThanOrEqual(0);
      expect(j.peakRssMiB).toBeGreaterThan(10);
      expect(j.rssAtStartMiB).toBeGreaterThan(10);
      expect(j.rssAtStartMiB).toBeLessThanOrEqual(j.peakRssMiB);
    }
    const fullStats = JSON.parse(full.result) as { uploadedChunks: number; zeroChunks: number };
    const incrStats = JSON.parse(incr.result) as { uploadedChunks: number; parentChunks: number };
    expect(fullStats.uploadedChunks).toBeGreaterThan(0);
    expect(fullStats.zeroChunks).toBe(4); // 2 MiB of zeros in 512 KiB chunks
    expect(incrStats.uploadedChunks).toBe(1);
    expect(incrStats.parentChunks).toBeGreaterThan(0);
    expect(JSON.parse(restore.result)).toMatchObject({ sizeBytes: image.length });
    expect(await sha256(restored)).toBe(await sha256(changed));
  } finally {
    await mover.close();
  }
});

it("ends with the failing job named and the mover's error on record", async () => {
  const mover = await startBenchMover({ endpoint: s3.url, bucket: 'bench', keyFile: join(dir, 'master.key'), compileCacheDir: join(dir, 'compile-cache') });
  await expect(mover.job('full', join(dir, 'no-such-image.raw'))).rejects.toThrow(/before finishing its full job[\s\S]*ENOENT/);
  await expect(mover.close()).rejects.toThrow(/exited with code 1/);
});
