/**
 * The catalog's failover records (contracts/dr.ts `failoverRecord`) on a real dynalite:
 * RecordFailoverPlan records each VM's restore point, PlanFailback starts from the point the
 * VM was failed over to (not the newest one complete at the DR site), `lifeboat vms` shows
 * it, and RecordFailback releases it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FailoverVmResult } from '../contracts/dr.ts';
import type { DiskResult } from '../contracts/jobs.ts';
import type { Catalog, Policy } from '../functions/catalog/catalog.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { planFailback, recordFailback } from '../functions/failback/failback.ts';
import { listVms } from '../functions/operator/views.ts';
import { recordFailoverPlan } from '../functions/replicate/failover-plan.ts';
import { vmsTable } from '../cli/listings.ts';
import { startTestCatalog } from './helpers/catalog.ts';

let db: Awaited<ReturnType<typeof startTestCatalog>>;
let catalog: Catalog;
let recovery: RecoveryCatalog;
const now = () => new Date('2026-12-07T12:00:00Z');
const disk: DiskResult = {
  diskId: 'vda',
  sizeBytes: 1 << 20,
  manifestKey: 'manifests/x',
  stats: { bytesScanned: 0, bytesNew: 0, bytesZero: 0 } as DiskResult['stats'],
};
const policy = (policyId: string, vmIds: string[], bucket: string, replicateTo?: Policy['replicateTo']): Policy => ({
  policyId,
  vmIds,
  bucket,
  chunkSize: 1 << 19,
  slotLimit: 2,
  ...(replicateTo ? { replicateTo } : {}),
});
const vmResult = (backupId: string, readyAt: string): FailoverVmResult => ({
  vmId: 'fo-prod',
  domain: 'fo-prod-replica',
  backupId,
  recoveryPoint: `${readyAt.slice(0, 11)}00:00:00.000Z`,
  startedSeconds: 2,
  readySeconds: 12,
  bootSeconds: 10,
  readyAt,
});

async function commit(vmId: string, policyId: string, backupId: string, replicatedTo?: string) {
  await catalog.startBackup({ vmId, backupId, runId: `run-${backupId}`, policyId, status: 'running', parentBackupId: null, startedAt: '2026-12-06T00:00:00Z' });
  await catalog.commitBackup(vmId, backupId, [disk], now());
  if (replicatedTo) await recovery.putReplica({ vmId, backupId, bucket: replicatedTo, replicatedAt: now().toISOString(), replicationId: `rep-${backupId}` });
}

beforeAll(async () => {
  db = await startTestCatalog();
  ({ catalog, recovery } = db);
  const libvirt = (uri: string) => ({ driver: 'libvirt' as const, uri });
  await catalog.putHost({
    hostId: 'kvm-01',
    moverGroup: 'site-a',
    site: 'a',
    maxConcurrentBackups: 2,
    datastores: {},
    hypervisor: libvirt('qemu+ssh://a/system'),
  });
  await catalog.putHost({ hostId: 'kvm-dr', moverGroup: 'dr', site: 'dr', maxConcurrentBackups: 2, datastores: {}, hypervisor: libvirt('qemu:///system') });
  await catalog.putVm({ vmId: 'fo-prod', host: 'kvm-01', source: 'fo-prod', name: 'fo-prod' });
  await catalog.putVm({ vmId: 'fo-dr', host: 'kvm-dr', source: 'fo-prod-replica', name: 'fo-prod-replica' });
  await catalog.putPolicy(policy('p-prod', ['fo-prod'], 'primary', { repositoryId: 'dr', bucket: 'dr-bucket', moverGroup: 'dr', standbyPath: 'replicas' }));
  await catalog.putPolicy(policy('p-drsite', ['fo-dr'], 'dr-bucket'));
  // Three production backups, all complete at the DR site (ids sort by time: b3 is the newest).
  for (const b of ['b1', 'b2', 'b3']) await commit('fo-prod', 'p-prod', b, 'dr-bucket');
  await commit('fo-dr', 'p-drsite', 'd1');
}, 60_000);
afterAll(() => db?.close());

/** `lifeboat vms`' rows (listVms reads only the catalogs and the clock). */
const vmRows = () => listVms({ catalog, recovery, now } as unknown as Parameters<typeof listVms>[0]);

const planInput = (failbackId: string, baseBackupId?: string) => ({
  failbackId,
  request: { vmId: 'fo-prod', drVmId: 'fo-dr', ...(baseBackupId ? { baseBackupId } : {}) },
});

describe('failover records in the catalog', () => {
  it('before any failover, a failback starts from the newest backup complete at the DR site, and says so', async () => {
    const job = await planFailback(planInput('fb-0'), { catalog, recovery, now });
    expect(job).toMatchObject({ base: { backupId: 'b3' }, baseFrom: 'newestReplica' });
    expect(job.failoverRunId).toBeUndefined();
    expect((await vmRows()).find((v) => v.vmId === 'fo-prod')!.failedOver).toBeNull();
  });

  it('a test failover is recorded but is not an active failover', async () => {
    await recordFailoverPlan(
      { runId: 'drill-1', plan: 'p', test: true, booted: [{ index: 0, vms: [{ ...vmResult('b3', '2026-12-07T10:00:12.000Z'), domain: 'lbtf-x-fo-prod' }] }] },
      { recovery, now },
    );
    expect((await recovery.listFailovers('fo-prod')).map((f) => [f.runId, f.test])).toEqual([['drill-1', true]]);
    expect(await recovery.activeFailover('fo-prod')).toBeUndefined();
  });

  it('a real failover to an older point is the base of the failback, is shown by `lifeboat vms`, and the failback releases it', async () => {
    // Ransomware: the plan boots restore point b2, not the newest (b3).
    await recordFailoverPlan(
      { runId: 'fo-run-1', plan: 'ransom', test: false, booted: [{ index: 0, vms: [vmResult('b2', '2026-12-07T11:00:12.000Z')] }] },
      { recovery, now },
    );
    const active = await recovery.activeFailover('fo-prod');
    // Powered on at its start: readiness less the boot (12 s from the plan's start, started at 2 s).
    expect(active).toMatchObject({ runId: 'fo-run-1', plan: 'ransom', backupId: 'b2', test: false, failedOverAt: '2026-12-07T11:00:02.000Z' });

    const row = (await vmRows()).find((v) => v.vmId === 'fo-prod')!;
    expect(row.failedOver).toEqual({ runId: 'fo-run-1', plan: 'ransom', backupId: 'b2', at: '2026-12-07T11:00:02.000Z' });
    const lines = vmsTable([row]);
    expect(lines[0]).toMatch(/FAILED OVER$/);
    expect(lines[1]).toMatch(/b2 \(ransom, \S+ \S+\)$/);

    const job = await planFailback(planInput('fb-1'), { catalog, recovery, now });
    expect(job).toMatchObject({ base: { backupId: 'b2' }, baseFrom: 'failover', failoverRunId: 'fo-run-1' });
    // --base still wins.
    expect(await planFailback(planInput('fb-2', 'b1'), { catalog, recovery, now })).toMatchObject({ base: { backupId: 'b1' }, baseFrom: 'request' });

    const done = { domain: 'x', state: 'running', seconds: 1, stoppedAt: now().toISOString() };
    const report = await recordFailback(
      {
        job,
        finalBackupId: 'd1',
        sync: [],
        final: [],
        stopped: done,
        started: { domain: 'fo-prod', state: 'running', readySeconds: 3, readyAt: now().toISOString(), line: '' },
        replica: { domain: null, failoverRunId: null, backupId: null, checkpointsRemoved: 0 },
      },
      { recovery, now },
    );
    expect(report).toMatchObject({ baseBackupId: 'b2', baseFrom: 'failover', failoverRunId: 'fo-run-1', failoversReleased: ['fo-run-1'] });
    expect(await recovery.activeFailover('fo-prod')).toBeUndefined();
    expect((await recovery.listFailovers('fo-prod')).find((f) => f.runId === 'fo-run-1')).toMatchObject({ releasedBy: 'fb-1' });
    expect((await vmRows()).find((v) => v.vmId === 'fo-prod')!.failedOver).toBeNull();
  });

  it('refuses to start from a failed-over point that is no longer committed, naming it and what to do', async () => {
    await recordFailoverPlan(
      { runId: 'fo-run-2', plan: 'ransom', test: false, booted: [{ index: 0, vms: [vmResult('b9', '2026-12-07T11:30:12.000Z')] }] },
      { recovery, now },
    );
    await expect(planFailback(planInput('fb-3'), { catalog, recovery, now })).rejects.toThrow(
      /VM 'fo-prod' was failed over \(run fo-run-2\) at backup b9, which is no longer in the catalog: .*"baseBackupId" \(lifeboat failback --base\)/,
    );
  });
});
