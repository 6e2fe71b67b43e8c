/**
 * The fleet's control logic on a real catalog (dynalite): configuration sync, Plan's
 * group and slot scopes, and the segment split and join around Dispatch (the slot queue:
 * test/slot-queue.test.ts).
 */
import { Repository } from '../repository/open.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { segmentManifestId, type DiskRef, type VmJob } from '../contracts/jobs.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import { joinSegments, planDispatch } from '../functions/backup/dispatch.ts';
import { hostLines, interleaveByHost, plan, publishPlan } from '../functions/backup/plan.ts';
import { syncConfig } from '../functions/deploy/sync-config.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { startTestCatalog } from './helpers/catalog.ts';
import { randomBytes } from 'node:crypto';

const MiB = 1024 * 1024;
const config = loadConfig();
const buckets = { primary: 'bucket-primary', dr: 'bucket-dr' };
let catalog: Catalog;
let close: () => Promise<void>;

beforeAll(async () => {
  ({ catalog, close } = await startTestCatalog());
  await syncConfig({ config, buckets }, { catalog });
});
afterAll(async () => close?.());

describe('SyncConfig', () => {
  it('writes each host with its group and limits, and each policy with its repository bucket', async () => {
    expect(await catalog.getHost('esx-01')).toEqual({
      hostId: 'esx-01',
      moverGroup: 'site-a',
      site: 'site-a',
      maxConcurrentBackups: 2,
      datastores: { 'ds-ssd-01': 2 },
    });
    expect((await catalog.getHost('esx-03'))?.moverGroup).toBe('site-b');
    const nightly = await catalog.getPolicy('nightly');
    expect(nightly).toMatchObject({
      bucket: 'bucket-primary',
      chunkSize: MiB / 2,
      slotLimit: 2,
      rpoHours: 26,
      hosts: ['esx-01', 'esx-02', 'esx-03'],
      replicateTo: { repositoryId: 'dr', bucket: 'bucket-dr' },
      managedBy: 'config',
    });
  });

  it('removes policies an earlier configuration wrote, and leaves hand-written ones', async () => {
    await catalog.putPolicy({ policyId: 'by-hand', vmIds: [], bucket: 'b', chunkSize: MiB, slotLimit: 1 });
    const fewer: LifeboatConfig = { ...config, policies: config.policies.filter((p) => p.id !== 'hourly-critical') };
    const out = await syncConfig({ config: fewer, buckets }, { catalog });
    expect(out.removedPolicies).toEqual(['hourly-critical']);
    expect(await catalog.getPolicy('hourly-critical')).toBeUndefined();
    expect(await catalog.getPolicy('by-hand')).toBeDefined();
    await syncConfig({ config, buckets }, { catalog });
  });

  it('refuses a repository the deployment has no bucket for', async () => {
    await expect(syncConfig({ config, buckets: { primary: 'b' } }, { catalog })).rejects.toThrow(
      "repository 'dr' has no bucket in the deployment (buckets: primary)",
    );
  });
});

describe('Plan', () => {
  it('selects VMs by host, takes the group from the host, and counts each VM against its host and limited datastores', async () => {
    await catalog.putVm({ vmId: 'web-01', host: 'esx-01', source: '/vms/web-01', datastores: ['ds-ssd-01', 'ds-other'] });
    await catalog.putVm({ vmId: 'db-01', host: 'esx-03', source: '/vms/db-01' });
    const out = await plan({ policyId: 'nightly', runId: 'run-0001' }, { catalog, now: () => new Date('2026-11-23T01:30:00Z') });
    const byVm = Object.fromEntries(out.vms.map((j) => [j.vmId, j]));
    expect(Object.keys(byVm).sort()).toEqual(['db-01', 'web-01']);
    expect(byVm['web-01']).toMatchObject({
      moverGroup: 'site-a',
      slotScopes: [
        { scope: 'host:esx-01', limit: 2 },
        { scope: 'datastore:esx-01/ds-ssd-01', limit: 2 },
      ],
    });
    expect(byVm['db-01']).toMatchObject({ moverGroup: 'site-b', slotScopes: [{ scope: 'host:esx-03', limit: 2 }] }); // min(host 4, policy 2)
    // Manifests are keyed by backup id and disk id: two VMs of one run never share a backup id.
    expect(byVm['web-01']!.backupId).toMatch(/^20261123T013000000Z-run-0001-[0-9a-f]{8}$/);
    expect(byVm['web-01']!.backupId).not.toBe(byVm['db-01']!.backupId);
  });

  it("lists a run's VMs spread over groups and hosts, each host giving as many per round as it has slots", () => {
    const vm = (vmId: string, host: string, moverGroup: string, limit: number) =>
      ({ vmId, host, moverGroup, slotScopes: [{ scope: `host:${host}`, limit }] }) as VmJob;
    // As a policy selecting by host lists them: all of a's, then b's, then c's.
    const jobs = [
      ...['a1', 'a2', 'a3', 'a4', 'a5'].map((id) => vm(id, 'a', 'g1', 2)),
      ...['b1', 'b2'].map((id) => vm(id, 'b', 'g1', 1)),
      ...['c1', 'c2', 'c3'].map((id) => vm(id, 'c', 'g2', 1)),
    ];
    expect(interleaveByHost(jobs).map((j) => j.vmId)).toEqual(['a1', 'a2', 'c1', 'b1', 'a3', 'a4', 'c2', 'b2', 'a5', 'c3']);
  });

  it("lines each host's VMs up in its own list at its slots, and admits as many hosts at once as fit in the run's VM concurrency", async () => {
    const vm = (vmId: string, host: string, moverGroup: string, limit: number) =>
      ({ vmId, backupId: `bk-${vmId}`, host, moverGroup, slotScopes: [{ scope: `host:${host}`, limit }] }) as VmJob;
    const vms = interleaveByHost([
      ...['a1', 'a2', 'a3'].map((id) => vm(id, 'a', 'g1', 2)),
      ...['b1', 'b2'].map((id) => vm(id, 'b', 'g1', 1)),
      ...['c1'].map((id) => vm(id, 'c', 'g2', 3)),
    ]);
    // Hosts in the interleaved order (groups in turn: a, c, b); at 3 VMs at once a (2 slots) fits but a and c (5) do not.
    const { lines, concurrency } = hostLines(vms, 3);
    expect(lines.map((l) => [l.host, l.slots, l.jobs.map((j) => j.vmId)])).toEqual([
      ['a', 2, ['a1', 'a2', 'a3']],
      ['c', 3, ['c1']],
      ['b', 1, ['b1', 'b2']],
    ]);
    expect(concurrency).toBe(1);
    expect(hostLines(vms, 6).concurrency).toBe(3);
    // A host with more slots than the run's concurrency still runs, alone.
    expect(hostLines(vms, 1).concurrency).toBe(1);

    const store = new MemoryObjectStore();
    const members: string[] = [];
    const out = await publishPlan(
      { runId: 'run-1', policyId: 'p', replicateTo: null, vms, gone: [] },
      { runs: { addMembers: async (_run, m) => void members.push(...m.map((x) => x.vmId)) }, store, bucket: 'runs-bucket', vmConcurrency: 5 },
    );
    expect(out).toMatchObject({ vms: 6, gone: 0, hostList: { bucket: 'runs-bucket', count: 3, concurrency: 2 } });
    const hosts = JSON.parse((await store.get(out.hostList.key))!.toString()) as { host: string; slots: number; vmList: { key: string; count: number } }[];
    expect(hosts.map((h) => [h.host, h.slots, h.vmList.count])).toEqual([
      ['a', 2, 3],
      ['c', 3, 1],
      ['b', 1, 2],
    ]);
    const aJobs = JSON.parse((await store.get(hosts[0]!.vmList.key))!.toString()) as VmJob[];
    expect(aJobs.map((j) => j.vmId)).toEqual(['a1', 'a2', 'a3']);
    expect(members.sort()).toEqual(['a1', 'a2', 'a3', 'b1', 'b2', 'c1']);
  });

  it("a VM moved to another host leaves the old host's selection", async () => {
    await catalog.putVm({ vmId: 'mover-vm', host: 'esx-02', source: '/vms/m' });
    await catalog.putVm({ vmId: 'mover-vm', host: 'esx-03', source: '/vms/m' });
    expect(await catalog.vmsOnHost('esx-02')).not.toContain('mover-vm');
    expect(await catalog.vmsOnHost('esx-03')).toContain('mover-vm');
  });

  it('names the host and what to do when no group serves it', async () => {
    await catalog.putVm({ vmId: 'orphan', host: 'esx-99', source: '/vms/o' });
    await catalog.putPolicy({ policyId: 'p-orphan', vmIds: ['orphan'], bucket: 'b', chunkSize: MiB, slotLimit: 1 });
    await expect(plan({ policyId: 'p-orphan', runId: 'run-0002' }, { catalog, now: () => new Date() })).rejects.toThrow(
      `VM 'orphan' is on host 'esx-99', which no mover group serves: add the host to a mover group's "hosts" in the configuration`,
    );
  });
});

describe('PlanDispatch / JoinSegments', () => {
  const disk = (diskId: string, sizeBytes: number): DiskRef => ({ diskId, path: `/snap/${diskId}`, sizeBytes });

  it('splits only disks above the segment size, into chunk-aligned segments', () => {
    const j = {
      snapshot: { handle: 'h', config: {}, disks: [disk('small', 3 * MiB), disk('big', 10 * MiB + 5)] },
      repository: { bucket: 'b', chunkSize: MiB },
      segmentBytes: 4.5 * MiB,
    } as VmJob;
    const items = planDispatch(j);
    expect(items.map((i) => [i.disk.diskId, i.segment])).toEqual([
      ['small', null],
      ['big', { index: 0, count: 3, offset: 0, length: 4 * MiB }],
      ['big', { index: 1, count: 3, offset: 4 * MiB, length: 4 * MiB }],
      ['big', { index: 2, count: 3, offset: 8 * MiB, length: 2 * MiB + 5 }],
    ]);
  });

  it('segments transferred separately join into the manifest a single transfer writes', async () => {
    const store = new MemoryObjectStore();
    const k = deriveKeys(randomBytes(32));
    const chunk = 64 * 1024;
    const size = 10 * chunk + 100;
    const data = randomBytes(size);
    data.fill(0, 2 * chunk, 4 * chunk); // a zero run inside segment 0
    const reader = {
      sizeBytes: size,
      read: async (buf: Buffer, offset: number, length: number) => data.copy(buf, 0, offset, offset + length),
      close: async () => {},
    };
    const d = disk('disk0', size);
    const j = {
      backupId: 'bk',
      vmId: 'vm',
      snapshot: { handle: 'h', config: {}, disks: [d] },
      repository: { bucket: 'b', chunkSize: chunk },
      segmentBytes: 4 * chunk,
    } as VmJob;
    const items = planDispatch(j);
    expect(items).toHaveLength(3);
    // Run the segments in reverse, as unrelated movers might.
    const transfers = [];
    for (const it of [...items].reverse())
      transfers.push(await backupDisk({ repository: new Repository(store, k), reader, disk: d, backupId: 'bk', chunkSize: chunk, segment: it.segment }));
    expect(transfers.map((t) => t.manifestKey).sort()).toEqual([0, 1, 2].map((i) => objectKeys.manifest('bk', segmentManifestId('disk0', i))));
    const [joined] = await joinSegments({ job: j, transfers }, new Repository(store, k));
    expect(joined).toMatchObject({ diskId: 'disk0', sizeBytes: size, manifestKey: objectKeys.manifest('bk', 'disk0') });
    expect(joined!.stats.chunks).toBe(11);
    expect(joined!.stats.zeroChunks).toBe(2);

    const wholeStore = new MemoryObjectStore();
    const whole = await backupDisk({ repository: new Repository(wholeStore, k), reader, disk: d, backupId: 'bk', chunkSize: chunk });
    const fromSegments = await decodeManifest(k, (await store.get(joined!.manifestKey))!, 'bk', 'disk0', store);
    const fromWhole = await decodeManifest(k, (await wholeStore.get(whole.manifestKey))!, 'bk', 'disk0', wholeStore);
    expect(fromSegments.chunks).toEqual(fromWhole.chunks);
    expect(Object.keys(fromSegments.storedSizes).sort()).toEqual(Object.keys(fromWhole.storedSizes).sort());
  });

  it('refuses to join when a segment result is missing', async () => {
    const d = disk('disk0', 8 * MiB);
    const j = {
      backupId: 'bk',
      vmId: 'vm',
      snapshot: { handle: 'h', config: {}, disks: [d] },
      repository: { bucket: 'b', chunkSize: MiB },
      segmentBytes: 4 * MiB,
    } as VmJob;
    const partial = [
      { diskId: 'disk0', sizeBytes: d.sizeBytes, manifestKey: 'x', stats: {} as never, segment: { index: 1, count: 2, offset: 4 * MiB, length: 4 * MiB } },
    ];
    await expect(joinSegments({ job: j, transfers: partial }, new Repository(new MemoryObjectStore(), randomBytes(32)))).rejects.toThrow(
      "disk 'disk0' of backup bk: expected 2 segment results, got segments [1]",
    );
  });
});
