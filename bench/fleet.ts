/**
 * Fleet benchmarks on the embedded stack, with real mover processes (a script, not a test).
 *
 *   npm run bench:fleet -- segments   one large disk: 1 mover against 3 movers of one group
 *   npm run bench:fleet -- scale      300 small VMs across 3 groups and 6 movers
 *
 * Settings: BENCH_FLEET_DISK_MIB (segments, default 1024), BENCH_FLEET_SEGMENT_MIB (256),
 * BENCH_FLEET_LINK_MBPS (segments, default 10: the second round gives each mover its own
 * uplink of this many MB/s, as appliances at a site each have theirs; the first round is
 * unlimited, so all movers share this machine's two cores),
 * BENCH_FLEET_VMS (scale, default 300), BENCH_FLEET_VM_CONCURRENCY (scale, default 30).
 * Each phase runs on a fresh stack, so no phase deduplicates against another.
 */
import { readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LifeboatConfig } from '../core/config.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover, type MoverProcess } from '../local/movers.ts';
import { EmbeddedStack } from '../local/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const root = resolve(fileURLToPath(new URL('..', import.meta.url)), '.lifeboat', 'bench-fleet');
const num = (name: string, fallback: number) => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive whole number, got '${process.env[name]}'`);
  return v;
};

interface HistoryEvent {
  type: string;
  timestamp: number;
  state?: { name: string; input?: { vmId?: string } };
}

async function readHistory(stack: EmbeddedStack, executionArn: string): Promise<HistoryEvent[]> {
  const name = executionArn.split(':').pop()!;
  const file = join(stack.endpoints.dataDir, 'executions', `${stack.endpoints.backupStateMachineArn.split(':').pop()}--${name}.history.jsonl`);
  return (await readFile(file, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as HistoryEvent);
}

/** Starts a stack with `config` in a fresh folder, and movers per group. */
async function fleet(name: string, config: LifeboatConfig, movers: Record<string, number>, slots: number, env: Record<string, string> = {}) {
  const dataDir = join(root, name);
  await rm(dataDir, { recursive: true, force: true });
  const stack = await EmbeddedStack.start({ dataDir, config });
  const procs: MoverProcess[] = [];
  for (const [group, n] of Object.entries(movers)) {
    for (let i = 1; i <= n; i++) procs.push(startMover(stack.endpoints, { name: `${group}-mover-${i}`, group, slots, env }));
  }
  return {
    stack, dataDir,
    close: async () => {
      await Promise.all(procs.map((p) => p.stop()));
      await stack.stop();
    },
  };
}

const baseConfig = (groups: { id: string; hosts: string[] }[], hostLimit: number, vmConcurrency: number): LifeboatConfig => ({
  sites: [{ id: 'bench' }],
  moverGroups: groups.map((g) => ({ id: g.id, site: 'bench', hosts: g.hosts })),
  hosts: groups.flatMap((g) => g.hosts).map((id) => ({ id, maxConcurrentBackups: hostLimit })),
  repositories: [{ id: 'primary', chunkSizeMiB: 1 }],
  policies: [],
  backup: { vmConcurrency, dispatchConcurrency: 16 },
});

async function segments(): Promise<void> {
  const diskMiB = num('BENCH_FLEET_DISK_MIB', 1024);
  const segmentMiB = num('BENCH_FLEET_SEGMENT_MIB', 256);
  const config = baseConfig([{ id: 'site-a', hosts: ['esx-01'] }], 1, 1);
  const vmDir = join(root, 'vm-large');
  await rm(vmDir, { recursive: true, force: true });
  process.stdout.write(`Creating a VM with one ${diskMiB} MiB disk (zero runs, text, random data) ...\n`);
  await createVmFolder(vmDir, { name: 'vm-large', disks: [{ id: 'disk0', sizeBytes: diskMiB * MiB }] }, seededRng(42));
  const linkMBps = num('BENCH_FLEET_LINK_MBPS', 10);
  const rows: { link: string; movers: number; seconds: number; mbps: number; stored: number }[] = [];
  for (const [link, env] of [['shared CPU, no link limit', {}], [`${linkMBps} MB/s uplink per mover`, { LIFEBOAT_BANDWIDTH_LIMIT: String(linkMBps * 1e6) }]] as const) for (const movers of [1, 3]) {
    const f = await fleet(`segments-${movers}`, config, { 'site-a': movers }, 1, env);
    try {
      await f.stack.catalog.putVm({ vmId: 'vm-large', host: 'esx-01', source: vmDir });
      await f.stack.catalog.putPolicy({ policyId: 'large', vmIds: ['vm-large'], bucket: f.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1, segmentBytes: segmentMiB * MiB });
      const started = performance.now();
      const d = await runExecution(sfnClient(f.stack.endpoints), f.stack.endpoints.backupStateMachineArn, { policyId: 'large' }, { pollMs: 200 });
      const seconds = (performance.now() - started) / 1000;
      if (d.status !== 'SUCCEEDED') throw new Error(`backup with ${movers} mover(s) ended ${d.status}: ${d.error} ${d.cause}`);
      const s = JSON.parse(d.output!) as RunSummary;
      if (s.committed !== 1) throw new Error(`backup with ${movers} mover(s) committed ${s.committed} VMs`);
      rows.push({ link, movers, seconds, mbps: (diskMiB * MiB) / 1e6 / seconds, stored: s.totals.bytesStored / MiB });
      process.stdout.write(`  ${link}, ${movers} mover(s): ${seconds.toFixed(1)} s\n`);
    } finally {
      await f.close();
    }
  }
  process.stdout.write(`\nOne ${diskMiB} MiB disk in ${Math.ceil(diskMiB / segmentMiB)} segments of ${segmentMiB} MiB, one slot per mover (whole Backup execution, wall time):\n`);
  process.stdout.write('| movers\' links | movers | seconds | MB/s scanned | MiB stored | speedup |\n|---|---:|---:|---:|---:|---:|\n');
  for (const r of rows) {
    const one = rows.find((x) => x.link === r.link && x.movers === 1)!;
    process.stdout.write(`| ${r.link} | ${r.movers} | ${r.seconds.toFixed(1)} | ${r.mbps.toFixed(0)} | ${r.stored.toFixed(1)} | ${(one.seconds / r.seconds).toFixed(2)}x |\n`);
  }
}

async function scale(): Promise<void> {
  const vmCount = num('BENCH_FLEET_VMS', 300);
  const vmConcurrency = num('BENCH_FLEET_VM_CONCURRENCY', 30);
  const groups = [1, 2, 3].map((g) => ({ id: `group-${g}`, hosts: [`esx-${g}1`, `esx-${g}2`] }));
  const config = baseConfig(groups, 2, vmConcurrency);
  const f = await fleet('scale', config, Object.fromEntries(groups.map((g) => [g.id, 2])), 2);
  try {
    process.stdout.write(`Creating ${vmCount} VMs with one 1 MiB disk each on ${groups.length * 2} hosts ...\n`);
    const hosts = groups.flatMap((g) => g.hosts);
    const vmIds: string[] = [];
    for (let i = 0; i < vmCount; i++) {
      const vmId = `vm-${String(i).padStart(3, '0')}`;
      const dir = join(f.dataDir, 'vms', vmId);
      await createVmFolder(dir, { name: vmId, disks: [{ id: 'disk0', sizeBytes: MiB }] }, seededRng(1000 + i));
      await f.stack.catalog.putVm({ vmId, host: hosts[i % hosts.length]!, source: dir });
      vmIds.push(vmId);
    }
    await f.stack.catalog.putPolicy({ policyId: 'scale', vmIds, bucket: f.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });
    const cpu0 = process.cpuUsage();
    const started = performance.now();
    const d = await runExecution(sfnClient(f.stack.endpoints), f.stack.endpoints.backupStateMachineArn, { policyId: 'scale' }, { pollMs: 500 });
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpu0);
    if (d.status !== 'SUCCEEDED') throw new Error(`the scale run ended ${d.status}: ${d.error} ${d.cause}`);
    const s = JSON.parse(d.output!) as RunSummary;
    const history = await readHistory(f.stack, d.executionArn!);
    const entered = history.filter((e) => e.type === 'StateEntered').length;
    // Slot wait: AcquireSlot entered → exited, per VM (retries while the host is full included).
    const enteredAt = new Map<string, number>();
    let longestWait = 0;
    let waitSum = 0;
    for (const e of history) {
      if (e.state?.name !== 'AcquireSlot' || !e.state.input?.vmId) continue;
      if (e.type === 'StateEntered' && !enteredAt.has(e.state.input.vmId)) enteredAt.set(e.state.input.vmId, e.timestamp);
      if (e.type === 'StateExited') {
        const w = (e.timestamp - enteredAt.get(e.state.input.vmId)!) / 1000;
        longestWait = Math.max(longestWait, w);
        waitSum += w;
      }
    }
    const retried = history.filter((e) => e.type === 'StateRetried' && e.state?.name === 'AcquireSlot').length;
    process.stdout.write(`\nScale run: ${vmCount} VMs, ${groups.length} groups, 6 movers (2 slots each), 6 hosts (2 backups each), ${vmConcurrency} VMs at once:\n`);
    process.stdout.write('| figure | value |\n|---|---:|\n');
    process.stdout.write(`| VMs committed / failed | ${s.committed} / ${s.failed} |\n`);
    process.stdout.write(`| wall time | ${seconds.toFixed(1)} s (${((seconds * 1000) / vmCount).toFixed(0)} ms per VM) |\n`);
    process.stdout.write(`| state transitions per VM | ${(entered / vmCount).toFixed(1)} (${entered} StateEntered events) |\n`);
    process.stdout.write(`| control-plane CPU per VM | ${((cpu.user + cpu.system) / 1000 / vmCount).toFixed(1)} ms (embedded stack process: runner, handlers, dynalite, s3rver) |\n`);
    process.stdout.write(`| longest wait for a slot | ${longestWait.toFixed(1)} s (mean ${(waitSum / Math.max(1, enteredAt.size)).toFixed(1)} s, ${retried} AcquireSlot retries) |\n`);
  } finally {
    await f.close();
  }
}

const mode = process.argv[2];
if (mode === 'segments') await segments();
else if (mode === 'scale') await scale();
else {
  process.stderr.write('usage: npm run bench:fleet -- segments|scale\n');
  process.exit(2);
}
