/**
 * The DR contracts and the replica's edge cases without a hypervisor: failover plans as
 * configuration, restore point selection, the network map, `--point`, and the NBD client
 * writing a qcow2 layer through a real qemu-nbd.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { drVmOf } from '../cli/failback.ts';
import { parsePoint } from '../cli/failover.ts';
import type { VmRow } from '../contracts/operator.ts';
import { ReplicaBusy } from '../contracts/recovery-errors.ts';
import type { ReplicateJob } from '../contracts/recovery-jobs.ts';
import { takeReplicaLeases } from '../functions/replicate/failover-plan.ts';
import { acquireReplicaLease, releaseReplicaLease, replicaLeaseScope } from '../functions/replicate/replicate.ts';
import { startTestCatalog } from './helpers/catalog.ts';
import { Catalog } from '../functions/catalog/catalog.ts';
import { failoverPlan } from '../contracts/dr.ts';
import { ConfigError, loadConfig, parseConfig } from '../core/config.ts';
import { NbdClient } from '../mover/nbd/client.ts';
import { choosePoint, mapNetwork, type ReplicaState } from '../mover/recovery/replica-vm.ts';
import { restoredDomainXml } from '../mover/sources/libvirt/domain-xml.ts';

const run = promisify(execFile);
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('failover plans in the configuration', () => {
  const example = loadConfig();
  const withPlans = (plans: unknown[]) => ({ ...example, failoverPlans: plans });
  const problems = (plans: unknown[]) => {
    try {
      parseConfig(withPlans(plans), 'test.json');
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };

  it('accepts the example plan', () => {
    expect(example.failoverPlans?.[0]?.groups).toHaveLength(2);
  });

  it('names every bad value of a plan', () => {
    expect(problems([{ id: 'p', groups: [{ vms: ['a', 'a'] }] }])).toEqual([
      `failoverPlans[0].groups[0].vms[1] = "a": names VM 'a' a second time: a VM boots once per plan`,
    ]);
    expect(problems([{ id: 'p', groups: [{ vms: ['a'], delaySeconds: 5, readiness: { agent: true, timeoutSeconds: 9 } }] }])[0]).toContain(
      'give "delaySeconds" or "readiness", not both',
    );
    expect(problems([{ id: 'p', groups: [{ vms: ['a'], readiness: { serial: '(', timeoutSeconds: 9 } }] }])[0]).toContain(
      'failoverPlans[0].groups[0].readiness.serial = "(": must be a regular expression',
    );
    expect(problems([{ id: 'p', groups: [{ vms: ['a'], readiness: { timeoutSeconds: 9 } }] }])[0]).toContain('must name a sign of readiness');
    expect(problems([{ id: 'p', groups: [] }])[0]).toContain('must have at least one group');
    expect(
      problems([
        { id: 'p', groups: [{ vms: ['a'] }] },
        { id: 'p', groups: [{ vms: ['b'] }] },
      ]),
    ).toEqual(['failoverPlans[1].id = "p": duplicate failoverPlans id']);
  });

  it('refuses replica VMs without a site or a folder to keep them in', () => {
    const repos = example.repositories.map((r) =>
      r.replication ? { ...r, site: undefined, replication: { moverGroup: r.replication.moverGroup, replicaVms: { uri: 'qemu:///system' } } } : r,
    );
    expect(() => parseConfig({ ...example, repositories: repos }, 'x.json')).toThrow(/replication\.replicaVms.*needs the repository's "site"/);
  });
});

describe('restore points and the network map', () => {
  const state: ReplicaState = {
    vmId: 'vm-1',
    domain: 'vm-1-replica',
    uuid: 'u',
    sourceXml: '',
    networkMap: {},
    points: [
      { backupId: 'b1', recoveryPoint: '2026-12-01T02:00:00.000Z', createdAt: '2026-12-01T02:10:00.000Z', layers: { vda: '/r/1.qcow2' } },
      { backupId: 'b2', recoveryPoint: '2026-12-02T02:00:00.000Z', createdAt: '2026-12-02T02:10:00.000Z', layers: { vda: '/r/2.qcow2' } },
    ],
  };

  it('picks the newest, a backup id, or the newest at or before a time; refuses a point that does not exist, listing those there are', () => {
    expect(choosePoint(state, 'latest').backupId).toBe('b2');
    expect(choosePoint(state, { backupId: 'b1' }).backupId).toBe('b1');
    expect(choosePoint(state, { at: '2026-12-01T23:00:00Z' }).backupId).toBe('b1');
    expect(() => choosePoint(state, { backupId: 'b9' })).toThrow(
      "restore point b9 does not exist for VM 'vm-1': its replica keeps b1 (2026-12-01T02:00:00.000Z), b2 (2026-12-02T02:00:00.000Z)",
    );
    expect(() => choosePoint(state, { at: '2026-11-30T00:00:00Z' })).toThrow("VM 'vm-1' has no restore point at or before 2026-11-30T00:00:00Z");
    expect(() => choosePoint({ ...state, points: [] }, 'latest')).toThrow('has no restore point yet');
  });

  const xml = `<domain type='qemu'><name>web</name><uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/prod/web.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='prod-lan'/><model type='virtio'/></interface>
    <interface type='bridge'><source bridge='br-dmz'/></interface></devices></domain>`;

  it('connects each interface to the mapped network of the DR site, with new MACs and no UUID', () => {
    const out = restoredDomainXml(xml, {
      name: 'web-replica',
      disks: { vda: { path: '/dr/vda.qcow2', format: 'qcow2' } },
      consoleLog: '/dr/c.log',
      network: mapNetwork({ 'prod-lan': 'dr-lan', 'br-dmz': 'dr-dmz' }, 'site-dr', 'web'),
    });
    expect(out).toContain(`<source network="dr-lan"`);
    expect(out).toContain(`<source network="dr-dmz"`);
    expect(out).not.toContain('prod-lan');
    expect(out).not.toContain('52:54:00:aa:bb:cc');
    expect(out).not.toContain('1b4e28ba');
  });

  it('refuses a network missing from the map, naming it, the VM and the site', () => {
    expect(() => restoredDomainXml(xml, { name: 'w', disks: {}, consoleLog: '/c', network: mapNetwork({ 'prod-lan': 'dr-lan' }, 'site-dr', 'web') })).toThrow(
      `network 'br-dmz' of VM 'web' is missing from the network map of the DR site (site-dr; mapped: prod-lan): add "br-dmz": "<network at the DR site>" to its networkMap in the configuration`,
    );
  });
});

describe('lifeboat failover --point', () => {
  it('takes a point for every VM or for one, and refuses a time without its zone', () => {
    expect(parsePoint('b-1')).toEqual({ '*': { backupId: 'b-1' } });
    expect(parsePoint('web=@2026-12-07T02:00:00Z', { db: 'latest' })).toEqual({ db: 'latest', web: { at: '2026-12-07T02:00:00.000Z' } });
    expect(() => parsePoint('web=@2026-12-07 02:00')).toThrow('is not a time with its zone');
    expect(failoverPlan.safeParse({ id: 'one-vm', groups: [{ vms: ['web'] }] }).success).toBe(true);
  });
});

describe('replica leases: a failover plan and the replications of its VMs never run at once', () => {
  it('takes every VM of the plan or none, names the replication holding one, and a replication waits while the plan holds them', async () => {
    const db = await startTestCatalog();
    try {
      const { catalog, recovery } = db;
      const now = Date.parse('2026-12-07T06:00:00Z');
      const vms = [
        { bucket: 'lifeboat-dr', vmId: 'a' },
        { bucket: 'lifeboat-dr', vmId: 'b' },
      ];
      const holder = async (vmId: string) => (await catalog.slotHolder(replicaLeaseScope('lifeboat-dr', vmId), 0))?.holder;
      // A replication of b is writing its replica: the plan takes nothing and says who holds it.
      expect(await catalog.takeSlot(replicaLeaseScope('lifeboat-dr', 'b'), 0, 'replicate-b-1', now, now + 3600_000)).toBe(true);
      const busy = takeReplicaLeases(catalog, 'drill-1', vms, now);
      await expect(busy).rejects.toThrow(ReplicaBusy);
      await expect(takeReplicaLeases(catalog, 'drill-1', vms, now)).rejects.toThrow(
        "the replica of VM 'b' in lifeboat-dr is held by replicate-b-1 (a replication writing it, or another failover): the failover waits for it",
      );
      expect(await holder('a')).toBeUndefined();
      // Once it is done, the plan takes both; a replication started meanwhile is refused with Replication.Busy (its workflow retries it).
      await catalog.releaseSlot(Catalog.slotKey(replicaLeaseScope('lifeboat-dr', 'b'), 0), 'replicate-b-1');
      const lease = await takeReplicaLeases(catalog, 'drill-1', vms, now);
      expect([await holder('a'), await holder('b')]).toEqual(['drill-1', 'drill-1']);
      const job = {
        replicationId: 'replicate-a-2',
        vmId: 'a',
        backupId: 'b-2',
        target: { bucket: 'lifeboat-dr' },
        replicaDir: null,
      } as unknown as ReplicateJob;
      const deps = { catalog, recovery, now: () => new Date(now + 1000) };
      await expect(acquireReplicaLease(job, deps)).rejects.toThrow("another replication or failover of VM 'a' into lifeboat-dr is running");
      // The plan's end gives them back; the replication goes on.
      await releaseReplicaLease({ lease }, { catalog });
      expect((await acquireReplicaLease(job, deps)).lease.holder).toBe('replicate-a-2');
    } finally {
      await db.close();
    }
  });
});

describe('lifeboat failback: the VM running at the DR site', () => {
  const row = (vmId: string, name: string, host: string, protection: VmRow['protection'] = 'protected') => ({ vmId, name, host, protection }) as VmRow;
  const inventory = [
    row('web', 'web', 'kvm-01'),
    row('web-dr', 'web-replica', 'kvm-dr'),
    row('db', 'db', 'kvm-01'),
    row('old', 'db-replica', 'kvm-dr', 'gone'),
  ];
  it("is the inventory's VM named after the replica on another host, or the one named", () => {
    expect(drVmOf('web', inventory)).toBe('web-dr');
    expect(drVmOf('web', inventory, 'other')).toBe('other');
  });
  it('refuses an unknown VM and a VM not failed over, naming it and what to do', () => {
    expect(() => drVmOf('nope', inventory)).toThrow("VM 'nope' is not in the inventory: check its id (lifeboat vms lists them)");
    expect(() => drVmOf('db', inventory)).toThrow(
      "VM 'db' is not failed over: no VM named db-replica (its replica at the DR site) is in the inventory. Fail it over first (lifeboat failover db)",
    );
    expect(() => drVmOf('web', [...inventory, row('web-dr2', 'web-replica', 'kvm-dr2')])).toThrow(
      'several VMs of the inventory are named web-replica (web-dr, web-dr2)',
    );
  });
});

describe.skipIf(!existsSync('/usr/bin/qemu-nbd'))('writing a qcow2 layer over NBD', () => {
  it('writes through qemu-nbd into an overlay; the layer below stays as it was', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lbnbdw-'));
    dirs.push(dir);
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', base]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const socket = join(dir, 's');
    const child = spawn('qemu-nbd', ['--format=qcow2', `--socket=${socket}`, top], { stdio: 'ignore' });
    // Listened for from the start: qemu-nbd exits as soon as its one client leaves, which can be
    // before close() returns.
    const exited = new Promise((r) => child.once('exit', r));
    // qemu-nbd creates the socket before it listens on it: connect until it answers.
    let nbd: NbdClient | undefined;
    for (let tries = 0; !nbd; tries++) {
      if (existsSync(socket)) nbd = await NbdClient.connect({ socket, exportName: '' }).catch((e: unknown) => (tries < 250 ? undefined : Promise.reject(e)));
      if (!nbd) await sleep(20);
    }
    await nbd.write(Buffer.alloc(65536, 0x22), 1024 * 1024);
    await nbd.flush();
    const back = Buffer.alloc(65536 * 2);
    await nbd.read(back, 1024 * 1024 - 65536, back.length);
    expect(back.subarray(0, 65536).every((b) => b === 0x11)).toBe(true);
    expect(back.subarray(65536).every((b) => b === 0x22)).toBe(true);
    await expect(nbd.write(Buffer.alloc(512), 4 * 1024 * 1024)).rejects.toThrow(RangeError);
    await nbd.close();
    await exited;
    const { stdout } = await run('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x11 1M 64k', base]);
    expect(stdout).toContain('read 65536/65536');
    const top2 = await run('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0x22 1M 64k', top]);
    expect(top2.stdout).toContain('read 65536/65536');
  });
});
