/**
 * Fleet benchmarks on the embedded stack, with real mover processes (a script, not a test).
 *
 *   npm run bench:fleet -- segments   one large disk: 1 mover against 3 movers of one group
 *   npm run bench:fleet -- scale      1,000 small VMs, 20 hosts, 10 movers: wall time, transitions and history per VM, largest payload and history, slot waits, cost
 *   npm run bench:fleet -- cost       what a night costs: an incremental after a 2% change, counted per VM-backup and priced (bench/aws-prices.json)
 *
 * Settings: BENCH_FLEET_DISK_MIB (segments, default 1024), BENCH_FLEET_SEGMENT_MIB (256),
 * BENCH_FLEET_LINK_MBPS (segments, default 10: the second round gives each mover its own
 * uplink of this many MB/s, as appliances at a site each have theirs; the first round is
 * unlimited, so all movers share this machine's two cores),
 * BENCH_FLEET_VMS (scale, default 1000), BENCH_FLEET_HOSTS (20), BENCH_FLEET_MOVERS (10),
 * BENCH_FLEET_VM_CONCURRENCY (scale, default 2 per host), BENCH_FLEET_COST_VMS (cost, default 20),
 * BENCH_FLEET_COST_MIB (cost, disk size, default 64), BENCH_FLEET_COST_TARGET_GIB (100: the VM size
 * the S3 requests are scaled to), BENCH_FLEET_ALONE_VMS (scale and cost, default 5: VMs backed up one at a
 * time after the measured run, for each function's duration alone: bench/fleet-solo.ts).
 * Each phase runs on a fresh stack, so no phase deduplicates against another.
 */
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LifeboatConfig } from '../core/config.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import os from 'node:os';
import { lambdaInvocations } from '../local/lambdas.ts';
import { formatSlotFairness, slotFairness } from './slot-fairness.ts';
import { dynamodbUnits, gbSeconds, loadPrices, memoryGb, runExecutions, type PerVmBackup } from './fleet-usage.ts';
import { startMover, type MoverProcess } from '../local/movers.ts';
import { EmbeddedStack, observeSdkCalls } from '../local/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';
import { lambdaFunctions } from '../contracts/functions.ts';
import { PARENT_SAMPLE } from '../contracts/backup-steps.ts';
import { aloneDurations, gbSecondsAlone, type AloneDurations } from './fleet-solo.ts';
import { printCost } from './fleet-report.ts';

const MiB = 1024 * 1024;
/** The packs' target size (repository/pack-writer.ts), for the cost model of large VMs. */
const PACK_BYTES = 8 * MiB;
const root = resolve(fileURLToPath(new URL('..', import.meta.url)), '.lifeboat', 'bench-fleet');
const num = (name: string, fallback: number) => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive whole number, got '${process.env[name]}'`);
  return v;
};

/** Starts a stack with `config` in a fresh folder, and movers per group. */
/**
 * Loads every control-plane function's module before the timed run. The embedded stack runs
 * the functions in its own process and imports a module at its first invocation; compiling
 * one module graph (the SDK, Powertools) blocks the whole process for seconds on a loaded
 * machine, which stalls every execution at once, where in AWS each container's cold start
 * is its own. The stack imports the same URLs, so it finds them loaded.
 */
async function loadHandlerModules(): Promise<void> {
  for (const def of Object.values(lambdaFunctions)) await import(new URL(`../${def.entry}`, import.meta.url).href);
}

async function fleet(name: string, config: LifeboatConfig, movers: Record<string, number>, slots: number, env: Record<string, string> = {}) {
  const dataDir = join(root, name);
  await rm(dataDir, { recursive: true, force: true });
  const stack = await EmbeddedStack.start({ dataDir, config });
  const procs: MoverProcess[] = [];
  for (const [group, n] of Object.entries(movers)) {
    for (let i = 1; i <= n; i++) procs.push(startMover(stack.endpoints, { name: `${group}-mover-${i}`, group, slots, env }));
  }
  return {
    stack,
    dataDir,
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
  for (const [link, env] of [
    ['shared CPU, no link limit', {}],
    [`${linkMBps} MB/s uplink per mover`, { LIFEBOAT_BANDWIDTH_LIMIT: String(linkMBps * 1e6) }],
  ] as const)
    for (const movers of [1, 3]) {
      const f = await fleet(`segments-${movers}`, config, { 'site-a': movers }, 1, env);
      try {
        await f.stack.catalog.putVm({ vmId: 'vm-large', host: 'esx-01', source: vmDir });
        await f.stack.catalog.putPolicy({
          policyId: 'large',
          vmIds: ['vm-large'],
          bucket: f.stack.endpoints.bucket,
          chunkSize: MiB,
          slotLimit: 1,
          segmentBytes: segmentMiB * MiB,
        });
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
  process.stdout.write(
    `\nOne ${diskMiB} MiB disk in ${Math.ceil(diskMiB / segmentMiB)} segments of ${segmentMiB} MiB, one slot per mover (whole Backup execution, wall time):\n`,
  );
  process.stdout.write("| movers' links | movers | seconds | MB/s scanned | MiB stored | speedup |\n|---|---:|---:|---:|---:|---:|\n");
  for (const r of rows) {
    const one = rows.find((x) => x.link === r.link && x.movers === 1)!;
    process.stdout.write(
      `| ${r.link} | ${r.movers} | ${r.seconds.toFixed(1)} | ${r.mbps.toFixed(0)} | ${r.stored.toFixed(1)} | ${(one.seconds / r.seconds).toFixed(2)}x |\n`,
    );
  }
}

/** Counters of the stack process (Lambda invocations, the functions' DynamoDB calls, every client's S3 requests), read before and after a run. */
function counters(stack: EmbeddedStack) {
  const ddb = { read: 0, write: 0 };
  observeSdkCalls((call) => {
    if (call.service !== 'dynamodb') return;
    const u = dynamodbUnits(call);
    ddb.read += u.read;
    ddb.write += u.write;
  });
  const snap = () => ({ lambda: lambdaInvocations(), s3: stack.s3RequestKinds(), ddb: { ...ddb } });
  return { snap };
}

/** Per VM-backup usage between two snapshots of `counters`. */
function perVm(
  before: ReturnType<ReturnType<typeof counters>['snap']>,
  after: typeof before,
  transitions: number,
  vms: number,
  alone?: AloneDurations,
): PerVmBackup {
  const lambda: Record<string, { count: number; ms: number; minMs: number }> = {};
  for (const [id, v] of Object.entries(after.lambda))
    lambda[id] = { count: v.count - (before.lambda[id]?.count ?? 0), ms: v.ms - (before.lambda[id]?.ms ?? 0), minMs: v.minMs };
  const byFunction = Object.fromEntries(
    Object.entries(lambda)
      .filter(([, v]) => v.count > 0)
      .map(([id, v]) => [
        id,
        { invocations: v.count / vms, gbSeconds: ((v.ms / 1000) * memoryGb(id)) / vms, gbSecondsFloor: ((v.count * v.minMs) / 1000) * (memoryGb(id) / vms) },
      ]),
  );
  const s3 = Object.fromEntries(Object.entries(after.s3).map(([k, n]) => [k, (n - (before.s3[k] ?? 0)) / vms]));
  const est = alone ? gbSecondsAlone(byFunction, alone, memoryGb) : undefined;
  if (est) for (const [id, g] of Object.entries(est.byFunction)) Object.assign(byFunction[id]!, { gbSecondsAlone: g });
  return {
    transitions: transitions / vms,
    lambdaInvocations: Object.values(lambda).reduce((s, v) => s + v.count, 0) / vms,
    lambdaGbSeconds: gbSeconds(lambda) / vms,
    lambdaGbSecondsFloor: Object.values(byFunction).reduce((t, f) => t + f.gbSecondsFloor, 0),
    ...(est ? { lambdaGbSecondsAlone: est.total } : {}),
    lambdaByFunction: byFunction,
    dynamodbReadUnits: (after.ddb.read - before.ddb.read) / vms,
    dynamodbWriteUnits: (after.ddb.write - before.ddb.write) / vms,
    s3,
    kmsCalls: 0,
  };
}

/** The run's state transitions per VM, by state, most first. */
function printTransitions(byState: Record<string, number>, vms: number): void {
  const rows = Object.entries(byState).sort((a, b) => b[1] - a[1]);
  process.stdout.write(`\nState transitions per VM by state: ${rows.map(([k, n]) => `${k} ${(n / vms).toFixed(2)}`).join(', ')}\n`);
}

/** `groups` mover groups of `hostsPerGroup` hosts, `moversPerGroup` movers each. */
function fleetLayout(hosts: number, movers: number) {
  const groupCount = Math.max(1, Math.floor(movers / 2));
  const groups = Array.from({ length: groupCount }, (_, g) => ({ id: `group-${g + 1}`, hosts: [] as string[] }));
  for (let h = 0; h < hosts; h++) groups[h % groupCount]!.hosts.push(`esx-${String(h + 1).padStart(2, '0')}`);
  return { groups, moversPerGroup: Math.max(1, Math.floor(movers / groupCount)) };
}

/**
 * A VM folder as createVmFolder writes it, with one disk of random data in its first half and
 * a hole after, far cheaper to make than createVmFolder's text runs (scale measures the control
 * plane, not the data).
 */
async function quickVmFolder(dir: string, vmId: string, diskBytes: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'disk0.raw'), randomBytes(Math.ceil(diskBytes / 2)));
  await truncate(join(dir, 'disk0.raw'), diskBytes);
  const config = { name: vmId, cpus: 2, memoryMiB: 4096, firmware: 'uefi', disks: [{ id: 'disk0', file: 'disk0.raw', bus: 'virtio' }] };
  await writeFile(join(dir, 'vm.json'), JSON.stringify(config, null, 2));
}

async function addVms(
  f: Awaited<ReturnType<typeof fleet>>,
  hosts: string[],
  count: number,
  diskBytes: number,
  quick = false,
  prefix = 'vm',
): Promise<string[]> {
  const vmIds: string[] = [];
  for (let i = 0; i < count; i++) {
    const vmId = `${prefix}-${String(i).padStart(4, '0')}`;
    const dir = join(f.dataDir, 'vms', vmId);
    if (quick) await quickVmFolder(dir, vmId, diskBytes);
    else await createVmFolder(dir, { name: vmId, disks: [{ id: 'disk0', sizeBytes: diskBytes }] }, seededRng(1000 + i));
    await f.stack.catalog.putVm({ vmId, host: hosts[i % hosts.length]!, source: dir });
    vmIds.push(vmId);
  }
  return vmIds;
}

async function scale(): Promise<void> {
  const vmCount = num('BENCH_FLEET_VMS', 1000);
  const hostCount = num('BENCH_FLEET_HOSTS', 20);
  const moverCount = num('BENCH_FLEET_MOVERS', 10);
  const hostLimit = 2;
  const { groups, moversPerGroup } = fleetLayout(hostCount, moverCount);
  const vmConcurrency = num('BENCH_FLEET_VM_CONCURRENCY', hostCount * hostLimit);
  const f = await fleet('scale', baseConfig(groups, hostLimit, vmConcurrency), Object.fromEntries(groups.map((g) => [g.id, moversPerGroup])), 2);
  try {
    process.stdout.write(`Creating ${vmCount} VMs with one 1 MiB disk each (half random data, half hole) on ${hostCount} hosts ...\n`);
    const vmIds = await addVms(
      f,
      groups.flatMap((g) => g.hosts),
      vmCount,
      MiB,
      true,
    );
    await f.stack.catalog.putPolicy({ policyId: 'scale', vmIds, bucket: f.stack.endpoints.bucket, chunkSize: MiB, slotLimit: hostLimit });
    await loadHandlerModules();
    const c = counters(f.stack);
    const before = c.snap();
    const cpu0 = process.cpuUsage();
    const load = os.loadavg()[0]!;
    const started = performance.now();
    const d = await runExecution(sfnClient(f.stack.endpoints), f.stack.endpoints.backupStateMachineArn, { policyId: 'scale' }, { pollMs: 1000 });
    const seconds = (performance.now() - started) / 1000;
    const after = c.snap();
    const cpu = process.cpuUsage(cpu0);
    if (d.status !== 'SUCCEEDED') throw new Error(`the scale run ended ${d.status}: ${d.error} ${d.cause}`);
    const s = JSON.parse(d.output!) as RunSummary;
    const run = await runExecutions(f.dataDir, d.executionArn!);
    const fair = await slotFairness(f.dataDir, d.executionArn!);
    const slotRow = (label: string, w: { p50: number; p99: number; max: number; mean: number }) =>
      `| ${label} | ${w.p50.toFixed(1)} / ${w.p99.toFixed(1)} / ${w.max.toFixed(1)} s (mean ${w.mean.toFixed(1)} s, p99/mean ${(w.p99 / Math.max(1e-9, w.mean)).toFixed(1)}) |\n`;
    process.stdout.write(
      `\nScale run: ${vmCount} VMs, ${groups.length} groups, ${groups.length * moversPerGroup} movers (2 slots each), ${hostCount} hosts (${hostLimit} backups each), ${vmConcurrency} VMs at once; load average ${load.toFixed(1)} at start, ${os.loadavg()[0]!.toFixed(1)} at end (${os.cpus().length} cores):\n`,
    );
    process.stdout.write('| figure | value |\n|---|---:|\n');
    process.stdout.write(`| VMs committed / failed | ${s.committed} / ${s.failed} |\n`);
    process.stdout.write(`| wall time | ${seconds.toFixed(1)} s (${((seconds * 1000) / vmCount).toFixed(0)} ms per VM) |\n`);
    process.stdout.write(`| executions | ${run.executions} (the run, one per host, one per VM) |\n`);
    process.stdout.write(`| state transitions per VM | ${(run.transitions / vmCount).toFixed(1)} |\n`);
    process.stdout.write(
      `| history events per VM (its own execution, as AWS counts them) | ${run.historyEventsPerVm.toFixed(1)}; the run's own: ${run.parentHistory} |\n`,
    );
    process.stdout.write(`| largest history | ${run.largestHistory.events} events (${run.largestHistory.execution}) |\n`);
    process.stdout.write(`| largest payload | ${run.largestPayload.bytes} B (${run.largestPayload.where}, ${run.largestPayload.execution}) |\n`);
    process.stdout.write(
      `| control-plane CPU per VM | ${((cpu.user + cpu.system) / 1000 / vmCount).toFixed(1)} ms (embedded stack process: runner, handlers, dynalite, s3rver) |\n`,
    );
    process.stdout.write(slotRow('slot wait p50 / p99 / max: a slot of its host free for it → holding it', fair.eligibleWaits));
    process.stdout.write(slotRow('AcquireSlot entered → left (its own latency)', fair.waits));
    process.stdout.write(`| WaitForSlot entered (VMs that had to queue) | ${run.transitionsByState.WaitForSlot ?? 0} of ${vmCount} |\n`);
    process.stdout.write(`\nWhy VMs waited (bench/slot-fairness.ts): ${formatSlotFairness(fair)}\n`);
    printTransitions(run.transitionsByState, vmCount);
    // Each function's duration alone (bench/fleet-solo.ts): VMs of the first host, one at a time, full backups as above.
    const aloneVms = await addVms(f, [groups[0]!.hosts[0]!], num('BENCH_FLEET_ALONE_VMS', 5), MiB, true, 'alone');
    const alone = await aloneDurations(f.stack, 'alone', aloneVms);
    printCost(perVm(before, after, run.transitions, vmCount, alone), await loadPrices(), `${vmCount} VMs of 1 MiB, full backups`);
  } finally {
    observeSdkCalls(undefined);
    await f.close();
  }
}

/**
 * What a night costs: VMs backed up fully, then 2% of each disk rewritten and backed up
 * again (the nightly incremental); the incremental's usage per VM-backup is counted and
 * priced. The control plane's requests do not depend on a disk's size but S3's do: they are
 * also shown with the data-dependent requests of a 100 GiB VM (BENCH_FLEET_COST_TARGET_GIB)
 * added by a model (new packs, Verify's HEADs), stated in the output.
 */
async function cost(): Promise<void> {
  const vmCount = num('BENCH_FLEET_COST_VMS', 20);
  const diskMiB = num('BENCH_FLEET_COST_MIB', 64);
  const targetGiB = num('BENCH_FLEET_COST_TARGET_GIB', 100);
  const { groups, moversPerGroup } = fleetLayout(4, 2);
  const f = await fleet('cost', baseConfig(groups, 2, 8), Object.fromEntries(groups.map((g) => [g.id, moversPerGroup])), 2);
  try {
    process.stdout.write(`Creating ${vmCount} VMs with one ${diskMiB} MiB disk each ...\n`);
    const vmIds = await addVms(
      f,
      groups.flatMap((g) => g.hosts),
      vmCount,
      diskMiB * MiB,
    );
    await f.stack.catalog.putPolicy({ policyId: 'nightly', vmIds, bucket: f.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });
    const sfn = sfnClient(f.stack.endpoints);
    const full = await runExecution(sfn, f.stack.endpoints.backupStateMachineArn, { policyId: 'nightly' }, { pollMs: 500 });
    if (full.status !== 'SUCCEEDED') throw new Error(`the full backup ended ${full.status}: ${full.error} ${full.cause}`);
    for (const [i, vmId] of vmIds.entries()) await changeDisk(join(f.dataDir, 'vms', vmId, 'disk0.raw'), diskMiB * MiB, 0.02, 4, seededRng(5000 + i));
    const c = counters(f.stack);
    const before = c.snap();
    const load = os.loadavg()[0]!;
    const d = await runExecution(sfn, f.stack.endpoints.backupStateMachineArn, { policyId: 'nightly' }, { pollMs: 500 });
    if (d.status !== 'SUCCEEDED') throw new Error(`the incremental ended ${d.status}: ${d.error} ${d.cause}`);
    const s = JSON.parse(d.output!) as RunSummary;
    if (s.failed) throw new Error(`the incremental failed ${s.failed} VMs: ${JSON.stringify(s.vms.slice(0, 3))}`);
    const after = c.snap();
    const run = await runExecutions(f.dataDir, d.executionArn!);
    // Each function's duration alone (bench/fleet-solo.ts): VMs of the first host changed again, incrementals one at a time.
    const hostCount = groups.flatMap((g) => g.hosts).length;
    const aloneVms = vmIds.filter((_, i) => i % hostCount === 0).slice(0, num('BENCH_FLEET_ALONE_VMS', 5));
    for (const [i, vmId] of aloneVms.entries()) await changeDisk(join(f.dataDir, 'vms', vmId, 'disk0.raw'), diskMiB * MiB, 0.02, 4, seededRng(9000 + i));
    const u = perVm(before, after, run.transitions, vmCount, await aloneDurations(f.stack, 'alone', aloneVms));
    process.stdout.write(`load average ${load.toFixed(1)} at start, ${os.loadavg()[0]!.toFixed(1)} at end (${os.cpus().length} cores)\n`);
    printTransitions(run.transitionsByState, vmCount);
    printCost(u, await loadPrices(), `measured: incremental of ${diskMiB} MiB VMs after a 2% change`);
    // A bigger disk changes only S3's requests: the new data's packs (and an index object per 32 packs), and
    // Verify's HEADs: the packs its committed parent does not name (the new ones) plus PARENT_SAMPLE of the parent's
    // (functions/backup/verify.ts). Model them for the target size on top of what was measured (the measured VMs'
    // own data requests are few and left in; so are Verify's reads of the parent's manifest, a few pieces more at 100 GiB).
    const packs = (bytes: number) => Math.ceil(bytes / PACK_BYTES);
    const targetBytes = targetGiB * 1024 ** 3;
    const newPacks = packs(targetBytes * 0.02);
    const heads = newPacks + PARENT_SAMPLE;
    const modeled = { PUT: (u.s3.PUT ?? 0) + newPacks + Math.ceil(newPacks / 32), HEAD: (u.s3.HEAD ?? 0) + heads };
    process.stdout.write(
      `\nModel for ${targetGiB} GiB VMs changing 2% (uncompressed, 8 MiB packs): + ${newPacks} pack PUTs and ${Math.ceil(newPacks / 32)} index PUTs, + ${heads} Verify HEADs (the new packs and a sample of ${PARENT_SAMPLE} of the parent's; a first backup HEADs all ${packs(targetBytes)})\n`,
    );
    printCost({ ...u, s3: { ...u.s3, ...modeled } }, await loadPrices(), `modeled: ${targetGiB} GiB VMs changing 2%`);
  } finally {
    observeSdkCalls(undefined);
    await f.close();
  }
}

const mode = process.argv[2];
if (mode === 'segments') await segments();
else if (mode === 'scale') await scale();
else if (mode === 'cost') await cost();
else {
  process.stderr.write('usage: npm run bench:fleet -- segments|scale|cost\n');
  process.exit(2);
}
