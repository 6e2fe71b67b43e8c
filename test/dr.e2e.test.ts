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
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import type { FailoverPlan, FailoverReport, ReplicaUpdate } from '../contracts/dr.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { createQcow2, guestCmdline, guestDomainXml } from '../local/vm-lab/domain.ts';
import { buildGuest } from '../local/vm-lab/guest.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { readReplicaState, replicaPaths } from '../mover/recovery/replica-vm.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const run = promisify(execFile);
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

const config = (): LifeboatConfig => {
  const example = loadConfig();
  return {
    ...example,
    sites: example.sites.map((s) => (s.id === 'site-dr' ? { ...s, networkMap: { [prodNet]: drNet } } : s)),
    repositories: example.repositories.map((r) => (r.replication ? { ...r, replication: { ...r.replication, replicaVms: { uri: 'qemu:///system', keepPoints: 2 } } } : r)),
    policies: [...example.policies, {
      id: 'p-drvm', vms: { ids: vmIds }, schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' }, retention: { keepLast: 10 }, repository: 'primary', replicateTo: 'dr', rpoHours: 26,
    }],
  };
};

const imageOf = (i: number) => join(work, 'prod', `${names[i]}.qcow2`);

/** The guest-visible content of a qcow2 image (or chain), hashed. */
async function contentHash(image: string): Promise<string> {
  const raw = join(work, `hash-${createHash('sha1').update(image).digest('hex')}.raw`);
  await run('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
  const h = createHash('sha256').update(await readFile(raw)).digest('hex');
  await rm(raw, { force: true });
  return h;
}

/** Every file of every replica, hashed byte for byte (layers, active overlays, state). */
async function replicaFiles(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const vmId of vmIds) {
    const p = replicaPaths(replicaDir, vmId);
    for (const sub of [p.layers, p.active]) {
      for (const f of await readdir(sub)) out[join(sub, f)] = createHash('sha256').update(await readFile(join(sub, f))).digest('hex');
    }
    out[p.state] = createHash('sha256').update(await readFile(p.state)).digest('hex');
  }
  return out;
}

async function backupAndReplicate(): Promise<ReplicaUpdate[]> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-drvm' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const b = JSON.parse(d.output!) as RunSummary;
  expect(b.committed, JSON.stringify(b.vms.map((v) => v.error))).toBe(3);
  const ids: string[] = [];
  for (const [i, vmId] of vmIds.entries()) {
    const backupId = b.vms.find((v) => v.vmId === vmId)!.backupId!;
    ids.push(backupId);
    (diskAt[vmId] ??= {})[backupId] = await contentHash(imageOf(i));
  }
  backups.push(ids);
  const arn = t.stack.endpoints.stateMachines.ReplicatePolicy!;
  const name = `replicate-${createHash('sha1').update(b.runId).digest('hex')}`;
  for (let i = 0; i < 200; i++) {
    const found = (await t.sfn.send(new ListExecutionsCommand({ stateMachineArn: arn }))).executions?.find((x) => x.name === name);
    if (found) {
      const r = await waitForExecution(t.sfn, found.executionArn!, { pollMs: 200 });
      expect(r.status, r.cause).toBe('SUCCEEDED');
      const out = JSON.parse(r.output!) as { replicated: { replicaVm?: ReplicaUpdate }[] };
      return vmIds.map((id) => out.replicated.map((x) => x.replicaVm!).find((x) => x.vmId === id)!);
    }
    await sleep(100);
  }
  throw new Error(`no replication started for run ${b.runId}`);
}

const plan = (id: string, readiness = { serial: READY, timeoutSeconds: 120 }): FailoverPlan => ({
  id, groups: [{ vms: [vmIds[0]!, { vm: vmIds[1]!, script: ['sh', '-c', 'echo "re-ip $LIFEBOAT_VM_ID $LIFEBOAT_VM_DOMAIN test=$LIFEBOAT_FAILOVER_TEST"'] }], readiness }, { vms: [vmIds[2]!], readiness }],
});

async function failover(workflow: 'FailoverPlan' | 'TestFailover', input: object) {
  return runExecution(t.sfn, t.stack.endpoints.stateMachines[workflow]!, input, { pollMs: 250 });
}

const testDomains = async () => (await virsh(['list', '--all', '--name'])).split('\n').map((l) => l.trim()).filter((n) => n.startsWith('lbtf-'));
const testNetworks = async () => (await virsh(['net-list', '--all', '--name'])).split('\n').map((l) => l.trim()).filter((n) => n.startsWith('lbtf-'));

describe.skipIf(!lab.available)('disaster recovery with replica VMs', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lbdr-'));
    t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config: config(), moverEnv: { LIFEBOAT_WORK_DIR: work } });
    replicaDir = join(t.stack.endpoints.dataDir, 'sites', 'site-dr', config().repositories[1]!.replication!.standbyPath!);
    await writeFile(join(work, 'net.xml'), `<network><name>${drNet}</name><bridge name='lbdr${pid % 100000}' stp='off'/></network>`);
    await virsh(['net-create', join(work, 'net.xml')]);
    const guest = await buildGuest(join(tmpdir(), 'lifeboat-vm-lab-cache'));
    await run('mkdir', ['-p', join(work, 'prod')]);
    for (const [i, name] of names.entries()) {
      await createQcow2(imageOf(i), 16 * MiB);
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x31 + i).toString(16)} 0 ${3 * MiB}`, '-c', `write -P 0x${(0x51 + i).toString(16)} ${8 * MiB} ${CHUNK}`, imageOf(i)]);
      const xml = guestDomainXml({
        name, disks: [{ path: imageOf(i), format: 'qcow2', target: 'vda' }], kernel: guest.kernel, initrd: guest.initrd,
        cmdline: guestCmdline({ mode: 'idle' }), serialLog: join(work, 'prod', `${name}.log`), agent: false, memoryMiB: 128,
      }).replace('    <serial', `    <interface type='network'><source network='${prodNet}'/><model type='virtio'/></interface>\n    <serial`);
      await writeFile(join(work, 'prod', `${name}.xml`), xml);
      await virsh(['define', join(work, 'prod', `${name}.xml`)]);
      await t.stack.catalog.putVm({ vmId: vmIds[i]!, host: 'kvm-01', source: name, name });
    }
    firstUpdates = await backupAndReplicate();
    // One chunk of VM a changes; b and c stay as they were.
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x77 ${2 * MiB} ${CHUNK}`, imageOf(0)]);
    secondUpdates = await backupAndReplicate();
  }, 300_000);
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

  it('test failover boots the plan on throwaway overlays in an isolated network, reports the same figures, removes all it made, and leaves the replicas byte-identical', async () => {
    const before = await replicaFiles();
    const d = await failover('TestFailover', { plan: plan('drill'), points: { [vmIds[2]!]: { backupId: backups[0]![2]! } } });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailoverReport;
    expect(r).toMatchObject({ plan: 'drill', test: true });
    expect(r.vms.map((v) => [v.vmId, v.group, v.backupId])).toEqual([[vmIds[0], 0, backups[1]![0]], [vmIds[1], 0, backups[1]![1]], [vmIds[2], 1, backups[0]![2]]]);
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
    expect(await readdir(join(work, 'test-failovers')).catch(() => [])).toEqual([]);
    expect(await replicaFiles()).toEqual(before);
    for (const n of names) expect((await virsh(['domstate', `${n}-replica`])).trim()).toBe('shut off');
  }, 240_000);

  it('refuses bad plans with errors naming the VM, the restore point or the readiness that never came, and cleans up after a test failover that failed midway', async () => {
    const unknown = await failover('FailoverPlan', { plan: { id: 'typo', groups: [{ vms: ['no-such-vm'] }] } });
    expect(unknown.status).toBe('FAILED');
    expect(unknown.cause).toContain("failover plan 'typo' names VM 'no-such-vm', which is not in the inventory");

    const point = await failover('FailoverPlan', { plan: plan('old'), points: { [vmIds[1]!]: { backupId: 'b-never' } } });
    expect(point.status).toBe('FAILED');
    expect(point.cause).toContain(`restore point b-never does not exist for VM '${vmIds[1]}': its replica keeps ${backups[0]![1]}`);
    for (const n of names) expect((await virsh(['domstate', `${n}-replica`])).trim()).toBe('shut off');

    const bad = await failover('TestFailover', { plan: { id: 'never', groups: [{ vms: [vmIds[0]!], readiness: { serial: 'NEVER-PRINTED', timeoutSeconds: 4 } }] } });
    expect(bad.status).toBe('FAILED');
    expect(bad.error).toBe('Failover.NotReady');
    expect(bad.cause).toMatch(new RegExp(`VM '${vmIds[0]}' \\(domain lbtf-[0-9a-z]{7}-${names[0]}, restore point ${backups[1]![0]}\\) was not ready: no serial console line matched /NEVER-PRINTED/ within 4 s`));
    expect(await testDomains()).toEqual([]);
    expect(await testNetworks()).toEqual([]);
  }, 240_000);

  it('a failover plan of 3 VMs in 2 groups boots the replicas in order, each at the restore point asked for', async () => {
    const d = await failover('FailoverPlan', { plan: plan('site-loss'), points: { [vmIds[0]!]: { backupId: backups[0]![0]! } } });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailoverReport;
    process.stdout.write(`failover plan: RTO ${r.rtoSeconds.toFixed(1)} s; ${r.vms.map((v) => `${v.vmId} group ${v.group} started ${v.startedSeconds.toFixed(1)} s ready ${v.readySeconds.toFixed(1)} s (boot ${v.bootSeconds.toFixed(1)} s)`).join('; ')}\n`);
    expect(r.vms.map((v) => [v.vmId, v.group, v.backupId])).toEqual([[vmIds[0], 0, backups[0]![0]], [vmIds[1], 0, backups[1]![1]], [vmIds[2], 1, backups[1]![2]]]);
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
  }, 240_000);
});
