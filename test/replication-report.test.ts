/** ReportReplication (functions/replicate/replication-report.ts) and the quarantine records, on a real dynalite catalog. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Catalog } from '../functions/catalog/catalog.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { reportReplication } from '../functions/replicate/replication-report.ts';
import { startTestCatalog } from './helpers/catalog.ts';

const NOW = new Date('2026-11-23T12:00:00Z');
const hoursAgo = (h: number) => new Date(NOW.getTime() - h * 3600_000).toISOString();
let catalog: Catalog;
let recovery: RecoveryCatalog;
let close: () => Promise<void>;

async function committed(vmId: string, backupId: string, startedH: number) {
  await catalog.startBackup({ vmId, backupId, runId: 'r', policyId: 'p-dr', status: 'running', parentBackupId: null, startedAt: hoursAgo(startedH) });
  await catalog.commitBackup(vmId, backupId, [], new Date(hoursAgo(startedH - 0.5)));
}

beforeAll(async () => {
  ({ catalog, recovery, close } = await startTestCatalog());
  await catalog.putPolicy({
    policyId: 'p-dr',
    vmIds: ['vm-a', 'vm-b', 'vm-c'],
    bucket: 'main',
    chunkSize: 1 << 20,
    slotLimit: 1,
    replicateTo: { repositoryId: 'dr', bucket: 'dr-bucket' },
  });
  await catalog.putPolicy({ policyId: 'p-local', vmIds: ['vm-a'], bucket: 'main', chunkSize: 1 << 20, slotLimit: 1 });
  // vm-a: two backups, only the older one copied to the DR site; vm-b: one backup, never copied; vm-c: none.
  await committed('vm-a', '20261122T060000000Z-a', 30);
  await committed('vm-a', '20261123T060000000Z-a', 6);
  await recovery.putReplica({ vmId: 'vm-a', backupId: '20261122T060000000Z-a', bucket: 'dr-bucket', replicatedAt: hoursAgo(29), replicationId: 'x' });
  await recovery.putReplica({ vmId: 'vm-a', backupId: '20261122T060000000Z-a', bucket: 'other-bucket', replicatedAt: hoursAgo(1), replicationId: 'y' });
  await committed('vm-b', '20261123T020000000Z-b', 10);
});
afterAll(async () => close?.());

describe('reportReplication', () => {
  it("reports the oldest newest verified DR copy of the policy's VMs, counting a VM never copied from its oldest backup", async () => {
    const r = await reportReplication({ policyId: 'p-dr', started: false }, { catalog, recovery, now: () => NOW });
    expect(r).toEqual({
      policyId: 'p-dr',
      drBucket: 'dr-bucket',
      vms: { 'vm-a': 30, 'vm-b': 10 },
      vmCount: 2,
      drRecoveryPointAgeHours: 30,
      replicationStartFailed: true,
    });
  });

  it('follows the newest copy once it is there, and reports a start only when told', async () => {
    await recovery.putReplica({ vmId: 'vm-a', backupId: '20261123T060000000Z-a', bucket: 'dr-bucket', replicatedAt: hoursAgo(5), replicationId: 'z' });
    const r = await reportReplication({ policyId: 'p-dr' }, { catalog, recovery, now: () => NOW });
    expect(r).toMatchObject({ vms: { 'vm-a': 6, 'vm-b': 10 }, drRecoveryPointAgeHours: 10, replicationStartFailed: null });
  });

  it('reports nothing for a policy that does not replicate', async () => {
    expect(await reportReplication({ policyId: 'p-local', started: true }, { catalog, recovery, now: () => NOW })).toMatchObject({
      drBucket: null,
      drRecoveryPointAgeHours: null,
    });
  });
});

describe('quarantine records and healing', () => {
  const base = { reason: 'failed authentication', vmId: 'vm-a', backupId: 'b', verifyId: 'v1', quarantinedAt: NOW.toISOString() };
  it('lists quarantined chunks per repository (a repeat record is one chunk) and clears them', async () => {
    await recovery.putQuarantine('|main', { ...base, chunkId: 'c1', objectKey: 'chunks/c1/c1', quarantineKey: 'quarantine/v1/chunks/c1/c1' });
    await recovery.putQuarantine('|main', {
      ...base,
      chunkId: 'c1',
      objectKey: 'chunks/c1/c1',
      verifyId: 'v2',
      reason: 'the chunk is missing from the repository',
    });
    await recovery.putQuarantine('|other', { ...base, chunkId: 'c2', objectKey: 'chunks/c2/c2' });
    expect(await recovery.quarantinedChunks('|main', 100)).toEqual(['c1']);
    expect(await recovery.quarantinedChunks('|other', 100)).toEqual(['c2']);
    await recovery.clearQuarantine('|main', ['c1', 'c1']);
    expect(await recovery.quarantinedChunks('|main', 100)).toEqual([]);
    expect(await recovery.quarantinedChunks('|other', 100)).toEqual(['c2']);
  });

  it('turns only a damaged backup back to committed, returning the damage it had', async () => {
    const damage = {
      verifyId: 'v1',
      foundAt: NOW.toISOString(),
      findings: [{ backupId: '20261123T020000000Z-b', diskId: 'disk0', offsets: [0], objectKey: 'chunks/c1/c1', reason: 'x' }],
    };
    expect(await recovery.markHealthy('vm-b', '20261123T020000000Z-b', { verifyId: 'v3', healedAt: NOW.toISOString() })).toBeUndefined();
    expect(await recovery.markDamaged('vm-b', '20261123T020000000Z-b', damage)).toBe(true);
    expect(await recovery.markHealthy('vm-b', '20261123T020000000Z-b', { verifyId: 'v3', healedAt: NOW.toISOString() })).toEqual(damage);
    expect(await catalog.getBackup('vm-b', '20261123T020000000Z-b')).toMatchObject({ status: 'committed', healed: { verifyId: 'v3' } });
    expect((await catalog.getBackup('vm-b', '20261123T020000000Z-b')) as unknown as { damage?: unknown }).not.toHaveProperty('damage');
  });
});
