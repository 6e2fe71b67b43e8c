/**
 * The backup spine end to end: the embedded stack running the synthesized ASL, real
 * mover processes, dynalite and s3rver. Full → 2% change → incremental → restore.
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { restoreVm } from '../mover/pipeline/restore-vm.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;

async function addVm(vmId: string, sizes: number[]) {
  const dir = join(t.dir, 'vms', vmId);
  // A fixed seed fixes the layout of zero, text and random runs (and so the ratios asserted below).
  await createVmFolder(dir, { name: vmId, disks: sizes.map((s, i) => ({ id: `disk${i}`, sizeBytes: s })) }, seededRng(7));
  await t.stack.catalog.putVm({ vmId, host: 'esx-01', source: dir });
  return dir;
}

async function backup(policyId: string) {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId });
  return d;
}

beforeAll(async () => {
  t = await startTestStack({ movers: 2 });
});
afterAll(async () => {
  await t?.close();
});

describe('backup workflow on the embedded stack', () => {
  it('backs up fully, then incrementally after a 2% change, and restores byte-identical', async () => {
    const vmDir = await addVm('vm-a', [48 * MiB, 16 * MiB]);
    await t.stack.catalog.putPolicy({ policyId: 'p-a', vmIds: ['vm-a'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });

    const full = await backup('p-a');
    expect(full.status).toBe('SUCCEEDED');
    const fullSummary = JSON.parse(full.output!) as RunSummary;
    expect(fullSummary).toMatchObject({ committed: 1, failed: 0 });
    expect(fullSummary.totals.bytesScanned).toBe(64 * MiB);
    expect(fullSummary.totals.uploadedChunks).toBeGreaterThan(0);

    const changed = await changeDisk(join(vmDir, 'disk0.raw'), 48 * MiB, 0.02, 2, seededRng(11));
    expect(changed).toBeGreaterThan(0.015 * 48 * MiB);
    const incr = await backup('p-a');
    expect(incr.status).toBe('SUCCEEDED');
    const incrSummary = JSON.parse(incr.output!) as RunSummary;
    expect(incrSummary.committed).toBe(1);
    expect(incrSummary.totals.parentChunks).toBeGreaterThan(0);
    // The incremental uploads at most 5% of what the full stored.
    expect(incrSummary.totals.bytesStored).toBeLessThanOrEqual(0.05 * fullSummary.totals.bytesStored);

    const backups = await t.stack.catalog.listBackups('vm-a');
    expect(backups.map((b) => b.status)).toEqual(['committed', 'committed']);
    const latest = backups[0]!;
    expect(latest.parentBackupId).toBe(backups[1]!.backupId);

    const e = t.stack.endpoints;
    const repository = await openRepository(e);
    const target = join(t.dir, 'restore-a');
    const restored = await restoreVm({ repository, backupId: latest.backupId, diskIds: latest.disks!.map((d) => d.diskId), targetDir: target });
    for (const d of restored.disks) expect(await sha256File(d.path)).toBe(await sha256File(join(vmDir, `${d.diskId}.raw`)));
    // Snapshots were released: no frozen copies are left in the VM folder.
    expect(await readdir(join(vmDir, '.lifeboat-snapshots'))).toEqual([]);
    // The work was done by mover processes that pulled it over the Step Functions API.
    const workers = new Set(t.logs.filter((l) => l.event === 'task.succeeded').map((l) => l.mover));
    expect(workers.size).toBeGreaterThanOrEqual(1);
    await rm(target, { recursive: true, force: true });
  });

  it('fails the execution with a cause naming an unknown policy', async () => {
    const d = await backup('no-such-policy');
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Catalog.PolicyNotFound');
    expect(d.cause).toContain("'no-such-policy'");
  });

  it('fails only the VM whose disk file is missing, names the file, and commits nothing for it', async () => {
    const goodDir = await addVm('vm-good', [8 * MiB]);
    const badDir = await addVm('vm-bad', [8 * MiB, 4 * MiB]);
    await rm(join(badDir, 'disk1.raw'));
    await t.stack.catalog.putPolicy({ policyId: 'p-mixed', vmIds: ['vm-good', 'vm-bad'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });

    const d = await backup('p-mixed');
    expect(d.status).toBe('SUCCEEDED');
    const summary = JSON.parse(d.output!) as RunSummary;
    expect(summary).toMatchObject({ committed: 1, failed: 1 });
    const bad = summary.vms.find((v) => v.vmId === 'vm-bad')!;
    expect(bad.status).toBe('failed');
    expect(bad.error?.Error).toBe('Mover.SourceUnavailable');
    expect(bad.error?.Cause).toContain(join(badDir, 'disk1.raw'));

    expect((await t.stack.catalog.listBackups('vm-bad')).map((b) => b.status)).toEqual(['failed']);
    expect(await t.stack.catalog.latestCommitted('vm-bad')).toBeUndefined();
    expect((await t.stack.catalog.listBackups('vm-good')).map((b) => b.status)).toEqual(['committed']);
    // The slot of the failed VM was released: both of the host's slots are free again.
    for (const dir of [goodDir, badDir]) expect(await readdir(join(dir, '.lifeboat-snapshots')).catch(() => [])).toEqual([]);
  });
});
