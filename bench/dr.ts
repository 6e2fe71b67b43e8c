/**
 * DR figures on the embedded stack with two sites on this machine and the lab's real guest
 * (libvirt, QEMU under TCG):
 *
 * - replica update: after changing a share of a VM's disk, the bytes the DR mover wrote into
 *   the replica's new restore point against the bytes that changed, and the update's time
 *   against rewriting the whole disk (`qemu-img convert` of the point into a new qcow2: what
 *   a replica without a chunk diff would write) and against the machine's write ceiling
 *   (`dd conv=fsync` of the changed bytes);
 * - RTO per plan size (1, 3, 10 VMs, one group, readiness = the guest's READY console line),
 *   through the TestFailover workflow: the RTO, the guest's own boot (start → READY) apart,
 *   and the rest (orchestration: planning, point checks, overlays, define, start, cleanup).
 *
 * Prints figures and the machine's load; asserts nothing.
 * Usage: npm run bench:dr   (BENCH_DR_MIB: the update VM's disk, default 256; BENCH_DR_CHANGE:
 * percentages changed per round, default 1,5,25; BENCH_DR_PLANS: plan sizes, default 1,3,10)
 */
import { execFile } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadConfig } from '../core/config.ts';
import type { FailoverReport } from '../contracts/dr.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { startMover } from '../local/movers.ts';
import { seededRng } from '../local/demo/vm-image.ts';
import { EmbeddedStack } from '../local/stack.ts';
import { backupAndReplicate, createIsolatedNetwork, defineProdVm, drLabConfig, writePattern } from '../local/vm-lab/dr-lab.ts';
import { buildGuest } from '../local/vm-lab/guest.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { readReplicaState } from '../mover/recovery/replica-vm.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const CHUNK = 512 * 1024; // the example configuration's primary repository
const diskMiB = Number(process.env.BENCH_DR_MIB ?? 256);
const changes = (process.env.BENCH_DR_CHANGE ?? '1,5,25').split(',').map(Number);
// `none`: the replica update table alone (the A/B runs of the update against a peer checkout).
const plans = process.env.BENCH_DR_PLANS === 'none' ? [] : (process.env.BENCH_DR_PLANS ?? '1,3,10').split(',').map(Number);
const maxPlan = Math.max(0, ...plans);
const out = (line: string) => process.stdout.write(`${line}\n`);
const load = () =>
  `load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`;
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
const began = performance.now();
/** A progress line on stderr (stdout stays the table): what the bench is doing now, and since when. */
const step = (what: string) => process.stderr.write(`  [${((performance.now() - began) / 1000).toFixed(1)} s] ${what}  ${load()}\n`);

const lab = await ensureLibvirtd();
if (!lab.available) throw new Error(`bench:dr needs libvirt and QEMU: ${lab.reason}`);
const pid = process.pid;
const dir = join(tmpdir(), `lbdr-bench-${pid}`);
const work = join(dir, 'work');
await mkdir(work, { recursive: true });
const prodNet = `lbbprod-${pid}`;
const drNet = `lbbdr-${pid}`;
const upd = { vmId: 'bench-upd', name: `lbdr-bench-${pid}-upd` };
const rto = Array.from({ length: Math.max(1, maxPlan) }, (_, i) => ({ vmId: `bench-rto-${i}`, name: `lbdr-bench-${pid}-${i}` }));
const base = drLabConfig(loadConfig(), { prodNet, drNet, policyId: 'p-upd', vmIds: [upd.vmId], keepPoints: 3 });
const config = { ...base, policies: [...base.policies, { ...base.policies.at(-1)!, id: 'p-rto', vms: { ids: rto.map((v) => v.vmId) } }] };
const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data'), config });
const e = stack.endpoints;
const sfn = sfnClient(e);
const onLog = (l: { level?: string }) => {
  if (l.level === 'error') process.stderr.write(`mover: ${JSON.stringify(l)}\n`);
};
const movers = [
  startMover(e, { name: 'site-a-mover', group: 'site-a', slots: 4, env: { LIFEBOAT_WORK_DIR: work }, onLog }),
  // A DR mover holds a slot per VM while it waits for its readiness: enough for the largest plan.
  startMover(e, { name: 'dr-mover', group: 'dr', slots: maxPlan + 2, env: { LIFEBOAT_WORK_DIR: work }, onLog }),
];
const replicaDir = join(e.dataDir, 'sites', 'site-dr', config.repositories[1]!.replication!.standbyPath!);

try {
  out(`bench:dr  ${load()}  (2 sites on one machine; guest under TCG)`);
  await createIsolatedNetwork(work, drNet, `lbbdr${pid % 100000}`);
  const guest = await buildGuest(join(tmpdir(), 'lifeboat-vm-lab-cache'));
  const updVm = await defineProdVm(join(work, 'prod'), guest, {
    name: upd.name,
    sizeBytes: diskMiB * MiB,
    dataBytes: Math.floor(diskMiB * 0.75) * MiB,
    pattern: 0x41,
    network: prodNet,
  });
  await stack.catalog.putVm({ vmId: upd.vmId, host: 'kvm-01', source: upd.name, name: upd.name });
  for (const [i, v] of rto.entries()) {
    await defineProdVm(join(work, 'prod'), guest, { name: v.name, sizeBytes: 16 * MiB, dataBytes: 2 * MiB, pattern: 0x10 + i, network: prodNet });
    await stack.catalog.putVm({ vmId: v.vmId, host: 'kvm-01', source: v.name, name: v.name });
  }

  out('');
  out(`replica update (disk ${diskMiB} MiB, ${Math.floor(diskMiB * 0.75)} MiB of data, chunk ${CHUNK / 1024} KiB, keep 3 points)`);
  const first = await backupAndReplicate(sfn, e, 'p-upd');
  out(
    `  first point: ${mib(first.replicaVms[0]!.bytesWritten)} written in ${first.replicaVms[0]!.seconds.toFixed(1)} s (backup ${first.seconds.backup.toFixed(1)} s, replication ${first.seconds.replication.toFixed(1)} s)  ${load()}`,
  );
  out('  changed   changed bytes   replica bytes written   written/changed   update s   full rewrite s   update/full   dd ceiling s   load');
  const chunks = (diskMiB * MiB) / CHUNK;
  const phases: string[] = [];
  // Seeded, 32-bit (a float LCG loses its low bits past 2^53 and cycles through a few values: the 25% round never found its chunks).
  const rng = seededRng(7);
  for (const [round, pct] of changes.entries()) {
    // Distinct chunk-aligned blocks, each overwritten whole with a pattern of its round.
    const picked = new Set<number>();
    const want = Math.min(chunks, Math.max(1, Math.round((chunks * pct) / 100)));
    while (picked.size < want) picked.add(rng(0, chunks));
    step(`${pct}%: writing ${picked.size} chunks into the production disk`);
    // A pattern of its own per round: a chunk picked again in a later round changes again.
    for (const c of picked) await writePattern(updVm.image, c * CHUNK, CHUNK, 0x80 + round);
    const changed = picked.size * CHUNK;
    step(`${pct}%: backup and replication`);
    const r = await backupAndReplicate(sfn, e, 'p-upd');
    step(`${pct}%: replicated (backup ${r.seconds.backup.toFixed(1)} s, replication ${r.seconds.replication.toFixed(1)} s); full rewrite and dd ceiling`);
    const u = r.replicaVms[0]!;
    const state = (await readReplicaState(replicaDir, upd.vmId))!;
    const copy = join(work, 'full-rewrite.qcow2');
    const t0 = performance.now();
    await run('qemu-img', ['convert', '-U', '-O', 'qcow2', state.points.at(-1)!.layers.vda!, copy]);
    await run('sync', ['-f', copy]);
    const full = (performance.now() - t0) / 1000;
    await rm(copy, { force: true });
    const t1 = performance.now();
    await run('dd', ['if=/dev/zero', `of=${join(work, 'dd.out')}`, `bs=${CHUNK}`, `count=${picked.size}`, 'conv=fsync', 'status=none']);
    const dd = (performance.now() - t1) / 1000;
    await rm(join(work, 'dd.out'), { force: true });
    phases.push(
      `  ${`${pct}%`.padEnd(9)} ${Object.entries(u.phases ?? {})
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join('  ')}`,
    );
    out(
      `  ${`${pct}%`.padEnd(9)} ${mib(changed).padStart(13)}   ${mib(u.bytesWritten).padStart(21)}   ${(u.bytesWritten / changed).toFixed(3).padStart(15)}   ${u.seconds.toFixed(2).padStart(8)}   ${full.toFixed(2).padStart(14)}   ${(u.seconds / full).toFixed(2).padStart(11)}   ${dd.toFixed(2).padStart(12)}   ${load()}`,
    );
  }

  out("  where the update's seconds went (the DR mover's phases; disk steps overlap and add up over disks; merge: the retired points merged, some runs)");
  for (const l of phases) out(l);

  if (plans.length > 0) {
    out('');
    out("RTO per plan size (TestFailover; one group; readiness: the guest's READY line; each VM boots under TCG)");
    await backupAndReplicate(sfn, e, 'p-rto');
    out('  VMs   RTO s   guest boot s (median / max)   orchestration s (RTO - max boot)   load');
  }
  for (const n of plans) {
    const plan = {
      id: `bench-${n}`,
      groups: [{ vms: rto.slice(0, n).map((v) => v.vmId), readiness: { serial: 'LIFEBOAT-GUEST READY', timeoutSeconds: 1800 } }],
    };
    step(`test failover of ${n} VM(s)`);
    const d = await runExecution(sfn, e.stateMachines.TestFailover!, { plan }, { pollMs: 250 });
    if (d.status !== 'SUCCEEDED') throw new Error(`test failover of ${n} VMs ${d.status}: ${d.cause}`);
    const r = JSON.parse(d.output!) as FailoverReport;
    const boots = r.vms.map((v) => v.bootSeconds).sort((a, b) => a - b);
    const median = boots[Math.floor(boots.length / 2)]!;
    const max = boots.at(-1)!;
    out(
      `  ${String(n).padEnd(5)} ${r.rtoSeconds.toFixed(1).padStart(5)}   ${`${median.toFixed(1)} / ${max.toFixed(1)}`.padStart(27)}   ${(r.rtoSeconds - max).toFixed(1).padStart(32)}   ${load()}`,
    );
  }
} finally {
  await Promise.all(movers.map((m) => m.stop(true)));
  for (const n of [upd.name, ...rto.map((v) => v.name)]) {
    for (const d of [n, `${n}-replica`]) {
      await virsh(['destroy', d]).catch(() => {});
      await virsh(['undefine', d]).catch(() => {});
    }
  }
  await virsh(['net-destroy', drNet]).catch(() => {});
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
