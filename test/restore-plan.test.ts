/** A plain restore (no backup named) never falls back silently past a damaged newest backup; a damaged backup named is refused, saying why and what to do. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { planRestore } from '../functions/restore/restore.ts';
import { startTestCatalog } from './helpers/catalog.ts';

let c: Awaited<ReturnType<typeof startTestCatalog>>;
beforeAll(async () => {
  c = await startTestCatalog();
});
afterAll(async () => c?.close());

it('says loudly which older backup it restores when the newest is damaged, naming the damaged one and the verification', async () => {
  await c.catalog.putVm({ vmId: 'vm-1', host: 'esx-01', source: '/vms/vm-1' });
  await c.catalog.putPolicy({ policyId: 'p', vmIds: ['vm-1'], bucket: 'repo', chunkSize: 1 << 20, slotLimit: 1 });
  const disks = [
    {
      diskId: 'd',
      sizeBytes: 1 << 20,
      manifestKey: 'm',
      stats: {
        bytesScanned: 0,
        bytesNew: 0,
        bytesZero: 0,
        bytesUploaded: 0,
        bytesStored: 0,
        chunks: 0,
        zeroChunks: 0,
        parentChunks: 0,
        dedupedChunks: 0,
        uploadedChunks: 0,
        seconds: 0,
      },
    },
  ];
  for (const id of ['20260101T000000000Z-a', '20260102T000000000Z-b']) {
    await c.catalog.startBackup({ vmId: 'vm-1', backupId: id, runId: 'r', policyId: 'p', status: 'running', parentBackupId: null, startedAt: 'x' });
    await c.catalog.commitBackup('vm-1', id, disks, new Date());
  }
  await c.recovery.markDamaged('vm-1', '20260102T000000000Z-b', { verifyId: 'verify-7', foundAt: 'x', findings: [] });
  const job = await planRestore(
    { restoreId: 'r1', request: { vmId: 'vm-1', target: '/tmp/t', moverGroup: 'site-a' } },
    { catalog: c.catalog, recovery: c.recovery, now: () => new Date() },
  );
  expect(job.backupId).toBe('20260101T000000000Z-a');
  expect(job.notice).toBe(
    "the newest backup 20260102T000000000Z-b of VM 'vm-1' is damaged (deep verification verify-7): restoring the older backup 20260101T000000000Z-a instead. " +
      'To restore the newest, let the next backup store its quarantined chunks again and deep-verify it, then restore it by name',
  );
});

it('refuses a damaged backup named, up front: the chunk, where it is stored, who found it, how to heal it and the older backup to restore instead', async () => {
  const chunk = 'ab'.repeat(32);
  await c.recovery.markDamaged('vm-1', '20260102T000000000Z-b', {
    verifyId: 'verify-8',
    foundAt: 'x',
    findings: [
      {
        backupId: '20260102T000000000Z-b',
        diskId: 'd',
        offsets: [3 << 20],
        objectKey: 'packs/cd/cdcd',
        chunkId: chunk,
        range: { offset: 4096, length: 1000 },
        reason: 'failed authentication',
      },
    ],
  });
  const plan = (backupId: string) =>
    planRestore(
      { restoreId: 'r2', request: { vmId: 'vm-1', backupId, target: '/tmp/t', moverGroup: 'site-a' } },
      { catalog: c.catalog, recovery: c.recovery, now: () => new Date() },
    );
  await expect(plan('20260102T000000000Z-b')).rejects.toMatchObject({
    name: 'Recovery.RequestInvalid',
    message:
      `backup '20260102T000000000Z-b' of VM 'vm-1' is damaged: chunk ${chunk} (disk 'd', offset ${3 << 20}, stored in packs/cd/cdcd bytes 4096+1000) does not open, found by deep verification verify-8; nothing was restored. ` +
      "To heal it, let the next backup of a VM that holds the chunk store it again (backups do that by themselves), then deep-verify backup '20260102T000000000Z-b' in full; " +
      "or restore the older backup '20260101T000000000Z-a' (committed " +
      (await c.catalog.getBackup('vm-1', '20260101T000000000Z-a'))!.committedAt +
      ')',
  });
  // The older one restores: only the damaged backup is refused.
  expect((await plan('20260101T000000000Z-a')).backupId).toBe('20260101T000000000Z-a');
});

it('plans an instant recovery only of a whole VM it can define: without define, with a pool or a boot check it is refused, naming why', async () => {
  const base = { vmId: 'vm-1', backupId: '20260101T000000000Z-a', target: '/tmp/t', moverGroup: 'site-a' };
  const plan = (request: object) =>
    planRestore(
      { restoreId: 'ri', request: request as Parameters<typeof planRestore>[0]['request'] },
      { catalog: c.catalog, recovery: c.recovery, now: () => new Date() },
    );
  await expect(plan({ ...base, instant: {} })).rejects.toThrow(/instant recovery runs the backup as a VM: it needs "define"/);
  await expect(plan({ ...base, instant: {}, define: { uri: 'qemu:///system', pool: 'p' } })).rejects.toThrow(
    /"pool" \(storage pool volumes\) is not supported with it/,
  );
  await expect(plan({ ...base, instant: {}, define: { uri: 'qemu:///system', bootCheck: { agent: true } } })).rejects.toThrow(
    /a boot check \(restore test\) removes it/,
  );
  const job = await plan({ ...base, instant: { moveBandwidthMiBs: 50 }, define: { uri: 'qemu:///system' } });
  expect(job).toMatchObject({ instant: { moveBandwidthMiBs: 50 }, define: { uri: 'qemu:///system' }, disks: [{ diskId: 'd' }] });
});

it("plans an export on the mover group of the VM's host, from the backup named or the newest, listening on loopback by default", async () => {
  const { planExport } = await import('../functions/export/export.ts');
  await c.catalog.putHost({ hostId: 'esx-01', moverGroup: 'site-a', site: 'site-a', maxConcurrentBackups: 1, datastores: {} });
  const p = await planExport({ exportId: 'e1', request: { vmId: 'vm-1', backupId: '20260101T000000000Z-a' } }, { catalog: c.catalog });
  expect(p).toMatchObject({
    moverGroup: 'site-a',
    export: { exportId: 'e1', backupId: '20260101T000000000Z-a', diskIds: ['d'], listen: { host: '127.0.0.1', port: 0 }, repository: { bucket: 'repo' } },
  });
  await expect(planExport({ exportId: 'e2', request: { vmId: 'vm-none' } }, { catalog: c.catalog })).rejects.toThrow(/VM 'vm-none' is not in the inventory/);
});
