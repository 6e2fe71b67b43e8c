/**
 * Lifeboat vs restic on the same disk images and the same local S3 endpoint (the embedded
 * stack's: s3rver with aws-chunked de-framing, local/s3-server.ts): full backup, incremental backup, restore.
 * Usage: npm run bench   (BENCH_SIZE_MIB=256 for a quick run; default 2048)
 * BENCH_RTT_MS=40 puts both tools the given round trip away from the endpoint (a WAN, emulated: bench/delayed-link.ts).
 * BENCH_PACK_MIB (default 8, the mover's default) sets Lifeboat's pack size; BENCH_CHUNK_KIB (default 512) its chunk size.
 * BENCH_IMAGES=sparse,thick (the default: both) picks the images: the bench's own, whose
 * zero runs are holes, and a thick one of other content whose zeros are written as data.
 * Beside the tools it measures the machine's ceilings (bench/ceilings.ts): reading each
 * image with dd, and writing the bytes the restore wrote with dd conv=fsync. Both tools'
 * restores are timed until their bytes are on storage (restic's with an fsync after it), and
 * both read a backup's image from the page cache (it is read once before the phase).
 *
 * It runs BENCH_ROUNDS rounds (default 2), each into fresh buckets, and the tools take
 * turns going first: on these shared 2-core machines whatever runs right after a big
 * delete or write pays for it (the first phase of a round ran up to 15% slower), and with
 * one order that was always Lifeboat. The table gives each figure's mean over the rounds.
 *
 * Each tool runs as it is deployed. restic is a command, started for each backup and
 * restore (its start, and opening its repository, are in its figures). A mover is a
 * long-running process that takes jobs: each round starts one (bench/mover-process.ts)
 * and gives it the round's three jobs; its start (loading the AWS SDK and its modules,
 * its keys), paid once per process, is measured and printed apart.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, openSync, closeSync, fsyncSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchImages, type BenchImages } from './image.ts';
import { readCeiling, writeCeiling, type Ceiling } from './ceilings.ts';
import { ofWriteCeiling, table, targetLines, targets, type Figures, type Phase, type Round, type TargetResult, type Tool } from './report.ts';
import { startLocalS3 } from '../local/s3-server.ts';
import { startDelayedLink } from './delayed-link.ts';
import { defaultPoolSize } from '../mover/pipeline/chunk-pool.ts';
import { RESTORE_DEFAULTS } from '../mover/pipeline/restore-disk.ts';
import { startBenchMover, type BenchMover } from './mover-process.ts';

const MiB = 1024 * 1024;
const root = fileURLToPath(new URL('..', import.meta.url));
// BENCH_DIR: another folder for a second bench run beside a running one (its images may be copied in: disk-*.json name them).
const dir = process.env.BENCH_DIR ? resolve(process.env.BENCH_DIR) : join(root, '.lifeboat', 'bench');
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 2048);
const rounds = Math.max(1, Math.floor(Number(process.env.BENCH_ROUNDS ?? 2)));
const rttMs = Number(process.env.BENCH_RTT_MS ?? 0);
const ROUNDS = Array.from({ length: rounds }, (_, i) => i + 1);
const imageKinds = (process.env.BENCH_IMAGES ?? 'sparse,thick')
  .split(',')
  .map((k) => k.trim())
  .filter(Boolean);
for (const k of imageKinds) if (k !== 'sparse' && k !== 'thick') throw new Error(`BENCH_IMAGES: '${k}' is not an image (sparse, thick)`);
const bucketOf = (tool: Tool, image: string, round: number) => `${tool}-bench-${image}-${round}`;
const TIME = '/usr/bin/time';
const hasTime = existsSync(TIME);
const hasRestic = spawnSync('restic', ['version'], { encoding: 'utf8' }).status === 0;

interface Run {
  wall: number;
  cpu: number | null;
  rssMiB: number | null;
  stdout: string;
  rssAtStartMiB?: number;
}

/** Runs a command under /usr/bin/time (when present); wall is measured here. */
async function timed(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; stdinFile?: string } = {}): Promise<Run> {
  const timeOut = join(dir, 'time.out');
  const fd = opts.stdinFile ? openSync(opts.stdinFile, 'r') : 'ignore';
  const [c, a] = hasTime ? [TIME, ['-f', '%e %U %S %M', '-o', timeOut, cmd, ...args]] : [cmd, args];
  const started = performance.now();
  const child = spawn(c, a, { env: opts.env ?? process.env, stdio: [fd, 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => {
    stdout += d;
  });
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  const code = await new Promise<number | null>((ok) => child.on('close', ok));
  const wall = (performance.now() - started) / 1000;
  if (typeof fd === 'number') closeSync(fd);
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${stderr.slice(-3000)}`);
  if (!hasTime) return { wall, cpu: null, rssMiB: null, stdout };
  const [, user, sys, rss] = (await readFile(timeOut, 'utf8')).trim().split('\n').pop()!.split(' ').map(Number);
  return { wall, cpu: user! + sys!, rssMiB: rss! / 1024, stdout };
}

/**
 * restic reports a restore done once its writes are in the page cache; a mover's restore
 * flushes its target first (restore-target.ts), and the write ceiling is dd's with
 * conv=fsync. So restic's restore is timed to the end of an fsync of the file it wrote:
 * both tools' figures are for the same bytes on storage. The fsync's share is in the note.
 */
function durable(run: Run, path: string): Pick<Run, 'wall' | 'stdout'> {
  const started = performance.now();
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const seconds = (performance.now() - started) / 1000;
  return { wall: run.wall + seconds, stdout: `${run.stdout}\nrestoring: ${run.wall.toFixed(1)} s, then fsync of disk.raw ${seconds.toFixed(1)} s` };
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const d of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(d as Buffer);
  return h.digest('hex');
}

/**
 * Bytes stored in a bucket: the object files in s3rver's directory (ListObjectsV2 paging
 * fails on Node 24: s3rver 3.7 builds continuation tokens with the removed crypto.createCipher).
 */
async function bucketBytes(bucket: string): Promise<{ bytes: number; objects: number }> {
  let bytes = 0;
  let objects = 0;
  for (const e of await readdir(join(dir, 's3', bucket), { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || !e.name.endsWith('._S3rver_object')) continue;
    bytes += (await stat(join(e.parentPath, e.name))).size;
    objects++;
  }
  return { bytes, objects };
}

console.log(
  `bench: ${sizeMiB} MiB images (${imageKinds.join(', ')}), ${cpus().length} cores, load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(
      ' ',
    )}${rttMs > 0 ? `, the endpoint ${rttMs} ms round trip away (emulated)` : ''}; restic ${hasRestic ? 'found' : 'MISSING'}; /usr/bin/time ${hasTime ? 'found' : 'MISSING (no CPU/RSS figures)'}`,
);
if (!hasRestic) console.log('restic is not installed: `apt-get update && apt-get install -y restic` (Debian 12 has 0.14). Running Lifeboat alone.');
const images: { kind: string; img: BenchImages; baseSha: string; changedSha: string; readCeiling: Ceiling }[] = [];
for (const kind of imageKinds) {
  const t = performance.now();
  const img = await benchImages(dir, sizeMiB, kind === 'thick' ? { seed: 7, thick: true } : {});
  const [baseSha, changedSha] = await Promise.all([sha256File(img.base), sha256File(img.changed)]);
  const ceiling = readCeiling(img.changed, img.sizeBytes);
  console.log(
    `${kind} image ready in ${((performance.now() - t) / 1000).toFixed(1)} s: zero ${(img.mix.zero / MiB).toFixed(0)} MiB, text ${(img.mix.text / MiB).toFixed(0)} MiB, random ${(img.mix.random / MiB).toFixed(0)} MiB; ${(img.changedBytes / MiB).toFixed(1)} MiB changed in the copy; read ceiling ${ceiling.mbPerSecond.toFixed(0)} MB/s (${ceiling.command})`,
  );
  images.push({ kind, img, baseSha, changedSha, readCeiling: ceiling });
}

await rm(join(dir, 's3'), { recursive: true, force: true });
const restoreLifeboat = join(dir, 'restore-lifeboat.raw');
const removeRestores = async () => {
  await rm(restoreLifeboat, { force: true });
  await rm(join(dir, 'restore-restic'), { recursive: true, force: true });
};
await removeRestores();
await rm(join(dir, 'restic-cache'), { recursive: true, force: true });
await mkdir(join(dir, 's3'), { recursive: true });
const keyFile = join(dir, 'master.key');
await writeFile(keyFile, randomBytes(32));
const s3 = await startLocalS3({
  directory: join(dir, 's3'),
  buckets: images.flatMap(({ kind }) => ROUNDS.flatMap((r) => [bucketOf('lifeboat', kind, r), bucketOf('restic', kind, r)])),
});
// Where both tools reach it: the server itself, or through an emulated WAN link.
const link = rttMs > 0 ? await startDelayedLink(s3.url, rttMs) : undefined;
const endpoint = link?.url ?? s3.url;
const resticEnv = (bucket: string) => ({
  ...process.env,
  RESTIC_REPOSITORY: `s3:${endpoint}/${bucket}`,
  RESTIC_PASSWORD: 'bench-password',
  AWS_ACCESS_KEY_ID: 'S3RVER',
  AWS_SECRET_ACCESS_KEY: 'S3RVER',
  RESTIC_CACHE_DIR: join(dir, 'restic-cache'),
});
const storedAfter: Record<string, number> = {};
const checks: string[] = [];
/** The round's mover process, and how long each round's took to start. */
let mover: BenchMover | undefined;
const moverStarts: BenchMover['start'][] = [];

async function phase(image: (typeof images)[number], tool: Tool, ph: Phase, round: number, into: Round): Promise<void> {
  const { img, kind } = image;
  const bucket = bucketOf(tool, kind, round);
  // Dirty pages of what ran before (the other tool's restore: 2 GiB; the last run's files,
  // deleted at start) are written back now, not during this phase's measurement.
  spawnSync('sync');
  // A backup reads its image from the page cache whichever tool goes first (the image is
  // read once now): the first tool of a phase otherwise read it cold, the second warm.
  if (ph !== 'restore') spawnSync('cat', [ph === 'full' ? img.base : img.changed], { stdio: 'ignore' });
  const reqBefore = s3.requests.get(bucket) ?? 0;
  let run: Run;
  if (tool === 'lifeboat') {
    const path = ph === 'full' ? img.base : ph === 'incr' ? img.changed : restoreLifeboat;
    const j = await mover!.job(ph, path);
    run = { wall: j.seconds, cpu: j.cpuSeconds, rssMiB: j.peakRssMiB, rssAtStartMiB: j.rssAtStartMiB, stdout: j.result };
  } else if (ph === 'restore') {
    run = await timed('restic', ['restore', 'latest', '--target', join(dir, 'restore-restic')], { env: resticEnv(bucket) });
    run = { ...run, ...durable(run, join(dir, 'restore-restic', 'disk.raw')) };
  } else {
    run = await timed('restic', ['backup', '--compression', 'auto', '--host', 'bench', '--stdin', '--stdin-filename', 'disk.raw'], {
      env: resticEnv(bucket),
      stdinFile: ph === 'full' ? img.base : img.changed,
    });
  }
  const requests = (s3.requests.get(bucket) ?? 0) - reqBefore;
  let bytesStored: number | null = null;
  let objects: number | undefined;
  if (ph !== 'restore') {
    const b = await bucketBytes(bucket);
    bytesStored = b.bytes - (ph === 'incr' ? storedAfter[`${bucket}-full`]! : (storedAfter[`${bucket}-init`] ?? 0));
    storedAfter[`${bucket}-${ph}`] = b.bytes;
    objects = b.objects;
  }
  const note =
    tool === 'restic'
      ? run.stdout
          .split('\n')
          .filter((l) => /using parent|Added to the repository|processed|restoring/.test(l))
          .map((l) => l.trim())
          .join('; ')
      : run.stdout.trim();
  const f: Figures = {
    note,
    wallSeconds: run.wall,
    mbPerSecond: img.sizeBytes / 1e6 / run.wall,
    cpuSeconds: run.cpu,
    peakRssMiB: run.rssMiB,
    bytesStored,
    requests,
    ...(objects !== undefined ? { objects } : {}),
  };
  into.phases[ph][tool] = f;
  if (ph === 'restore') {
    // Checked, then removed before the next phase: each restore starts from the same state of
    // memory (the other tool's 1.3-2 GiB restore left in the page cache made the second
    // restore of a round 1.5-3 s slower, for either tool).
    const restored = tool === 'lifeboat' ? restoreLifeboat : join(dir, 'restore-restic', 'disk.raw');
    checks.push(
      `${kind} round ${round}: ${tool} restore ${(await sha256File(restored)) === image.changedSha ? 'matches' : 'DOES NOT MATCH'} the changed image (sha256)`,
    );
    if (tool === 'lifeboat') into.restoredBytes = (await stat(restored)).blocks * 512;
    await removeRestores();
  }
  console.log(
    `  ${kind} round ${round} ${tool.padEnd(8)} ${ph.padEnd(7)} ${run.wall.toFixed(1)} s, ${f.mbPerSecond.toFixed(0)} MB/s, cpu ${run.cpu?.toFixed(1) ?? '?'} s, rss ${run.rssMiB?.toFixed(0) ?? '?'} MiB${run.rssAtStartMiB !== undefined ? ` (${run.rssAtStartMiB.toFixed(0)} at its start)` : ''}, ${requests} requests${bytesStored !== null ? `, ${(bytesStored / MiB).toFixed(1)} MiB stored` : ''}; load ${loadavg()[0]!.toFixed(2)}`,
  );
}

const fmt = (v: number | null | undefined, d = 2) => (v == null ? '-' : v.toFixed(d));
const ratioOf = (r: Round, ph: Phase, k: keyof Figures) => {
  const l = r.phases[ph].lifeboat?.[k] as number | undefined;
  const x = r.phases[ph].restic?.[k] as number | undefined;
  return l != null && x ? l / x : null;
};

const chunkKiB = Number(process.env.BENCH_CHUNK_KIB ?? 512);
const packMiB = Number(process.env.BENCH_PACK_MIB ?? 8);
const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;
console.log(
  `  Lifeboat: ${chunkKiB} KiB chunks, ${packMiB} MiB packs, ${defaultPoolSize()} chunk worker(s), 8 chunks in flight in backups, restores with their defaults (${RESTORE_DEFAULTS.inFlightBytes / MiB} MiB of reads in flight, runs up to ${RESTORE_DEFAULTS.maxRunBytes / MiB} MiB, gaps up to ${RESTORE_DEFAULTS.maxGapBytes / 1024} KiB read through), at most 16 requests at once, ${hasQemuImg ? "a sparse image's holes mapped by qemu-img (not read)" : 'qemu-img MISSING: every byte read (apt-get install qemu-utils)'}; restic: --compression auto, repository v2, --stdin`,
);
const results: Record<string, { rounds: Round[]; targets: TargetResult[]; readCeiling: Ceiling }> = {};
try {
  for (const image of images) {
    const rounds: Round[] = [];
    for (const round of ROUNDS) {
      const r: Round = { phases: { full: {}, incr: {}, restore: {} } };
      rounds.push(r);
      // Started as a mover is (mover/start-settings.ts), its compile cache kept between starts as a mover's is.
      mover = await startBenchMover({ endpoint, bucket: bucketOf('lifeboat', image.kind, round), keyFile, compileCacheDir: join(dir, 'compile-cache') });
      moverStarts.push(mover.start);
      console.log(
        `  ${image.kind} round ${round}: Lifeboat mover started in ${mover.start.seconds.toFixed(2)} s (peak RSS ${mover.start.peakRssMiB.toFixed(0)} MiB), once for the round's jobs`,
      );
      const order = round % 2 === 1 ? (['lifeboat', 'restic'] as const) : (['restic', 'lifeboat'] as const);
      if (hasRestic) {
        const bucket = bucketOf('restic', image.kind, round);
        const reqBefore = s3.requests.get(bucket) ?? 0;
        await timed('restic', ['init', '--repository-version', '2'], { env: resticEnv(bucket) });
        storedAfter[`${bucket}-init`] = (await bucketBytes(bucket)).bytes;
        console.log(
          `  ${image.kind} round ${round}: restic init ${(s3.requests.get(bucket) ?? 0) - reqBefore} requests (not counted in the phases); ${order[0] === 'lifeboat' ? 'Lifeboat' : 'restic'} goes first`,
        );
      }
      for (const ph of ['full', 'incr', 'restore'] as const) {
        for (const tool of order) if (tool === 'lifeboat' || hasRestic) await phase(image, tool, ph, round, r);
      }
      await mover.close();
      mover = undefined;
      spawnSync('sync');
      const w = await writeCeiling(dir, r.restoredBytes!);
      r.writeCeilingSeconds = w.seconds * (r.restoredBytes! / w.bytes);
      console.log(
        `  ${image.kind} round ${round}: write ceiling ${w.mbPerSecond.toFixed(0)} MB/s (${w.command}: ${w.seconds.toFixed(1)} s); restore ${fmt(ratioOf(r, 'restore', 'mbPerSecond'))}x restic, ${fmt(ofWriteCeiling(r))} of the write ceiling, GETs ${fmt(ratioOf(r, 'restore', 'requests'))}x restic's; full ${fmt(ratioOf(r, 'full', 'mbPerSecond'))}x, incremental ${fmt(ratioOf(r, 'incr', 'mbPerSecond'))}x restic`,
      );
    }
    results[image.kind] = { rounds, targets: targets(rounds), readCeiling: image.readCeiling };
  }
} finally {
  await mover?.close().catch(() => {});
  await link?.close();
  await s3.close();
}

for (const { kind, img, readCeiling: rc } of images) {
  const { rounds, targets: t } = results[kind]!;
  const wc = rounds.map((r) => r.restoredBytes! / 1e6 / r.writeCeilingSeconds!);
  console.log(
    `\n${kind} image (${sizeMiB} MiB${kind === 'thick' ? ', zeros written as data' : ', zero runs as holes'}): the means of ${rounds.length} round(s)`,
  );
  console.log(table(rounds));
  console.log(
    `ceilings: reading the image ${rc.mbPerSecond.toFixed(0)} MB/s (${(img.sizeBytes / 1e6 / rc.mbPerSecond).toFixed(1)} s); writing the restored ${(rounds[0]!.restoredBytes! / MiB).toFixed(0)} MiB ${(wc.reduce((a, x) => a + x, 0) / wc.length).toFixed(0)} MB/s [${wc.map((x) => x.toFixed(0)).join(', ')}]`,
  );
  console.log(`Targets (on the means; each round's figure in brackets):`);
  for (const l of targetLines(t)) console.log(l);
}
const startMean = {
  seconds: moverStarts.reduce((a, m) => a + m.seconds, 0) / moverStarts.length,
  peakRssMiB: moverStarts.reduce((a, m) => a + m.peakRssMiB, 0) / moverStarts.length,
};
console.log(
  `\nLifeboat's mover start, once per process and in none of the phases above: ${startMean.seconds.toFixed(2)} s, peak RSS ${startMean.peakRssMiB.toFixed(0)} MiB. Load at the end: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
);
for (const c of checks) console.log(`  check: ${c}`);

const restic = hasRestic ? spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.trim() : null;
await writeFile(
  join(dir, 'results.json'),
  JSON.stringify(
    {
      at: new Date().toISOString(),
      sizeMiB,
      rttMs,
      cores: cpus().length,
      restic,
      settings: {
        lifeboat: {
          chunkSize: chunkKiB * 1024,
          backupParallelism: 8,
          restore: RESTORE_DEFAULTS,
          chunkWorkers: defaultPoolSize(),
          packBytes: packMiB * 1024 * 1024,
          holesMapped: hasQemuImg,
        },
        restic: { compression: 'auto', repositoryVersion: 2, stdin: true },
      },
      rounds,
      images: images.map(({ kind, img, baseSha, changedSha }) => ({ kind, ...img, baseSha256: baseSha, changedSha256: changedSha })),
      results,
      moverStarts,
      checks,
    },
    null,
    2,
  ) + '\n',
);
console.log(`\nresults: ${join(dir, 'results.json')}`);
