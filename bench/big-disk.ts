/**
 * A disk of millions of chunks through every reader and writer of its manifest, each step
 * in its own process so its peak RSS is its own: a full backup in segments (mover),
 * JoinSegments, Verify (functions), an incremental (mover), GC (function) and a restore
 * (mover). Prints each process's peak RSS against its target (mover 256 MiB, function
 * 512 MiB) and the manifest's stored bytes per chunk (target 48).
 *
 * The chunk size is small (BENCH_CHUNK_BYTES, default 1 KiB) so millions of chunks fit in
 * minutes: what grows with the disk is the number of chunks, not their size.
 * Usage: npm run bench:big-disk   (BENCH_CHUNKS, default 4,194,304; BENCH_SEGMENTS, default 4;
 * BENCH_FULL_ONLY=1 stops after the full backup's segments, to measure the mover alone).
 * BENCH_DIR=folder keeps the image and the repository there (kept at the end), and
 * BENCH_FROM=join|verify|incremental|gc|restore runs the later steps on their own over what an
 * earlier run with the same BENCH_DIR and BENCH_CHUNKS left (a 4M-chunk run takes hours at load),
 * and BENCH_TO=<step> stops after that step (BENCH_VERIFY=0 skips both Verify steps). An incremental run again over a kept folder
 * changes the same chunks to new bytes (its round's), under the same backup id: it uploads
 * as much as the first did, and the chunks of the one before become garbage for GC.
 */
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { createReadStream, readFileSync } from 'node:fs';
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getHeapStatistics } from 'node:v8';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import type { DiskResult, VmJob } from '../contracts/jobs.ts';
import { S3RepositoryAdmin } from '../repository/admin.ts';
import { objectKeys } from '../repository/format.ts';
import { openRepository } from '../repository/open.ts';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';
import { sharedChunkPool } from '../mover/pipeline/chunk-pool.ts';

const MiB = 1024 ** 2;
const chunkSize = Number(process.env.BENCH_CHUNK_BYTES ?? 1024);
const chunks = Number(process.env.BENCH_CHUNKS ?? 4 * 1024 * 1024);
const segments = Number(process.env.BENCH_SEGMENTS ?? 4);
const fullOnly = process.env.BENCH_FULL_ONLY === '1';
const LATER_STEPS = ['join', 'verify', 'incremental', 'gc', 'restore'] as const;
const from = process.env.BENCH_FROM as (typeof LATER_STEPS)[number] | undefined;
if (from !== undefined && !LATER_STEPS.includes(from))
  throw new Error(`BENCH_FROM=${from} is not a step the bench can start from: use one of ${LATER_STEPS.join(', ')} (with the BENCH_DIR of an earlier run)`);
const to = process.env.BENCH_TO as (typeof LATER_STEPS)[number] | undefined;
if (to !== undefined && !LATER_STEPS.includes(to))
  throw new Error(`BENCH_TO=${to} is not a step the bench can stop after: use one of ${LATER_STEPS.join(', ')}`);
/** Whether step `s` runs (BENCH_FROM skips those before it, BENCH_TO those after it). */
const runs = (s: (typeof LATER_STEPS)[number]) =>
  (from === undefined || LATER_STEPS.indexOf(s) >= LATER_STEPS.indexOf(from)) && (to === undefined || LATER_STEPS.indexOf(s) <= LATER_STEPS.indexOf(to));
/** BENCH_VERIFY=0 skips both Verify steps (to reach the later steps sooner: a 4M Verify takes ~14 minutes at load). */
const verifies = process.env.BENCH_VERIFY !== '0';
/** Zero chunks between stored ones: every 64th chunk is a hole, so zero entries are there too. */
const HOLE_EVERY = 64;
const sizeBytes = chunks * chunkSize;
const diskId = 'big';

interface Endpoints {
  region: string;
  s3: string;
  bucket: string;
  keyFile: string;
}

async function open_(e: Endpoints, indexDir?: string) {
  const client = s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  const store = new S3ObjectStore(client, e.bucket);
  const repository = await openRepository({ store, bucket: e.bucket, keys: { keyFile: e.keyFile }, ...(indexDir ? { indexDir } : {}) });
  return { client, repository };
}

/** One step, run in a child process: prints its result and its peak RSS. */
async function child(step: string, e: Endpoints, args: Record<string, unknown>): Promise<unknown> {
  const { client, repository } = await open_(e, args.indexDir as string | undefined);
  const job = { backupId: args.backupId as string, repository: { chunkSize }, snapshot: { disks: [{ diskId, sizeBytes }] } } as unknown as VmJob;
  const disk = { diskId, path: args.path as string, sizeBytes };
  switch (step) {
    case 'backup': {
      const { backupDisk } = await import('../mover/pipeline/backup-disk.ts');
      const { FolderDriver } = await import('../mover/sources/folder.ts');
      const reader = await new FolderDriver({ qemuImg: false }).openDisk(disk);
      // The repository's index as a mover keeps it: its listings in local files (mover/repository-access.ts).
      const index = repository.index;
      const seg = args.segment as { index: number; count: number; offset: number; length: number } | undefined;
      try {
        return await backupDisk({
          repository,
          reader,
          disk,
          backupId: job.backupId,
          chunkSize,
          parallelism: 8,
          index: () => index.refresh(),
          ...(seg ? { segment: seg } : {}),
          ...(args.parentBackupId
            ? { parentBackupId: args.parentBackupId as string, parentManifestKey: objectKeys.manifest(args.parentBackupId as string, diskId) }
            : {}),
        });
      } finally {
        await reader.close();
      }
    }
    case 'join': {
      // biome-ignore lint/style/noRestrictedImports: the bench measures each function's own memory in a process of its own, so it runs the handler's code directly
      const { joinSegments } = await import('../functions/backup/dispatch.ts');
      return joinSegments({ job, transfers: args.transfers as DiskResult[] }, repository);
    }
    case 'verify': {
      // biome-ignore lint/style/noRestrictedImports: as above, one function per process
      const { verifyManifests } = await import('../functions/backup/verify.ts');
      return verifyManifests(job.backupId, [{ diskId, manifestKey: objectKeys.manifest(job.backupId, diskId) }], { repository });
    }
    case 'gc': {
      // biome-ignore lint/style/noRestrictedImports: as above, one function per process
      const { collectGarbage } = await import('../functions/gc/gc.ts');
      const r = await collectGarbage(
        { gcId: `bench-${Date.now()}`, request: { bucket: e.bucket, graceHours: 0 } },
        { admin: new S3RepositoryAdmin(client, e.bucket), repository, now: () => new Date() },
      );
      return { manifests: r.manifests, packs: r.packs, index: r.index, reclaimableInPacks: r.reclaimableInPacks, consolidation: r.consolidation };
    }
    case 'restore': {
      const { restoreDisk } = await import('../mover/pipeline/restore-disk.ts');
      return restoreDisk({ repository, backupId: job.backupId, diskId, target: args.target as string, targetKind: 'file' });
    }
  }
  throw new Error(`unknown step ${step}`);
}

/** This process's CPU time so far, all its threads, user and system. */
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

if (process.argv[2] === 'child') {
  const [, , , step, endpointsJson, argsJson] = process.argv;
  const started = performance.now();
  // Where the memory is, at the RSS peak: V8's heap, memory outside it (Buffers), and the rest
  // (worker threads' heaps, the allocator's arenas, code, stacks), with the kernel's split.
  let peak = {
    rss: 0,
    heapTotal: 0,
    heapUsed: 0,
    external: 0,
    arrayBuffers: 0,
    anon: 0,
    file: 0,
    threads: 0,
    mainMalloced: 0,
    workerHeap: 0,
    workerUsed: 0,
    workerMalloced: 0,
  };
  // The chunk workers' isolates, sampled now and then (asynchronously): the latest at the peak.
  let workers = { heap: 0, used: 0, malloced: 0 };
  const sampleWorkers = async () => {
    const all = await sharedChunkPool().heapStatistics();
    const sum = (f: (h: (typeof all)[number]) => number) => all.reduce((n, h) => n + f(h), 0) / MiB;
    workers = { heap: sum((h) => h.total_heap_size), used: sum((h) => h.used_heap_size), malloced: sum((h) => h.malloced_memory) };
  };
  const workerSampler = setInterval(() => void sampleWorkers().catch(() => {}), 250);
  const kib = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0) / 1024;
  const sample = () => {
    const m = process.memoryUsage();
    if (m.rss <= peak.rss * 1.01) return;
    const rollup = readFileSync('/proc/self/smaps_rollup', 'utf8');
    const status = readFileSync('/proc/self/status', 'utf8');
    const mib = (n: number) => n / MiB;
    peak = {
      rss: mib(m.rss),
      heapTotal: mib(m.heapTotal),
      heapUsed: mib(m.heapUsed),
      external: mib(m.external),
      arrayBuffers: mib(m.arrayBuffers),
      anon: kib(rollup, 'Anonymous'),
      file: kib(rollup, 'Rss') - kib(rollup, 'Anonymous'),
      threads: Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 0),
      mainMalloced: mib(getHeapStatistics().malloced_memory),
      workerHeap: workers.heap,
      workerUsed: workers.used,
      workerMalloced: workers.malloced,
    };
    peak.rss = m.rss; // compared in bytes
  };
  const sampler = setInterval(sample, 50);
  const result = await child(step!, JSON.parse(endpointsJson!) as Endpoints, JSON.parse(argsJson!) as Record<string, unknown>);
  clearInterval(sampler);
  clearInterval(workerSampler);
  sample();
  const { rss, ...atPeak } = peak;
  const peaksMiB = { ...atPeak, rss: rss / MiB, other: rss / MiB - atPeak.heapTotal - atPeak.external };
  process.stdout.write(
    JSON.stringify({
      seconds: (performance.now() - started) / 1000,
      cpuSeconds: cpuSeconds(),
      maxRssMiB: process.resourceUsage().maxRSS / 1024,
      peaksMiB,
      result,
    }) + '\n',
  );
  process.exit(0);
}

const keep = process.env.BENCH_DIR !== undefined;
const dir = keep ? resolve(process.env.BENCH_DIR!) : resolve(fileURLToPath(new URL('..', import.meta.url)), '.lifeboat', `bench-big-disk-${process.pid}`);
if (!from) await rm(dir, { recursive: true, force: true });
await mkdir(dir, { recursive: true });
const image = join(dir, 'big.raw');
const indexDir = join(dir, 'repository-index');
/** What the later steps need of the full backup's segments, for a run started with BENCH_FROM. */
const transfersFile = join(dir, 'transfers.json');
/** The earlier run's segments, read when the bench starts from a later step. */
async function earlierTransfers(): Promise<DiskResult[]> {
  const text = await readFile(transfersFile, 'utf8').catch((err: unknown) => {
    throw new Error(
      `BENCH_FROM=${from} needs the full backup of an earlier run in ${dir}, but ${transfersFile} cannot be read (${(err as Error).message}): run the bench with BENCH_DIR=${dir} and no BENCH_FROM first, with the same BENCH_CHUNKS`,
    );
  });
  return JSON.parse(text) as DiskResult[];
}

/**
 * Writes the image: every chunk distinct (its number, then a compressible pattern), every
 * HOLE_EVERY-th a hole; with `changedEvery`, every changedEvery-th chunk gets another
 * pattern, marked with `round` (an incremental's round: 0 the first, as before rounds were counted).
 */
async function writeImage(changedEvery?: number, round = 0): Promise<void> {
  const fh = await open(image, changedEvery ? 'r+' : 'w');
  const block = Buffer.alloc(64 * MiB);
  const perBlock = block.length / chunkSize;
  for (let first = 0; first < chunks; first += perBlock) {
    const n = Math.min(perBlock, chunks - first);
    const writes: Promise<unknown>[] = [];
    for (let k = 0; k < n; k++) {
      const i = first + k;
      const at = k * chunkSize;
      if (i % HOLE_EVERY === HOLE_EVERY - 1) {
        block.fill(0, at, at + chunkSize);
        continue;
      }
      if (changedEvery && i % changedEvery !== 0) continue;
      block.fill(changedEvery ? 0x5a : 0xa5, at, at + chunkSize);
      block.writeUInt32BE(i, at);
      block.writeUInt32BE(changedEvery ? changedEvery + round * 0x100 : 0, at + 4);
    }
    if (!changedEvery) writes.push(fh.write(block, 0, n * chunkSize, first * chunkSize));
    else {
      for (let k = 0; k < n; k++) {
        const i = first + k;
        if (i % changedEvery === 0 && i % HOLE_EVERY !== HOLE_EVERY - 1) writes.push(fh.write(block, k * chunkSize, chunkSize, i * chunkSize));
      }
    }
    await Promise.all(writes);
  }
  await fh.close();
}

const sha256 = (path: string) =>
  new Promise<string>((ok, fail) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => ok(h.digest('hex')))
      .on('error', fail);
  });

const { EmbeddedStack } = await import('../local/stack.ts');
const stack = await EmbeddedStack.start({ dataDir: join(dir, 'stack') });
const e: Endpoints = { region: stack.endpoints.region, s3: stack.endpoints.s3, bucket: stack.endpoints.bucket, keyFile: stack.endpoints.keyFile };
const lines: string[] = [];
const say = (s: string) => {
  lines.push(s);
  process.stdout.write(s + '\n');
};

// BENCH_MOVER_NODE_FLAGS: more Node flags for the movers' processes, to try a setting before it becomes a start setting.
const extraMoverFlags = (process.env.BENCH_MOVER_NODE_FLAGS ?? '').split(' ').filter(Boolean);
// BENCH_MOVER_ENV: NAME=value pairs for the movers' environment over the start settings' (MALLOC_TRIM_THRESHOLD_=16777216, say).
const extraMoverEnv = Object.fromEntries(
  (process.env.BENCH_MOVER_ENV ?? '')
    .split(' ')
    .filter(Boolean)
    .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);

// BENCH_MOVER_WRAP: a command the movers' node runs under ("heaptrack -o /tmp/incr", say).
const moverWrap = (process.env.BENCH_MOVER_WRAP ?? '').split(' ').filter(Boolean);

async function step<T>(name: string, kind: 'mover' | 'function', args: Record<string, unknown>): Promise<T> {
  const wrap = kind === 'mover' ? moverWrap : [];
  const c = spawn(
    wrap[0] ?? process.execPath,
    [
      ...wrap.slice(1),
      ...(wrap.length ? [process.execPath] : []),
      ...(kind === 'mover' ? [...MOVER_NODE_FLAGS, ...extraMoverFlags] : []),
      fileURLToPath(import.meta.url),
      'child',
      name,
      JSON.stringify(e),
      JSON.stringify(args),
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...(kind === 'mover' ? { ...moverStartEnv(join(dir, 'compile-cache')), ...extraMoverEnv } : {}) },
    },
  );
  let out = '';
  c.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((ok) => c.on('exit', ok));
  if (code !== 0) throw new Error(`${name} exited ${code}`);
  // The result is the last line the step printed; what a diagnostic flag or a wrapper printed (--trace-gc) goes to stderr.
  const printed = out.trimEnd().split('\n');
  const last = printed.findLastIndex((l) => l.startsWith('{"seconds":'));
  const rest = printed.filter((_, i) => i !== last);
  if (rest.length) process.stderr.write(rest.join('\n') + '\n');
  if (last < 0) throw new Error(`${name} printed no result line (its output ended: ${printed.at(-1)})`);
  const r = JSON.parse(printed[last]!) as { seconds: number; cpuSeconds: number; maxRssMiB: number; peaksMiB: Record<string, number>; result: T };
  const target = kind === 'mover' ? 256 : 512;
  const p = r.peaksMiB;
  say(
    `${new Date().toISOString().slice(11, 19)} ${(name + (args.label ? ` ${String(args.label)}` : '')).padEnd(22)} ${r.seconds.toFixed(1).padStart(7)} s (CPU ${r.cpuSeconds.toFixed(1)} s)   peak RSS ${r.maxRssMiB.toFixed(0).padStart(4)} MiB (${kind}, target <= ${target} MiB${r.maxRssMiB <= target ? '' : ', MISSED'}; at the peak: heap ${p.heapUsed!.toFixed(0)} of ${p.heapTotal!.toFixed(0)}, external ${p.external!.toFixed(0)} (ArrayBuffers ${p.arrayBuffers!.toFixed(0)}), other ${p.other!.toFixed(0)} (workers' heaps ${p.workerUsed!.toFixed(0)} of ${p.workerHeap!.toFixed(0)}, malloced by V8 ${p.mainMalloced!.toFixed(0)} + ${p.workerMalloced!.toFixed(0)}); anon ${p.anon!.toFixed(0)}, file ${p.file!.toFixed(0)} MiB; ${p.threads} threads)   load ${loadavg()[0]!.toFixed(1)}`,
  );
  return r.result;
}

/** Sealed bytes of a backup's manifest of the disk: its head and every piece it names (its segments' too). */
async function manifestBytes(backupId: string): Promise<number> {
  const { repository } = await open_(e);
  const m = (await repository.openManifest(backupId, diskId))!;
  return m.headBytes + m.pieces().reduce((n, p) => n + p.bytes, 0);
}

try {
  const nonZero = chunks - Math.floor(chunks / HOLE_EVERY);
  say(
    `big disk: ${chunks} chunks of ${chunkSize} bytes (${(sizeBytes / 1024 ** 3).toFixed(1)} GiB), ${nonZero} non-zero; ${segments} segments; 2 cores, load ${loadavg()[0]!.toFixed(1)} at start`,
  );
  const full = 'big-full';
  const transfers = from ? await earlierTransfers() : await fullInSegments(full);
  if (!fullOnly) await afterFull(full, transfers, nonZero);
} finally {
  await stack.stop();
  if (!keep) await rm(dir, { recursive: true, force: true });
}

/** Writes the image and backs it up in segments, one mover process each. */
async function fullInSegments(full: string): Promise<DiskResult[]> {
  await writeImage();
  const perSegment = Math.ceil(chunks / segments) * chunkSize;
  const transfers: DiskResult[] = [];
  for (let index = 0; index < segments; index++) {
    const offset = index * perSegment;
    const segment = { index, count: segments, offset, length: Math.min(perSegment, sizeBytes - offset) };
    transfers.push(await step<DiskResult>('backup', 'mover', { backupId: full, path: image, segment, indexDir, label: `segment ${index}` }));
  }
  await writeFile(transfersFile, JSON.stringify(transfers));
  return transfers;
}

/** JoinSegments, Verify, an incremental, its Verify, GC and the restore, after the full backup's segments. */
async function afterFull(full: string, transfers: DiskResult[], nonZero: number): Promise<void> {
  if (runs('join')) {
    await step('join', 'function', { backupId: full, transfers });
    const bytes = await manifestBytes(full);
    say(
      `manifest of the full backup: ${bytes} bytes stored, ${(bytes / nonZero).toFixed(2)} bytes per non-zero chunk, ${(bytes / chunks).toFixed(2)} per chunk (target <= 48)`,
    );
  }
  if (runs('verify') && verifies) await step('verify', 'function', { backupId: full });
  const incr = 'big-incr';
  if (runs('incremental')) {
    // About 1% of the chunks change: the same ones each round, to new bytes each round.
    const roundFile = join(dir, 'incremental-rounds');
    // (A folder of a run before rounds were counted holds round 0's incremental when it has one.)
    const round = Number(await readFile(roundFile, 'utf8').catch(async () => ((await (await open_(e)).repository.openManifest(incr, diskId)) ? '1' : '0')));
    await writeImage(97, round);
    await writeFile(roundFile, String(round + 1));
    const r = await step<DiskResult>('backup', 'mover', { backupId: incr, path: image, parentBackupId: full, indexDir, label: 'incremental' });
    say(`incremental: ${r.stats.parentChunks} chunks reused from the parent, ${r.stats.uploadedChunks} uploaded, ${r.stats.dedupedChunks} deduplicated`);
    if (verifies) await step('verify', 'function', { backupId: incr, label: 'incremental' });
  }
  if (runs('gc')) {
    const gc = await step<{ manifests: number; packs: unknown; reclaimableInPacks: unknown }>('gc', 'function', {});
    say(`gc: ${gc.manifests} manifests marked, packs ${JSON.stringify(gc.packs)}, reclaimable ${JSON.stringify(gc.reclaimableInPacks)}`);
  }
  if (!runs('restore')) return;
  const target = join(dir, 'restored.raw');
  await step('restore', 'mover', { backupId: incr, target });
  const same = (await sha256(image)) === (await sha256(target));
  say(`restore of the incremental: ${same ? 'byte-identical to the image' : 'DIFFERS from the image'}`);
  await rm(target, { force: true });
  if (!same) process.exitCode = 1;
}
