/**
 * Failover → failback end to end, two sites on this machine: production (host kvm-01, group
 * site-a, the primary repository) and the DR site (host kvm-dr, group dr, the DR repository
 * on its own s3rver, keeping replica VMs), the real tiny guest under QEMU (TCG) through
 * libvirtd, real mover processes.
 *
 * Production VM (raw disk) backed up and replicated (its replica VM defined at the DR site,
 * powered off) → disaster (production off) → the FailoverPlan workflow boots the replica,
 * ready when its guest agent answers →
 * it is put in the DR host's inventory, where the configuration's DR-site policy protects it
 * → the guest writes at the DR site → DR-side backups (full, then with changed-block
 * tracking) → more guest writes → Failback: only the DR-side changes are sent, the DR VM is
 * shut down, a final backup of it alone taken and applied, production boots, its disk equals
 * the DR VM's, and the replica is released: no longer failed over, the next replication of
 * production updates it with the changed chunks. Then the clear errors: a VM never failed
 * over, and a VM that refuses to shut down.
 *
 * Three TCG boots: over what npm test may spend; `npm run test:failback` runs it.
 */
import { execFile } from 'node:child_process';
import { link } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import type { FailoverReport } from '../contracts/dr.ts';
import type { FailbackReport } from '../contracts/failback.ts';
import type { VmRow } from '../contracts/operator.ts';
import { runExecution } from '../local/client.ts';
import { startMover } from '../local/movers.ts';
import { backupAndReplicate } from '../local/vm-lab/dr-lab.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { stopDrVm } from '../mover/recovery/failback-domain.ts';
import { readReplicaState } from '../mover/recovery/replica-vm.ts';
import { stopGuestAgent } from './helpers/guest-agent.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
/** The repositories' chunk size (the example configuration's 0.5 MiB). */
const CHUNK = 512 * 1024;
const DISK = 32 * MiB;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI && process.env.LIFEBOAT_FAILBACK_E2E) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

const prodName = `lifeboat-fb-prod-${process.pid}`;
/** The replica VM: what runs at the DR site after the failover. */
const drName = `${prodName}-replica`;
const example = loadConfig();
const policy = (id: string, vmId: string, repository: string, replicateTo?: string) => ({
  id,
  vms: { ids: [vmId] },
  schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' },
  retention: { keepLast: 10 },
  repository,
  rpoHours: 26,
  ...(replicateTo ? { replicateTo } : {}),
});
/**
 * The example configuration, with replica VMs at the DR site, the DR site's libvirt host
 * (served by the DR group) and the DR-site policy that protects the VMs running there after
 * a failover (declared by the configuration: the failover does not create it).
 */
const config: LifeboatConfig = {
  ...example,
  repositories: example.repositories.map((r) =>
    r.replication ? { ...r, replication: { ...r.replication, replicaVms: { uri: 'qemu:///system', keepPoints: 2 } } } : r,
  ),
  moverGroups: example.moverGroups.map((g) => (g.id === 'dr' ? { ...g, hosts: ['kvm-dr'] } : g)),
  hosts: [...example.hosts, { id: 'kvm-dr', driver: 'libvirt', uri: 'qemu:///system', maxConcurrentBackups: 2 }],
  policies: [...example.policies, policy('p-prod', 'fb-prod', 'primary', 'dr'), policy('p-drsite', 'fb-dr', 'dr')],
};

let t: TestStack;
let prod: LabVm;
let drDisk: string;
let replicaDir: string;

async function backup(policyId: string): Promise<RunSummary> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 300 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const r = JSON.parse(d.output!) as RunSummary;
  expect(r.failed, JSON.stringify(r.vms.map((v) => v.error))).toBe(0);
  return r;
}

/** Runs a shell command in a guest through its agent (as a person at its console would), and waits for it. */
async function inGuest(domain: string, command: string): Promise<void> {
  const out = await virsh(['qemu-agent-command', domain, JSON.stringify({ execute: 'guest-exec', arguments: { path: '/bin/sh', arg: ['-c', command] } })]);
  const pid = (JSON.parse(out) as { return: { pid: number } }).return.pid;
  for (let i = 0; i < 200; i++) {
    const s = JSON.parse(await virsh(['qemu-agent-command', domain, JSON.stringify({ execute: 'guest-exec-status', arguments: { pid } })])) as {
      return: { exited: boolean; exitcode?: number };
    };
    if (s.return.exited) return void expect(s.return.exitcode, command).toBe(0);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${command} did not finish in the guest ${domain}`);
}

/** The guest writes 64 KiB of random data at the start of each chunk named (inside the disk's random data: incompressible). */
const writeChunks = (domain: string, chunks: number[]) =>
  inGuest(domain, chunks.map((c) => `dd if=/dev/urandom of=/dev/vda bs=65536 seek=${(c * CHUNK) / 65536} count=1 conv=notrunc,fsync 2>/dev/null`).join(' && '));

const vms = async () => (await (await fetch(`${t.stack.endpoints.console}/api/vms`)).json()) as VmRow[];
const failback = (input: object) => runExecution(t.sfn, t.stack.endpoints.stateMachines.Failback!, input, { pollMs: 300 });

describe.skipIf(!lab.available || !process.env.LIFEBOAT_FAILBACK_E2E)('failback from the DR site with the real guest', () => {
  beforeAll(async () => {
    t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config, moverEnv: { LIFEBOAT_WORK_DIR: '' } });
    // Each mover its own short work folder (libvirt's unix sockets live there).
    for (const [i, m] of t.movers.entries()) {
      await m.stop(true);
      const group = i === 0 ? 'site-a' : 'dr';
      t.movers[i] = startMover(t.stack.endpoints, {
        name: `${group}-mover`,
        group,
        env: { LIFEBOAT_WORK_DIR: join(t.dir, `w-${group}`) },
        onLog: (l) => t.logs.push(l),
      });
    }
    prod = await startLabVm({
      dir: join(t.dir, 'prod'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: prodName,
      format: 'raw',
      sizeBytes: DISK,
      dataBytes: 16 * MiB,
      behaviour: { mode: 'idle' },
      bootTimeoutMs: 480_000, // TCG on a machine shared with other runs: within beforeAll's 600 s
    });
    await t.stack.catalog.putVm({ vmId: 'fb-prod', host: 'kvm-01', source: prodName, name: prodName });
    replicaDir = (await t.stack.catalog.getPolicy('p-prod'))!.replicateTo!.standbyPath!;
  }, 600_000);
  afterAll(async () => {
    for (const name of [drName]) {
      await virsh(['destroy', name]).catch(() => {});
      for (const c of (await virsh(['checkpoint-list', '--name', name]).catch(() => '')).split('\n').filter((l) => l.trim()))
        await virsh(['checkpoint-delete', '--metadata', name, c.trim()]).catch(() => {});
      await virsh(['undefine', '--checkpoints-metadata', name]).catch(() => virsh(['undefine', name]).catch(() => {}));
    }
    await prod?.remove();
    await t?.close();
  }, 120_000);

  it('fails over with the plan, sends only what changed at the DR site back, switches with a short outage: production ends equal to the DR VM, and the replica replicates again', async () => {
    // Production is backed up and the backup replicated to the DR repository (the Backup run starts it): the replica VM is defined.
    await virsh(['destroy', prodName]); // quiet: backed up from its image
    const first = await backupAndReplicate(t.sfn, t.stack.endpoints, 'p-prod');
    const b = first.run;
    expect(first.replicaVms.map((u) => [u.vmId, u.domain])).toEqual([['fb-prod', drName]]);

    // Disaster: production stays off. The FailoverPlan workflow boots the replica at the DR site.
    const fo = await runExecution(
      t.sfn,
      t.stack.endpoints.stateMachines.FailoverPlan!,
      // Ready when its guest agent (qemu-ga in the lab guest, on its virtio-serial channel) answers guest-ping.
      { plan: { id: 'fb', groups: [{ vms: ['fb-prod'], readiness: { agent: true, timeoutSeconds: 600 } }] } },
      { pollMs: 300 },
    );
    expect(fo.status, fo.cause).toBe('SUCCEEDED');
    const failover = JSON.parse(fo.output!) as FailoverReport;
    expect(failover.vms.map((v) => [v.vmId, v.domain, v.backupId])).toEqual([['fb-prod', drName, b.vms[0]!.backupId]]);
    // Ready by the agent alone (no console line was awaited), some time after its start.
    expect(failover.vms[0]!.line).toBeUndefined();
    expect(failover.vms[0]!.bootSeconds).toBeGreaterThan(0);
    expect((await readReplicaState(replicaDir, 'fb-prod'))!.failedOver).toMatchObject({ runId: failover.runId });
    // `lifeboat vms` (the operator API) shows the failover the catalog recorded.
    expect((await vms()).find((v) => v.vmId === 'fb-prod')!.failedOver).toMatchObject({ runId: failover.runId, plan: 'fb', backupId: b.vms[0]!.backupId });
    drDisk = (await virsh(['domblklist', drName]))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .find((c) => c[0] === 'vda')![1]!;
    // The release after the failback puts a new active overlay in its place: this name keeps the DR VM's own.
    const drKept = `${drDisk}.ran-at-dr`;
    await link(drDisk, drKept);
    // The DR host's inventory gets the VM (as discovery would); the DR-site policy of the configuration protects it.
    await t.stack.catalog.putVm({ vmId: 'fb-dr', host: 'kvm-dr', source: drName, name: drName });

    // The guest writes at the DR site; DR-side backups, the second with changed-block tracking.
    await writeChunks(drName, [2, 5]);
    const d1 = await backup('p-drsite');
    expect(d1.vms[0]!.backupId).toBeTruthy();
    await writeChunks(drName, [9, 11]);
    const d2 = await backup('p-drsite');
    expect(d2.vms[0]!.fullReads).toBeUndefined(); // CBT: only the dirty blocks were read
    expect(d2.totals.bytesRead).toBeLessThanOrEqual(4 * CHUNK);
    // Written after the newest DR backup: only the final backup (after the DR VM stops) has it.
    await writeChunks(drName, [20]);

    const d = await failback({
      vmId: 'fb-prod',
      drVmId: 'fb-dr',
      shutdownTimeoutSeconds: 120,
      readiness: { consoleLine: 'LIFEBOAT-GUEST READY', timeoutSeconds: 240 },
    });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailbackReport;
    expect(r).toMatchObject({ vmId: 'fb-prod', drVmId: 'fb-dr', baseBackupId: b.vms[0]!.backupId, syncBackupId: d2.vms[0]!.backupId, chunksDrifted: 0 });
    // The base is the point the catalog recorded for the failover, which the failback released.
    expect(r).toMatchObject({ baseFrom: 'failover', failoverRunId: failover.runId, failoversReleased: [failover.runId] });
    expect((await vms()).find((v) => v.vmId === 'fb-prod')!.failedOver).toBeNull();
    // What changed at the DR site: chunks 2, 5, 9, 11 in the sync, chunk 20 in the final delta.
    expect(r.disks.sync.map((x) => x.chunksChanged)).toEqual([4]);
    expect(r.disks.final.map((x) => x.chunksChanged)).toEqual([1]);
    expect(r.bytesChanged).toBe(5 * CHUNK);
    expect(r.bytesWritten).toBe(5 * CHUNK);
    // Sent: those chunks' stored bytes (random data: zstd cannot shrink it), nothing else.
    expect(r.bytesSent / r.bytesChanged).toBeGreaterThan(0.99);
    expect(r.bytesSent / r.bytesChanged).toBeLessThan(1.01);
    expect(r.production).toMatchObject({ domain: prodName, state: 'running' });
    // The replica is released: shut off, no longer failed over, back on its newest restore point.
    expect(r.replica).toMatchObject({ domain: drName, failoverRunId: failover.runId, backupId: b.vms[0]!.backupId });
    expect(r.replica!.checkpointsRemoved).toBeGreaterThan(0); // the DR-side backups' checkpoints: they described the overlay that goes
    const released = (await readReplicaState(replicaDir, 'fb-prod'))!;
    expect(released.failedOver).toBeUndefined();
    expect(r.outageSeconds).toBeGreaterThan(0);
    console.log(
      `failback: changed ${r.bytesChanged} B, sent ${r.bytesSent} B (${(r.bytesSent / r.bytesChanged).toFixed(3)}), written ${r.bytesWritten} B; outage ${r.outageSeconds} s (DR VM shutdown, final backup, final delta, production boot under TCG)`,
    );

    // Production's disk equals the DR VM's (shut off at the final backup); the production guest is idle, so it stays so.
    expect((await virsh(['domstate', drName])).trim()).toBe('shut off');
    await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', prod.disk, drKept]);

    // Production is protected again: its next backup replicates, and the replica takes the changed chunks as a new point.
    await virsh(['destroy', prodName]);
    const next = await backupAndReplicate(t.sfn, t.stack.endpoints, 'p-prod');
    expect(next.replicaVms).toHaveLength(1);
    expect(next.replicaVms[0]).toMatchObject({
      domain: drName,
      fromBackupId: b.vms[0]!.backupId,
      backupId: next.run.vms[0]!.backupId,
      bytesWritten: 5 * CHUNK,
    });
    await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', prod.disk, drDisk]);
  }, 900_000);

  it('refuses a VM that was never failed over, naming it and what to do', async () => {
    const d = await failback({ vmId: 'fb-prod', drVmId: 'fb-nowhere' });
    expect(d.status).toBe('FAILED');
    expect(d.cause).toMatch(/VM 'fb-prod' was never failed over to 'fb-nowhere': no VM of that id is in the inventory/);
  }, 120_000);

  it('names the VM that refuses to shut down, and leaves it running', async () => {
    // The production guest running with its agent stopped: neither the agent nor ACPI (busybox ignores it) can shut it down.
    if ((await virsh(['domstate', prodName])).trim() !== 'running') await prod.start();
    await stopGuestAgent(prodName);
    await expect(stopDrVm({ uri: 'qemu:///system', name: prodName }, 8)).rejects.toThrow(
      new RegExp(`the DR VM '${prodName}' on qemu:///system did not shut down within 8 s \\(it is running`),
    );
    expect((await virsh(['domstate', prodName])).trim()).toBe('running');
  }, 300_000);
});
