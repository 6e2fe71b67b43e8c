/**
 * Sequential read throughput of a backup served over NBD (mover/recovery/export.ts) against
 * a full restore of the same disk, in the same run, each in a process of its own as a mover
 * runs them: the export is the instant recovery's export process
 * (mover/recovery/export-process-main.ts), read whole by `nbdcopy` to null: twice (a fresh
 * process, then again on the same process: its cache and read-ahead warm); the restore is
 * restoreDisk into a file (bench/restore-child.ts). The repository is the embedded stack's
 * S3 server, in this process. Rounds alternate which goes first. Each line carries the
 * machine's load; the export's line its GETs, the bytes it downloaded against the disk's
 * stored bytes, and the export process's peak RSS.
 * Prints figures; asserts nothing.
 * Usage: npx node bench/export.ts
 *   BENCH_EXPORT_MIB        disk size (default 512)
 *   BENCH_EXPORT_ROUNDS     rounds (default 2)
 *   BENCH_EXPORT_READ_AHEAD read-ahead settings compared, in chunks (default 16)
 *   BENCH_EXPORT_NBDCOPY    extra nbdcopy arguments, e.g. '--connections=1 --requests=1' (a sequential reader such as a booting guest)
 *   BENCH_EXPORT_FROM       checkouts whose export process runs, comma-separated (default: this one; e.g. .,/work/main: A against B)
 *   BENCH_EXPORT_RESTORE_FROM  checkouts whose restore is the peer, comma-separated (default: this one; e.g. .,/work/main)
 *   BENCH_EXPORT_NODE_FLAGS Node flags of the export process, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'
 *   BENCH_RTT_MS            puts the repository that round trip away (bench/delayed-link.ts)
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { exportJob, exportResult } from '../contracts/export-job.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover } from '../local/movers.ts';
import { EmbeddedStack, openRepository } from '../local/stack.ts';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';
import { readerEntries } from '../repository/read-runs.ts';
import { startDelayedLink } from './delayed-link.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_EXPORT_MIB ?? 512);
const rounds = Number(process.env.BENCH_EXPORT_ROUNDS ?? 2);
const rttMs = Number(process.env.BENCH_RTT_MS ?? 0);
const readAheads = (process.env.BENCH_EXPORT_READ_AHEAD ?? '16').split(',').map(Number);
const nbdcopyArgs = (process.env.BENCH_EXPORT_NBDCOPY ?? '').split(' ').filter(Boolean);
const exportRoots = (process.env.BENCH_EXPORT_FROM ?? '.').split(',').map((r) => resolve(r));
const restoreRoots = (process.env.BENCH_EXPORT_RESTORE_FROM ?? '.').split(',').map((r) => resolve(r));
const nodeFlags = [...MOVER_NODE_FLAGS, ...(process.env.BENCH_EXPORT_NODE_FLAGS ?? '').split(' ').filter(Boolean)];
const RESTORE_CHILD = fileURLToPath(new URL('./restore-child.ts', import.meta.url));
const dir = join(tmpdir(), `lifeboat-bench-export-${process.pid}`);
const out = (line: string) => process.stdout.write(`${line}\n`);
const load = () => `load ${loadavg()[0]!.toFixed(1)}`;
const rate = (s: number) => `${(sizeMiB / s).toFixed(1)} MiB/s`;

const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
const e = stack.endpoints;
const mover = startMover(e, {
  name: 'a-1',
  group: 'site-a',
  onLog: (l) => {
    if (l.level === 'error') process.stderr.write(`mover: ${JSON.stringify(l)}\n`);
  },
});

/** The stored bytes of the disk's chunks (each stored chunk once), from its manifest. */
async function storedBytes(backupId: string): Promise<number> {
  const reader = await (await openRepository(e)).openManifest(backupId, 'disk0');
  const seen = new Set<string>();
  let n = 0;
  for await (const x of readerEntries(reader!)) {
    if (x.id === null || seen.has(x.id)) continue;
    seen.add(x.id);
    n += x.storedSize;
  }
  return n;
}

/** A mover's environment (its allocator settings, mover/start-settings.ts), reaching the repository at `s3`. */
const childEnv = (s3: string) => ({
  ...process.env,
  ...moverStartEnv(join(dir, 'compile-cache')),
  LIFEBOAT_S3_ENDPOINT: s3,
  LIFEBOAT_KEY_FILE: e.keyFile,
});

/** CPU seconds of every thread of process `pid` so far (utime + stime). */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // clock ticks (USER_HZ, 100 on Linux)
}

/** The export process's peak RSS so far (VmHWM), in MiB. */
async function peakRssMiB(pid: number): Promise<number> {
  return Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

async function waitForFile(path: string, child: { exitCode: number | null }, what: string): Promise<string> {
  for (;;) {
    const text = await readFile(path, 'utf8').catch(() => undefined);
    if (text) return text;
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}) before writing ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One export process: `nbdcopy` reads the disk twice through it; its stats from its log. */
async function exportRound(backupId: string, s3: string, root: string, readAheadChunks: number, round: number) {
  const folder = join(dir, `export-${round}-${readAheadChunks}`);
  await mkdir(folder, { recursive: true });
  const job = exportJob.parse({
    exportId: `bench-${round}`,
    vmId: 'vm-e',
    backupId,
    repository: { bucket: e.bucket },
    diskIds: ['disk0'],
    listen: { socket: join(folder, 'nbd.sock') },
    readAheadChunks,
    idleTimeoutSeconds: 3600,
  });
  await writeFile(join(folder, 'export.json'), JSON.stringify(job));
  const child = spawn(process.execPath, [...nodeFlags, join(root, 'mover/recovery/export-process-main.ts'), folder], {
    env: childEnv(s3),
    stdio: 'ignore',
  });
  const exited = new Promise((ok) => child.once('exit', ok));
  try {
    const ready = JSON.parse(await waitForFile(join(folder, 'export.ready.json'), child, 'the export process')) as { uris: Record<string, string> };
    const passes: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < 2; i++) {
      const [t0, c0] = [performance.now(), await cpuSeconds(child.pid!)];
      await run('nbdcopy', [...nbdcopyArgs, ready.uris.disk0!, 'null:']);
      passes.push((performance.now() - t0) / 1000);
      cpu.push((await cpuSeconds(child.pid!)) - c0);
    }
    const peak = await peakRssMiB(child.pid!);
    child.kill('SIGTERM');
    await exited;
    const result = exportResult.parse(JSON.parse(await readFile(join(folder, 'export.result.json'), 'utf8')));
    const log = (await readFile(join(folder, 'export.log'), 'utf8')).split('\n').filter(Boolean);
    const disk = log.map((l) => JSON.parse(l) as Record<string, number>).find((l) => (l.event as unknown) === 'export.disk.closed') ?? {};
    return { passes, cpu, peak, result, gets: disk.gets ?? NaN };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await rm(folder, { recursive: true, force: true });
  }
}

/** One full restore by the restore of checkout `root`, in a process of its own. */
async function restoreRound(backupId: string, s3: string, root: string) {
  const target = join(dir, 'restored.raw');
  try {
    const { stdout } = await run(process.execPath, [...MOVER_NODE_FLAGS, RESTORE_CHILD, root, e.bucket, backupId, 'disk0', target], {
      env: childEnv(s3),
    });
    return JSON.parse(stdout.trim().split('\n').pop()!) as { seconds: number; cpuSeconds: number; peakRssMiB: number };
  } finally {
    await rm(target, { force: true });
  }
}

try {
  const vmDir = join(dir, 'vms', 'vm-e');
  await createVmFolder(vmDir, { name: 'vm-e', disks: [{ id: 'disk0', sizeBytes: sizeMiB * MiB }] }, seededRng(51));
  await stack.catalog.putVm({ vmId: 'vm-e', host: 'esx-01', source: vmDir });
  await stack.catalog.putPolicy({ policyId: 'p-e', vmIds: ['vm-e'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
  const t0 = performance.now();
  const d = await runExecution(sfnClient(e), e.backupStateMachineArn, { policyId: 'p-e' }, { pollMs: 100 });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup ${d.status}: ${d.error} ${d.cause}`);
  await mover.stop(true);
  const backupId = (await stack.catalog.latestCommitted('vm-e'))!.backupId;
  const stored = await storedBytes(backupId);
  out(`disk ${sizeMiB} MiB, 1 MiB chunks, ${(stored / MiB).toFixed(0)} MiB stored; backup ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const link = rttMs > 0 ? await startDelayedLink(e.s3, rttMs) : undefined;
  const s3 = link?.url ?? e.s3;
  out(`repository ${link ? `${rttMs} ms round trip away (emulated)` : 'on loopback'}; nbdcopy ${nbdcopyArgs.join(' ') || '(its defaults)'}`);
  const sums = new Map<string, number[]>();
  const note = (k: string, s: number) => sums.set(k, [...(sums.get(k) ?? []), s]);
  for (let i = 0; i < rounds; i++) {
    // Taking turns going first: on a shared machine the later runs pay for the earlier ones.
    const jobs = [...exportRoots.flatMap((ex) => readAheads.map((ra) => ({ ex, ra }))), ...restoreRoots.map((root) => ({ root }))];
    for (const j of i % 2 ? jobs.reverse() : jobs) {
      if ('ra' in j) {
        const x = await exportRound(backupId, s3, j.ex, j.ra, i);
        note(`export (${j.ex}) ra ${j.ra} fresh`, x.passes[0]!);
        note(`export (${j.ex}) ra ${j.ra} again`, x.passes[1]!);
        out(
          `round ${i + 1} export (${j.ex}), read-ahead ${j.ra || 'off'}: fresh ${x.passes[0]!.toFixed(2)} s = ${rate(x.passes[0]!)} (CPU ${x.cpu[0]!.toFixed(1)} s), again ${x.passes[1]!.toFixed(2)} s = ${rate(x.passes[1]!)} (CPU ${x.cpu[1]!.toFixed(1)} s); ` +
            `${x.gets} GETs, downloaded ${(x.result.bytesDownloaded / MiB).toFixed(0)} MiB = ${(x.result.bytesDownloaded / stored).toFixed(2)}× stored over both passes; peak RSS ${x.peak.toFixed(0)} MiB  (${load()})`,
        );
      } else {
        const r = await restoreRound(backupId, s3, j.root!);
        note(`restore ${j.root}`, r.seconds);
        out(
          `round ${i + 1} restore (${j.root}): ${r.seconds.toFixed(2)} s = ${rate(r.seconds)}, CPU ${r.cpuSeconds.toFixed(1)} s, peak RSS ${r.peakRssMiB.toFixed(0)} MiB  (${load()})`,
        );
      }
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  const peer = mean(sums.get(`restore ${restoreRoots[0]}`)!);
  for (const [k, xs] of sums)
    out(`${k}, ${xs.length} rounds: ${rate(mean(xs))}, ${(peer / mean(xs)).toFixed(2)}× the speed of the restore of ${restoreRoots[0]}  (${load()})`);
} finally {
  await mover.stop(true);
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
