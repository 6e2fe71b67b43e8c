/**
 * A running VM's backup against restic's, on the same guest: the lab guest (QEMU under
 * TCG through libvirt) keeps writing to a qcow2 disk of BENCH_VM_GIB GiB (default 4, half
 * of it data) while Lifeboat backs it up through the embedded stack (the Backup workflow,
 * one mover process), fully and then, once the guest has rewritten about 2% of the disk,
 * incrementally with changed-block tracking. restic backs up a snapshot of the same VM
 * taken the same way (a libvirt backup job; its export read by `nbdcopy` into
 * `restic backup --stdin`), its full before Lifeboat's full (so its writes are not
 * Lifeboat's changes) and its incremental after Lifeboat's, into the same S3 server.
 * Between the fulls and the incrementals the guest rewrites 2% of its disk in 64 KiB
 * blocks at random offsets (each dirties a whole chunk: the worst case for a chunk-based
 * changed-block read); a slow steady writer runs throughout, for its write latency.
 * Usage: npm run bench:vm  (as root, with libvirt and QEMU installed: bash .ci/run installs them)
 *
 * Printed: wall, CPU (the mover process; restic with nbdcopy), peak RSS, bytes read and
 * stored for both, the ratio, and the guest's average write latency (QEMU's own counters,
 * `virsh domblkstat`: write time / writes) while idle and during each backup.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runExecution, sfnClient } from '../local/client.ts';
import { startMover } from '../local/movers.ts';
import { startLocalS3 } from '../local/s3-server.ts';
import { EmbeddedStack } from '../local/stack.ts';
import { startLabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { LibvirtDriver } from '../mover/sources/libvirt/driver.ts';
import { guestExec } from '../mover/sources/libvirt/guest-agent.ts';
import { Virsh } from '../mover/sources/libvirt/virsh.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const root = fileURLToPath(new URL('..', import.meta.url));
const dir = join(root, '.lifeboat', 'bench-vm');
const sizeBytes = Number(process.env.BENCH_VM_GIB ?? 4) * GiB;
/** The guest's steady writer (for its write latency during the backups): low, so it adds little to the 2%. */
const writeKiBs = Number(process.env.BENCH_VM_WRITE_KIBS ?? 128);

const lab = await ensureLibvirtd();
if (!lab.available) {
  console.log(`bench:vm needs libvirt and QEMU: ${lab.reason}`);
  process.exit(2);
}
if (spawnSync('restic', ['version']).status !== 0) console.log('restic is not installed (apt-get install restic): Lifeboat alone');
await rm(dir, { recursive: true, force: true });

/** QEMU's write counters of the guest's disk. */
async function writeStats(domain: string): Promise<{ reqs: number; bytes: number; ns: number }> {
  const out = await virsh(['domblkstat', domain, 'vda']);
  const get = (k: string) => Number(new RegExp(`${k}\\s+(\\d+)`).exec(out)?.[1] ?? 0);
  return { reqs: get('wr_req'), bytes: get('wr_bytes'), ns: get('wr_total_times') };
}
const latencyMs = (a: { reqs: number; ns: number }, b: { reqs: number; ns: number }) => (b.reqs > a.reqs ? (b.ns - a.ns) / (b.reqs - a.reqs) / 1e6 : NaN);

/** CPU seconds (all threads and children) and the peak RSS since the last reset of a process. */
async function procFigures(pid: number): Promise<{ cpu: number; hwmMiB: number }> {
  const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  const ticks = [11, 12, 13, 14].reduce((n, i) => n + Number(stat[i]), 0);
  const hwm = Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  return { cpu: ticks / 100, hwmMiB: hwm / 1024 };
}

interface Figures {
  wall: number;
  cpu: number;
  rssMiB: number;
  read: number;
  stored: number;
  latencyMs: number;
  phases?: string;
}

/** Seconds spent in each of a VM's steps, from the execution's history as the embedded stack writes it. */
async function phases(executionArn: string): Promise<string> {
  const file = join(dir, 'stack', 'executions', `${executionArn.split(':').slice(-2).join('--')}.history.jsonl`);
  const events = (await readFile(file, 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; timestamp: number; state?: { name: string } });
  const entered = new Map<string, number>();
  const spent: string[] = [];
  for (const ev of events) {
    const name = ev.state?.name;
    if (!name) continue;
    if (ev.type === 'StateEntered') entered.set(name, ev.timestamp);
    else if (ev.type === 'StateExited' && /^(Snapshot|DispatchDisk|ReleaseSnapshot|Verify|Commit) \(|^(Verify|Commit)$/.test(name))
      spent.push(`${name.replace(/ \(.*/, '')} ${((ev.timestamp - entered.get(name)!) / 1000).toFixed(1)} s`);
  }
  return spent.join(', ');
}

const stack = await EmbeddedStack.start({ dataDir: join(dir, 'stack') });
const e = stack.endpoints;
const mover = startMover(e, { name: 'bench-mover', group: 'site-a', env: { LIFEBOAT_WORK_DIR: join(dir, 'work') } });
const s3 = await startLocalS3({ directory: join(dir, 'restic-s3'), buckets: ['restic-vm'] });
const resticEnv = {
  ...process.env,
  RESTIC_REPOSITORY: `s3:${s3.url}/restic-vm`,
  RESTIC_PASSWORD: 'bench',
  AWS_ACCESS_KEY_ID: 'S3RVER',
  AWS_SECRET_ACCESS_KEY: 'S3RVER',
  RESTIC_CACHE_DIR: join(dir, 'restic-cache'),
};
const name = `lifeboat-bench-${process.pid}`;
console.log(`bench:vm: a ${sizeBytes / GiB} GiB qcow2 disk (half of it random data), the guest writing ${writeKiBs} KiB/s under TCG; preparing ...`);
const vm = await startLabVm({
  dir: join(dir, 'vm'),
  cacheDir: join(root, '.lifeboat', 'cache'),
  name,
  sizeBytes,
  dataBytes: sizeBytes / 2,
  behaviour: { mode: 'write', writeKiBs, freezeHash: false },
});
try {
  await stack.catalog.putVm({ vmId: name, host: 'kvm-01', source: name });
  await stack.catalog.putPolicy({
    policyId: 'bench-vm',
    vmIds: [name],
    bucket: e.bucket,
    chunkSize: stack.config.repositories[0]!.chunkSizeMiB * MiB,
    slotLimit: 1,
  });
  // Not spawnSync: the S3 server restic talks to runs on this process's event loop.
  await new Promise<void>((ok, fail) =>
    spawn('restic', ['init'], { env: resticEnv, stdio: 'ignore' }).on('exit', (c) => (c === 0 ? ok() : fail(new Error(`restic init exited ${c}`)))),
  );
  const sfn = sfnClient(e);
  const driver = new LibvirtDriver({ uri: 'qemu:///system', workDir: join(dir, 'restic-work') });

  const idleFrom = await writeStats(name);
  await new Promise((r) => setTimeout(r, 10_000));
  const idle = latencyMs(idleFrom, await writeStats(name));

  const lifeboat = async (): Promise<Figures> => {
    await import('node:fs/promises').then((fs) => fs.writeFile(`/proc/${mover.child.pid}/clear_refs`, '5'));
    const before = await procFigures(mover.child.pid!);
    const w0 = await writeStats(name);
    const started = performance.now();
    const d = await runExecution(sfn, e.backupStateMachineArn, { policyId: 'bench-vm' });
    const wall = (performance.now() - started) / 1000;
    const run = JSON.parse(d.output ?? '{}') as RunSummary;
    if (d.status !== 'SUCCEEDED' || run.failed) throw new Error(`Lifeboat backup failed: ${d.cause ?? JSON.stringify(run.vms)}`);
    const after = await procFigures(mover.child.pid!);
    return {
      wall,
      cpu: after.cpu - before.cpu,
      rssMiB: after.hwmMiB,
      read: run.totals.bytesRead ?? 0,
      stored: run.totals.bytesStored,
      latencyMs: latencyMs(w0, await writeStats(name)),
      phases: await phases(d.executionArn!),
    };
  };

  const restic = async (label: string): Promise<Figures> => {
    const parent = (await stack.catalog.latestCommitted(name))?.checkpoint ?? null;
    // Its own snapshot of the VM, taken the same way; Lifeboat's checkpoint is kept.
    const snap = await driver.snapshot({ source: name, backupId: `restic-${label}`, parentCheckpoint: parent });
    const uri = decodeURIComponent(snap.disks[0]!.path);
    const w0 = await writeStats(name);
    const started = performance.now();
    const out = await new Promise<string>((ok, fail) => {
      const child = spawn(
        '/usr/bin/time',
        ['-f', 'TIME %e %U %S %M', 'sh', '-c', `nbdcopy '${uri}' - | restic backup --json --compression auto --host bench --stdin --stdin-filename vda.raw`],
        { env: resticEnv },
      );
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.stderr.on('data', (d) => (text += d));
      child.on('exit', (code) => (code === 0 ? ok(text) : fail(new Error(`restic backup exited ${code}: ${text.slice(-500)}`))));
    });
    const wall = (performance.now() - started) / 1000;
    const latency = latencyMs(w0, await writeStats(name));
    await driver.release({ source: name }, snap);
    const [, , user, sys, rssKiB] = /TIME (\S+) (\S+) (\S+) (\d+)/.exec(out)!;
    const summary = JSON.parse(out.split('\n').find((l) => l.includes('"message_type":"summary"')) ?? '{}') as { data_added?: number };
    return { wall, cpu: Number(user) + Number(sys), rssMiB: Number(rssKiB) / 1024, read: sizeBytes, stored: summary.data_added ?? NaN, latencyMs: latency };
  };

  // restic's full first: the guest's writes during it must not count as Lifeboat's changes.
  console.log('full backups ...');
  const rFull = await restic('full');
  const lbFull = await lifeboat();
  const w0 = await writeStats(name);
  // The guest itself rewrites 2% of its disk, 64 KiB blocks at random offsets (the worst
  // case for chunked changed-block reads: each dirties a whole chunk), through the agent.
  const blocks = Math.round((0.02 * sizeBytes) / (64 * 1024));
  console.log(`the guest rewrites about 2% of the disk (${blocks} blocks of 64 KiB at random offsets) ...`);
  const burst = `n=0; b=$(($(cat /sys/block/vda/size) / 128)); while [ $n -lt ${blocks} ]; do dd if=/dev/urandom of=/dev/vda bs=65536 seek=$(((RANDOM * 32768 + RANDOM) % b)) count=1 conv=notrunc 2>/dev/null; n=$((n + 1)); done; sync /dev/vda`;
  const r = await guestExec(new Virsh('qemu:///system'), name, ['/bin/sh', '-c', burst], 1800);
  if (r.exitCode !== 0) throw new Error(`the guest's rewrite failed: ${r.stderr}`);
  console.log('incremental backups ...');
  const lbIncr = await lifeboat();
  const rIncr = await restic('incr');

  const row = (label: string, f: Figures) =>
    `${label.padEnd(24)} ${f.wall.toFixed(1).padStart(7)} ${(sizeBytes / MiB / f.wall).toFixed(0).padStart(9)} ${f.cpu.toFixed(1).padStart(7)} ${f.rssMiB.toFixed(0).padStart(8)} ${(f.read / MiB).toFixed(0).padStart(9)} ${(f.stored / MiB).toFixed(1).padStart(10)} ${f.latencyMs.toFixed(2).padStart(12)}`;
  console.log(`\nguest write latency while idle: ${idle.toFixed(2)} ms a write (QEMU's counters)`);
  console.log(
    `${'backup'.padEnd(24)} ${'wall s'.padStart(7)} ${'MiB/s*'.padStart(9)} ${'CPU s'.padStart(7)} ${'RSS MiB'.padStart(8)} ${'read MiB'.padStart(9)} ${'stored MiB'.padStart(10)} ${'write ms'.padStart(12)}`,
  );
  console.log(row('Lifeboat full', lbFull));
  console.log(row('restic full', rFull));
  console.log(row('Lifeboat CBT incremental', lbIncr));
  console.log(row('restic incremental', rIncr));
  console.log(`* logical throughput: disk size / wall. Lifeboat includes its whole workflow (plan, slot, snapshot, verify, commit).`);
  console.log(`Lifeboat full, its steps: ${lbFull.phases}`);
  console.log(`Lifeboat incremental, its steps: ${lbIncr.phases}`);
  console.log(
    `load average at the end (this machine has ${availableParallelism()} cores): ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  console.log(
    `ratio, incremental logical throughput Lifeboat/restic: ${(rIncr.wall / lbIncr.wall).toFixed(1)}x (target 20x); full: ${(rFull.wall / lbFull.wall).toFixed(2)}x`,
  );
  console.log(
    `Lifeboat's incremental read ${(lbIncr.read / MiB).toFixed(0)} MiB of ${(sizeBytes / MiB).toFixed(0)} MiB; the guest wrote ${(((await writeStats(name)).bytes - w0.bytes) / MiB) | 0} MiB since the full backup`,
  );
} finally {
  await vm.remove();
  await mover.stop();
  await stack.stop();
  await s3.close();
}
