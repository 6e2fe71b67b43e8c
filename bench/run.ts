/**
 * Lifeboat vs restic on the same disk image and the same local S3 endpoint (the embedded
 * stack's: s3rver with aws-chunked de-framing, local/s3-server.ts): full backup, incremental backup, restore.
 * Usage: npm run bench   (BENCH_SIZE_MIB=256 for a quick run; default 2048)
 * BENCH_RTT_MS=40 puts both tools the given round trip away from the endpoint (a WAN, emulated: bench/delayed-link.ts).
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
import { createReadStream, existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchImages } from './image.ts';
import { startLocalS3 } from '../local/s3-server.ts';
import { startDelayedLink } from './delayed-link.ts';
import { defaultPoolSize } from '../mover/pipeline/chunk-pool.ts';
import { startBenchMover, type BenchMover } from './mover-process.ts';

const MiB = 1024 * 1024;
const root = fileURLToPath(new URL('..', import.meta.url));
const dir = join(root, '.lifeboat', 'bench');
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 2048);
const rounds = Math.max(1, Math.floor(Number(process.env.BENCH_ROUNDS ?? 2)));
const rttMs = Number(process.env.BENCH_RTT_MS ?? 0);
const ROUNDS = Array.from({ length: rounds }, (_, i) => i + 1);
const bucketOf = (tool: 'lifeboat' | 'restic', round: number) => `${tool}-bench-${round}`;
const TIME = '/usr/bin/time';
const hasTime = existsSync(TIME);
const hasRestic = spawnSync('restic', ['version'], { encoding: 'utf8' }).status === 0;

interface Run { wall: number; cpu: number | null; rssMiB: number | null; stdout: string; rssAtStartMiB?: number }

/** Runs a command under /usr/bin/time (when present); wall is measured here. */
async function timed(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; stdinFile?: string } = {}): Promise<Run> {
  const timeOut = join(dir, 'time.out');
  const fd = opts.stdinFile ? openSync(opts.stdinFile, 'r') : 'ignore';
  const [c, a] = hasTime ? [TIME, ['-f', '%e %U %S %M', '-o', timeOut, cmd, ...args]] : [cmd, args];
  const started = performance.now();
  const child = spawn(c, a, { env: opts.env ?? process.env, stdio: [fd, 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  const code = await new Promise<number | null>((ok) => child.on('close', ok));
  const wall = (performance.now() - started) / 1000;
  if (typeof fd === 'number') closeSync(fd);
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${stderr.slice(-3000)}`);
  if (!hasTime) return { wall, cpu: null, rssMiB: null, stdout };
  const [, user, sys, rss] = (await readFile(timeOut, 'utf8')).trim().split('\n').pop()!.split(' ').map(Number);
  return { wall, cpu: user! + sys!, rssMiB: rss! / 1024, stdout };
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

type Phase = 'full' | 'incr' | 'restore';
interface Figures { wallSeconds: number; mbPerSecond: number; cpuSeconds: number | null; peakRssMiB: number | null; bytesStored: number | null; requests: number; objects?: number; note?: string }
type Results = Record<Phase, { lifeboat?: Figures; restic?: Figures }>;
const roundResults: Results[] = [];

console.log(`bench: ${sizeMiB} MiB image, ${cpus().length} cores${rttMs > 0 ? `, the endpoint ${rttMs} ms round trip away (emulated)` : ''}; restic ${hasRestic ? 'found' : 'MISSING'}; /usr/bin/time ${hasTime ? 'found' : 'MISSING (no CPU/RSS figures)'}`);
if (!hasRestic) console.log('restic is not installed: `apt-get update && apt-get install -y restic` (Debian 12 has 0.14). Running Lifeboat alone.');
let t = performance.now();
const img = await benchImages(dir, sizeMiB);
console.log(`images ready in ${((performance.now() - t) / 1000).toFixed(1)} s: zero ${(img.mix.zero / MiB).toFixed(0)} MiB, text ${(img.mix.text / MiB).toFixed(0)} MiB, random ${(img.mix.random / MiB).toFixed(0)} MiB; ${(img.changedBytes / MiB).toFixed(1)} MiB changed in the copy`);
const [baseSha, changedSha] = await Promise.all([sha256File(img.base), sha256File(img.changed)]);

await rm(join(dir, 's3'), { recursive: true, force: true });
const removeRestores = async () => {
  await rm(join(dir, 'restore-lifeboat.raw'), { force: true });
  await rm(join(dir, 'restore-restic'), { recursive: true, force: true });
};
await removeRestores();
await rm(join(dir, 'restic-cache'), { recursive: true, force: true });
await mkdir(join(dir, 's3'), { recursive: true });
const keyFile = join(dir, 'master.key');
await writeFile(keyFile, randomBytes(32));
const s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: ROUNDS.flatMap((r) => [bucketOf('lifeboat', r), bucketOf('restic', r)]) });
// Where both tools reach it: the server itself, or through an emulated WAN link.
const link = rttMs > 0 ? await startDelayedLink(s3.url, rttMs) : undefined;
const endpoint = link?.url ?? s3.url;
const resticEnv = (round: number) => ({
  ...process.env, RESTIC_REPOSITORY: `s3:${endpoint}/${bucketOf('restic', round)}`, RESTIC_PASSWORD: 'bench-password',
  AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', RESTIC_CACHE_DIR: join(dir, 'restic-cache'),
});
const storedAfter: Record<string, number> = {};

async function phase(tool: 'lifeboat' | 'restic', ph: Phase, round: number): Promise<void> {
  const bucket = bucketOf(tool, round);
  // Dirty pages of what ran before (the other tool's restore: 2 GiB; the last run's files,
  // deleted at start) are written back now, not during this phase's measurement.
  spawnSync('sync');
  const reqBefore = s3.requests.get(bucket) ?? 0;
  let run: Run;
  if (tool === 'lifeboat') {
    const path = ph === 'full' ? img.base : ph === 'incr' ? img.changed : join(dir, 'restore-lifeboat.raw');
    const j = await mover!.job(ph, path);
    run = { wall: j.seconds, cpu: j.cpuSeconds, rssMiB: j.peakRssMiB, rssAtStartMiB: j.rssAtStartMiB, stdout: j.result };
  } else if (ph === 'restore') {
    run = await timed('restic', ['restore', 'latest', '--target', join(dir, 'restore-restic')], { env: resticEnv(round) });
  } else {
    run = await timed('restic', ['backup', '--compression', 'auto', '--host', 'bench', '--stdin', '--stdin-filename', 'disk.raw'], { env: resticEnv(round), stdinFile: ph === 'full' ? img.base : img.changed });
  }
  const requests = (s3.requests.get(bucket) ?? 0) - reqBefore;
  let bytesStored: number | null = null;
  let objects: number | undefined;
  if (ph !== 'restore') {
    const b = await bucketBytes(bucket);
    bytesStored = b.bytes - (ph === 'incr' ? storedAfter[`${bucket}-full`]! : storedAfter[`${bucket}-init`] ?? 0);
    storedAfter[`${bucket}-${ph}`] = b.bytes;
    objects = b.objects;
  }
  const note = tool === 'restic'
    ? run.stdout.split('\n').filter((l) => /using parent|Added to the repository|processed|restoring/.test(l)).map((l) => l.trim()).join('; ')
    : run.stdout.trim();
  const f: Figures = { note, wallSeconds: run.wall, mbPerSecond: img.sizeBytes / 1e6 / run.wall, cpuSeconds: run.cpu, peakRssMiB: run.rssMiB, bytesStored, requests, ...(objects !== undefined ? { objects } : {}) };
  roundResults[round - 1]![ph][tool] = f;
  if (ph === 'restore') {
    // Checked, then removed before the next phase: each restore starts from the same state of
    // memory (the other tool's 1.3-2 GiB restore left in the page cache made the second
    // restore of a round 1.5-3 s slower, for either tool).
    const restored = tool === 'lifeboat' ? join(dir, 'restore-lifeboat.raw') : join(dir, 'restore-restic', 'disk.raw');
    checks.push(`round ${round}: ${tool} restore ${(await sha256File(restored)) === changedSha ? 'matches' : 'DOES NOT MATCH'} the changed image (sha256)`);
    await removeRestores();
  }
  console.log(`  round ${round} ${tool.padEnd(8)} ${ph.padEnd(7)} ${run.wall.toFixed(1)} s, ${f.mbPerSecond.toFixed(0)} MB/s, cpu ${run.cpu?.toFixed(1) ?? '?'} s, rss ${run.rssMiB?.toFixed(0) ?? '?'} MiB${run.rssAtStartMiB !== undefined ? ` (${run.rssAtStartMiB.toFixed(0)} at its start)` : ''}, ${requests} requests${bytesStored !== null ? `, ${(bytesStored / MiB).toFixed(1)} MiB stored` : ''}`);
}

const chunkKiB = Number(process.env.BENCH_CHUNK_KIB ?? 512);
const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;
console.log(`  Lifeboat: ${chunkKiB} KiB chunks, ${defaultPoolSize()} chunk worker(s), 8 chunks in flight, at most 16 requests at once, ${hasQemuImg ? "the image's holes mapped by qemu-img (not read)" : 'qemu-img MISSING: every byte read (apt-get install qemu-utils)'}; restic: --compression auto, repository v2, --stdin`);
const checks: string[] = [];
/** The round's mover process, and how long each round's took to start. */
let mover: BenchMover | undefined;
const moverStarts: BenchMover['start'][] = [];
try {
  for (const round of ROUNDS) {
    roundResults.push({ full: {}, incr: {}, restore: {} });
    // Started as a mover is (mover/start-settings.ts), its compile cache kept between starts as a mover's is.
    mover = await startBenchMover({ endpoint, bucket: bucketOf('lifeboat', round), keyFile, compileCacheDir: join(dir, 'compile-cache') });
    moverStarts.push(mover.start);
    console.log(`  round ${round}: Lifeboat mover started in ${mover.start.seconds.toFixed(2)} s (peak RSS ${mover.start.peakRssMiB.toFixed(0)} MiB), once for the round's jobs`);
    const order = round % 2 === 1 ? (['lifeboat', 'restic'] as const) : (['restic', 'lifeboat'] as const);
    if (hasRestic) {
      const bucket = bucketOf('restic', round);
      const reqBefore = s3.requests.get(bucket) ?? 0;
      await timed('restic', ['init', '--repository-version', '2'], { env: resticEnv(round) });
      storedAfter[`${bucket}-init`] = (await bucketBytes(bucket)).bytes;
      console.log(`  round ${round}: restic init ${(s3.requests.get(bucket) ?? 0) - reqBefore} requests (not counted in the phases); ${order[0] === 'lifeboat' ? 'Lifeboat' : 'restic'} goes first`);
    }
    for (const ph of ['full', 'incr', 'restore'] as const) {
      for (const tool of order) if (tool === 'lifeboat' || hasRestic) await phase(tool, ph, round);
    }
    await mover.close();
    mover = undefined;
  }
} finally {
  await mover?.close().catch(() => {});
  await link?.close();
  await s3.close();
}

// The table: each figure's mean over the rounds.
const metrics: [keyof Figures, string, number][] = [
  ['wallSeconds', 'wall s', 1], ['mbPerSecond', 'MB/s', 0], ['cpuSeconds', 'CPU s', 1], ['peakRssMiB', 'peak RSS MiB', 0], ['bytesStored', 'stored MiB', 1], ['requests', 'requests', 0],
];
const mean = (xs: (number | null | undefined)[]): number | null | undefined => (xs.some((x) => x == null) ? xs.find((x) => x == null) : xs.reduce<number>((a, x) => a + x!, 0) / xs.length);
const results = Object.fromEntries((['full', 'incr', 'restore'] as const).map((ph) => [ph, Object.fromEntries((['lifeboat', 'restic'] as const)
  .filter((tool) => roundResults.every((r) => r[ph][tool]))
  .map((tool) => [tool, Object.fromEntries(metrics.map(([k]) => [k, mean(roundResults.map((r) => r[ph][tool]![k] as number | null))]))]))])) as unknown as Results;
const fmt = (v: number | null | undefined, d = 1) => (v === null || v === undefined ? '-' : v.toFixed(d));
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || b === 0 ? '-' : (a / b).toFixed(2));
const figure = (r: Results, ph: Phase, tool: 'lifeboat' | 'restic', k: keyof Figures) => r[ph][tool]?.[k] as number | null | undefined;
const rows: string[][] = [['phase', 'figure', 'Lifeboat', 'restic', 'Lifeboat/restic']];
for (const ph of ['full', 'incr', 'restore'] as const) {
  for (const [k, label, d] of metrics) {
    if (ph === 'restore' && k === 'bytesStored') continue;
    const scale = k === 'bytesStored' ? 1 / MiB : 1;
    const l = figure(results, ph, 'lifeboat', k);
    const r = figure(results, ph, 'restic', k);
    rows.push([ph, label, fmt(l == null ? l : l * scale, d), fmt(r == null ? r : r * scale, d), ratio(l, r)]);
  }
}
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
const line = (r: string[]) => '| ' + r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
console.log('\n' + line(rows[0]!));
console.log('|' + widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
for (const r of rows.slice(1)) console.log(line(r));
const startMean = { seconds: mean(moverStarts.map((m) => m.seconds))!, peakRssMiB: mean(moverStarts.map((m) => m.peakRssMiB))! };
console.log(`Lifeboat's mover start, once per process and in none of the phases above: ${startMean.seconds.toFixed(2)} s, peak RSS ${startMean.peakRssMiB.toFixed(0)} MiB.`);

/** The issue's targets: each on the means, with each round's ratio beside it. */
const targetsOf: { target: string; ph: Phase; k: keyof Figures; ok: (l: number, r: number) => boolean }[] = [
  { target: 'full backup throughput >= 2x restic', ph: 'full', k: 'mbPerSecond', ok: (l, r) => l >= 2 * r },
  { target: 'incremental throughput >= 3x restic', ph: 'incr', k: 'mbPerSecond', ok: (l, r) => l >= 3 * r },
  { target: 'restore throughput >= 1.3x restic', ph: 'restore', k: 'mbPerSecond', ok: (l, r) => l >= 1.3 * r },
  { target: 'full bytes stored <= restic + 2%', ph: 'full', k: 'bytesStored', ok: (l, r) => l <= 1.02 * r },
  { target: 'incremental bytes stored <= half of restic', ph: 'incr', k: 'bytesStored', ok: (l, r) => l <= 0.5 * r },
];
const targets = targetsOf.map(({ target, ph, k, ok }) => {
  const l = figure(results, ph, 'lifeboat', k);
  const r = figure(results, ph, 'restic', k);
  return { target, ratio: l != null && r ? l / r : null, met: l != null && r != null ? ok(l, r) : null };
});
console.log(`\nTargets (on the means of ${rounds} round(s); each round's ratio in brackets):`);
targets.forEach((x, i) => {
  const { ph, k } = targetsOf[i]!;
  const each = roundResults.map((r) => ratio(figure(r, ph, 'lifeboat', k), figure(r, ph, 'restic', k))).join(', ');
  console.log(`  ${x.met === null ? 'n/a    ' : x.met ? 'met    ' : 'NOT met'}  ${x.target} (Lifeboat/restic = ${x.ratio === null ? '-' : x.ratio.toFixed(2)} [${each}])`);
});
for (const c of checks) console.log(`  check: ${c}`);

const restic = hasRestic ? spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.trim() : null;
await writeFile(join(dir, 'results.json'), JSON.stringify({
  at: new Date().toISOString(), sizeMiB, sizeBytes: img.sizeBytes, changedBytes: img.changedBytes, mix: img.mix, cores: cpus().length, restic,
  settings: { lifeboat: { chunkSize: chunkKiB * 1024, parallelism: 8, chunkWorkers: defaultPoolSize(), packBytes: 8 * 1024 * 1024, holesMapped: hasQemuImg }, restic: { compression: 'auto', repositoryVersion: 2, stdin: true } },
  rounds, baseSha256: baseSha, changedSha256: changedSha, results, roundResults, moverStarts, targets, checks,
}, null, 2) + '\n');
console.log(`\nresults: ${join(dir, 'results.json')}`);
