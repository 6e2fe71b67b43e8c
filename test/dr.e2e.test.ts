/**
 * Disaster recovery with real VMs, end to end on the embedded stack with two sites on this
 * machine: site-a backs up three libvirt VMs (the tiny real guest, shut off, its disk a
 * qcow2 with data) into the primary repository; the DR site (its own S3 endpoint and mover
 * group) replicates each backup and keeps each VM's replica as a powered-off libvirt
 * domain whose qcow2 restore points are written with the changed chunks only. Then a test
 * failover (throwaway overlays, an isolated network, everything removed, the replicas
 * byte-identical), bad plans refused with clear errors, and a failover plan of 3 VMs in 2
 * groups: all running, in order, each at the restore point asked for.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import type { FailoverPlan, FailoverReport, ReplicaUpdate } from '../contracts/dr.ts';
import { runExecution } from '../local/client.ts';
import {
  backupAndReplicate as labRun,
  contentHash as labHash,
  createIsolatedNetwork,
  defineProdVm,
  drLabConfig,
  writePattern,
} from '../local/vm-lab/dr-lab.ts';
import { buildGuest } from '../local/vm-lab/guest.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { readReplicaState, replicaPaths } from '../mover/recovery/replica-vm.ts';
import { TEST_FAILOVERS } from '../mover/recovery/test-failover-cleanup.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
const MiB = 1024 * 1024;
const CHUNK = 512 * 1024; // the example configuration's primary repository
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

const pid = process.pid;
const prodNet = `lbprod-${pid}`;
const drNet = `lbdr-${pid}`;
const names = ['a', 'b', 'c'].map((x) => `lbdr-e2e-${pid}-${x}`);
const vmIds = ['dr-a', 'dr-b', 'dr-c'];
const READY = 'LIFEBOAT-GUEST READY';

let t: TestStack;
let work: string;
let replicaDir: string;
/** Per VM: the SHA-256 of its disk at each backup, by backup id. */
const diskAt: Record<string, Record<string, string>> = {};
const backups: string[][] = [];
let firstUpdates: ReplicaUpdate[];
let secondUpdates: ReplicaUpdate[];

const config = () => drLabConfig(loadConfig(), { prodNet, drNet, policyId: 'p-drvm', vmIds, keepPoints: 2 });

const imageOf = (i: number) => join(work, 'prod', `${names[i]}.qcow2`);

const contentHash = (image: string) => labHash(image, work);

/** Every file of every replica, hashed byte for byte (layers, active overlays, state). */
async function replicaFiles(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const vmId of vmIds) {
    const p = replicaPaths(replicaDir, vmId);
    for (const sub of [p.layers, p.active]) {
      for (const f of await readdir(sub))
        out[join(sub, f)] = createHash('sha256')
          .update(await readFile(join(sub, f)))
          .digest('hex');
    }
    out[p.state] = createHash('sha256')
      .update(await readFile(p.state))
      .digest('hex');
  }
  return out;
}

async function backupAndReplicate(): Promise<ReplicaUpdate[]> {
  const { run: b, replicaVms } = await labRun(t.sfn, t.stack.endpoints, 'p-drvm');
  expect(b.committed).toBe(3);
  const ids: string[] = [];
  for (const [i, vmId] of vmIds.entries()) {
    const backupId = b.vms.find((v) => v.vmId === vmId)!.backupId!;
    ids.push(backupId);
    (diskAt[vmId] ??= {})[backupId] = await contentHash(imageOf(i));
  }
  backups.push(ids);
  return vmIds.map((id) => replicaVms.find((x) => x.vmId === id)!);
}

// Generous: a TCG boot takes ~6 s on an idle machine, minutes on one loaded by others' guests.
const plan = (id: string, readiness = { serial: READY, timeoutSeconds: 600 }): FailoverPlan => ({
  id,
  groups: [
    { vms: [vmIds[0]!, { vm: vmIds[1]!, script: ['sh', '-c', 'echo "re-ip $LIFEBOAT_VM_ID $LIFEBOAT_VM_DOMAIN test=$LIFEBOAT_FAILOVER_TEST"'] }], readiness },
    { vms: [vmIds[2]!], readiness },
  ],
});

async function failover(workflow: 'FailoverPlan' | 'TestFailover', input: object) {
  return runExecution(t.sfn, t.stack.endpoints.stateMachines[workflow]!, input, { pollMs: 250 });
}

const testDomains = async () =>
  (await virsh(['list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith('lbtf-'));
const testNetworks = async () =>
  (await virsh(['net-list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith('lbtf-'));

describe.skipIf(!lab.available)('disaster recovery with replica VMs', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lbdr-'));
    t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config: config(), moverEnv: { LIFEBOAT_WORK_DIR: work } });
    replicaDir = join(t.stack.endpoints.dataDir, 'sites', 'site-dr', config().repositories[1]!.replication!.standbyPath!);
    await createIsolatedNetwork(work, drNet, `lbdr${pid % 100000}`);
    const guest = await buildGuest(join(tmpdir(), 'lifeboat-vm-lab-cache'));
    for (const [i, name] of names.entries()) {
      await defineProdVm(join(work, 'prod'), guest, { name, sizeBytes: 16 * MiB, dataBytes: 3 * MiB, pattern: 0x31 + i, network: prodNet });
      await writePattern(imageOf(i), 8 * MiB, CHUNK, 0x51 + i);
      await t.stack.catalog.putVm({ vmId: vmIds[i]!, host: 'kvm-01', source: name, name });
    }
    firstUpdates = await backupAndReplicate();
    // One chunk of VM a changes; b and c stay as they were.
    await writePattern(imageOf(0), 2 * MiB, CHUNK, 0x77);
    secondUpdates = await backupAndReplicate();
  }, 600_000);
  afterAll(async () => {
    for (const n of [...names, ...names.map((x) => `${x}-replica`), ...(await testDomains().catch(() => [] as string[]))]) {
      await virsh(['destroy', n]).catch(() => {});
      await virsh(['undefine', n]).catch(() => {});
    }
    for (const n of [drNet, ...(await testNetworks().catch(() => [] as string[]))]) await virsh(['net-destroy', n]).catch(() => {});
    await t?.close();
    if (work) await rm(work, { recursive: true, force: true });
  }, 120_000);

  it('defines each replica as a powered-off domain at the DR site, networks mapped, its disk equal to the backup; an update writes only the changed chunks', async () => {
    for (const [i, u] of firstUpdates.entries()) {
      expect(u).toMatchObject({ vmId: vmIds[i], domain: `${names[i]}-replica`, fromBackupId: null, backupId: backups[0]![i] });
      // The first point holds the data chunks only: a fresh image reads as zeros.
      expect(u.bytesWritten).toBe(3 * MiB + CHUNK);
      expect((await virsh(['domstate', u.domain])).trim()).toBe('shut off');
      const xml = await virsh(['dumpxml', u.domain]);
      expect(xml).toContain(`<source network='${drNet}'`);
      expect(xml).not.toContain(prodNet);
      expect(xml).not.toContain((await virsh(['domuuid', names[i]!])).trim());
    }
    const changed = secondUpdates[0]!;
    process.stdout.write(`replica update: ${changed.bytesWritten} bytes written for ${CHUNK} bytes changed\n`);
    expect(changed).toMatchObject({ fromBackupId: backups[0]![0], chunksWritten: 1, bytesWritten: CHUNK });
    for (const u of secondUpdates.slice(1)) expect(u.bytesWritten).toBe(0);
    for (const [i, vmId] of vmIds.entries()) {
      const state = (await readReplicaState(replicaDir, vmId))!;
      expect(state.points.map((p) => p.backupId)).toEqual([backups[0]![i], backups[1]![i]]);
      for (const [k, p] of state.points.entries()) expect(await contentHash(p.layers.vda!), `${vmId} point ${k}`).toBe(diskAt[vmId]![backups[k]![i]!]);
      expect(await contentHash(join(replicaPaths(replicaDir, vmId).active, 'vda.qcow2'))).toBe(diskAt[vmId]![backups[1]![i]!]);
    }
  });

  it('test failover boots the plan on throwaway overlays in an isolated network, reports the same figures, removes all it made (and what old runs left), and leaves the replicas byte-identical', async () => {
    const before = await replicaFiles();
    // What two earlier runs left (their cleanup never ran): one older than any TestFailover execution can be, one recent (it may still run).
    const [old, recent] = [`z${String(pid).padStart(6, '0').slice(-6)}`, `y${String(pid).padStart(6, '0').slice(-6)}`];
    // The old one in a mover's work folder, where runs kept their overlays before they moved to the replica folder: both are swept.
    await mkdir(join(work, 'test-failovers', old), { recursive: true });
    await mkdir(join(replicaDir, TEST_FAILOVERS, recent), { recursive: true });
    await utimes(join(work, 'test-failovers', old), new Date(Date.now() - 2 * 86400_000), new Date(Date.now() - 2 * 86400_000));
    await createIsolatedNetwork(work, `lbtf-${old}`, `lbtf${old}`);
    await writeFile(
      join(work, 'leftover.xml'),
      `<domain type='qemu'><name>lbtf-${old}-leftover</name><memory unit='MiB'>16</memory><os><type arch='x86_64'>hvm</type></os></domain>`,
    );
    await virsh(['define', join(work, 'leftover.xml')]);
    const d = await failover('TestFailover', { plan: plan('drill'), points: { [vmIds[2]!]: { backupId: backups[0]![2]! } } });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailoverReport;
    expect(r).toMatchObject({ plan: 'drill', test: true });
    expect(r.vms.map((v) => [v.vmId, v.group, v.backupId])).toEqual([
      [vmIds[0], 0, backups[1]![0]],
      [vmIds[1], 0, backups[1]![1]],
      [vmIds[2], 1, backups[0]![2]],
    ]);
    for (const v of r.vms) {
      expect(v.domain).toMatch(/^lbtf-[0-9a-z]{7}-lbdr-e2e-/);
      expect(v.line).toContain(READY);
    }
    expect(r.vms[1]!.script?.output).toContain(`re-ip ${vmIds[1]} ${r.vms[1]!.domain} test=1`);
    expect(r.rtoSeconds).toBe(Math.max(...r.vms.map((v) => v.readySeconds)));
    expect(r.cleanedUp!.domains.sort()).toEqual(r.vms.map((v) => v.domain).sort());
    expect(r.cleanedUp!.networks).toHaveLength(1);
    expect(await testDomains()).toEqual([]);
    expect(await testNetworks()).toEqual([]);
    // The old run's leftovers were swept at the start; the recent run's folder is left alone.
    expect(await readdir(join(work, 'test-failovers')).catch(() => [])).toEqual([]);
    expect(await readdir(join(replicaDir, TEST_FAILOVERS))).toEqual([recent]);
    await rm(join(replicaDir, TEST_FAILOVERS, recent), { recursive: true });
    expect(await replicaFiles()).toEqual(before);
    for (const n of names) expect((await virsh(['domstate', `${n}-replica`])).trim()).toBe('shut off');
  }, 900_000);

  it('refuses bad plans with errors naming the VM, the restore point or the readiness that never came, and cleans up after a test failover that failed midway', async () => {
    const unknown = await failover('FailoverPlan', { plan: { id: 'typo', groups: [{ vms: ['no-such-vm'] }] } });
    expect(unknown.status).toBe('FAILED');
    expect(unknown.cause).toContain("failover plan 'typo' names VM 'no-such-vm', which is not in the inventory");

    const point = await failover('FailoverPlan', { plan: plan('old'), points: { [vmIds[1]!]: { backupId: 'b-never' } } });
    expect(point.status).toBe('FAILED');
    expect(point.cause).toContain(`restore point b-never does not exist for VM '${vmIds[1]}': its replica keeps ${backups[0]![1]}`);
    for (const n of names) expect((await virsh(['domstate', `${n}-replica`])).trim()).toBe('shut off');

    const bad = await failover('TestFailover', {
      plan: { id: 'never', groups: [{ vms: [vmIds[0]!], readiness: { serial: 'NEVER-PRINTED', timeoutSeconds: 4 } }] },
    });
    expect(bad.status).toBe('FAILED');
    expect(bad.error).toBe('Failover.NotReady');
    expect(bad.cause).toMatch(
      new RegExp(
        `VM '${vmIds[0]}' \\(domain lbtf-[0-9a-z]{7}-${names[0]}, restore point ${backups[1]![0]}\\) was not ready: no serial console line matched /NEVER-PRINTED/ within 4 s`,
      ),
    );
    expect(await testDomains()).toEqual([]);
    expect(await testNetworks()).toEqual([]);
  }, 900_000);

  it('a failover plan of 3 VMs in 2 groups boots the replicas in order, each at the restore point asked for', async () => {
    const d = await failover('FailoverPlan', { plan: plan('site-loss'), points: { [vmIds[0]!]: { backupId: backups[0]![0]! } } });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailoverReport;
    process.stdout.write(
      `failover plan: RTO ${r.rtoSeconds.toFixed(1)} s; ${r.vms.map((v) => `${v.vmId} group ${v.group} started ${v.startedSeconds.toFixed(1)} s ready ${v.readySeconds.toFixed(1)} s (boot ${v.bootSeconds.toFixed(1)} s)`).join('; ')}\n`,
    );
    expect(r.vms.map((v) => [v.vmId, v.group, v.backupId])).toEqual([
      [vmIds[0], 0, backups[0]![0]],
      [vmIds[1], 0, backups[1]![1]],
      [vmIds[2], 1, backups[1]![2]],
    ]);
    // Group 1 starts only once every VM of group 0 is ready.
    expect(r.vms[2]!.startedSeconds).toBeGreaterThanOrEqual(Math.max(r.vms[0]!.readySeconds, r.vms[1]!.readySeconds));
    expect(r.vms[1]!.script?.output).toContain(`re-ip ${vmIds[1]} ${names[1]}-replica test=0`);
    for (const [i, v] of r.vms.entries()) {
      expect(v.domain).toBe(`${names[i]}-replica`);
      expect((await virsh(['domstate', v.domain])).trim()).toBe('running');
      // Its disk is the backup it was failed over to (the idle guest writes nothing).
      expect(await contentHash(join(replicaPaths(replicaDir, vmIds[i]!).active, 'vda.qcow2')), v.vmId).toBe(diskAt[vmIds[i]!]![v.backupId]);
      expect(v.recoveryPoint).toBe((await readReplicaState(replicaDir, vmIds[i]!))!.points.find((p) => p.backupId === v.backupId)!.recoveryPoint);
    }
    expect(diskAt[vmIds[0]!]![backups[0]![0]!]).not.toBe(diskAt[vmIds[0]!]![backups[1]![0]!]);
  }, 900_000);
});
