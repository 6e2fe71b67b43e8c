/**
 * Memory stays bounded whatever the disk size: a mover process backs up a 16 GiB sparse
 * disk (with 64 MiB of data spread over it) through the real pipeline into s3rver and
 * reports its peak RSS; twice: reading every byte (as without qemu-img), and skipping the
 * holes qemu-img maps. Usage: npm run bench:sparse  (BENCH_SPARSE_GIB to change the size)
 */
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdir, open, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openRepository } from '../repository/open.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { FolderDriver } from '../mover/sources/folder.ts';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

if (process.argv[2] === 'child') {
  // The mover side, in its own process so its RSS is its own. It loads what a mover
  // loads (mover/main.ts), not the embedded stack's servers (those are ~90 MiB of RSS).
  const [, , , endpointsJson, path, sizeText, mode] = process.argv;
  const e = JSON.parse(endpointsJson!);
  const store = new S3ObjectStore(s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS }), e.bucket);
  const repository = await openRepository({ store, bucket: e.bucket, keys: { keyFile: e.keyFile } });
  const disk = { diskId: 'sparse', path: path!, sizeBytes: Number(sizeText) };
  const reader = await new FolderDriver(mode === 'read-all' ? { qemuImg: false } : {}).openDisk(disk);
  const started = performance.now();
  const r = await backupDisk({ repository, reader, disk, backupId: `sparse-${Date.now()}`, chunkSize: MiB, parallelism: 8 });
  await reader.close();
  process.stdout.write(
    JSON.stringify({ seconds: (performance.now() - started) / 1000, maxRssMiB: process.resourceUsage().maxRSS / 1024, stats: r.stats }) + '\n',
  );
  process.exit(0);
}

const sizeBytes = Number(process.env.BENCH_SPARSE_GIB ?? 16) * GiB;
const dir = resolve(fileURLToPath(new URL('..', import.meta.url)), '.lifeboat', 'bench-sparse');
await rm(dir, { recursive: true, force: true });
await mkdir(dir, { recursive: true });
const path = join(dir, 'sparse.raw');
/** The sparse image, with new data each time (so each run uploads it all, not deduplicating against the last). */
const writeImage = async () => {
  const fh = await open(path, 'w');
  for (let i = 0; i < 64; i++) await fh.write(randomBytes(MiB), 0, MiB, Math.floor((i * sizeBytes) / 64));
  await fh.truncate(sizeBytes);
  await fh.close();
};

const { EmbeddedStack } = await import('../local/stack.ts');
const stack = await EmbeddedStack.start({ dataDir: join(dir, 'stack') });
try {
  for (const mode of ['read-all', 'map-holes'] as const) {
    await writeImage();
    // Started as a mover is (mover/start-settings.ts).
    const child = spawn(
      process.execPath,
      [...MOVER_NODE_FLAGS, fileURLToPath(import.meta.url), 'child', JSON.stringify(stack.endpoints), path, String(sizeBytes), mode],
      { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...moverStartEnv(join(dir, 'compile-cache')) } },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((ok) => child.on('exit', ok));
    if (code !== 0) throw new Error(`mover child exited ${code}`);
    const r = JSON.parse(out) as {
      seconds: number;
      maxRssMiB: number;
      stats: { bytesScanned: number; bytesUnallocated: number; uploadedChunks: number; zeroChunks: number };
    };
    const how = mode === 'read-all' ? 'every byte read' : `holes mapped by qemu-img, ${(r.stats.bytesUnallocated / GiB).toFixed(1)} GiB not read`;
    process.stdout.write(
      `sparse disk ${sizeBytes / GiB} GiB (64 MiB of data), ${how}: ${r.seconds.toFixed(1)} s, ${(r.stats.bytesScanned / MiB / r.seconds).toFixed(0)} MiB/s scanned, ` +
        `${r.stats.uploadedChunks} chunks uploaded, ${r.stats.zeroChunks} zero chunks skipped, mover peak RSS ${r.maxRssMiB.toFixed(0)} MiB (target < 256 MiB)\n`,
    );
  }
} finally {
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
