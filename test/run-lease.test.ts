/** One Backup run per policy at a time: the run lease (functions/backup/run-lease.ts) on dynalite, and two runs of one policy on the embedded stack. */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireRunLease, releaseRunLease, RUN_LEASE_MS } from '../functions/backup/run-lease.ts';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startTestCatalog } from './helpers/catalog.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;

describe('the run lease', () => {
  let c: Awaited<ReturnType<typeof startTestCatalog>>;
  beforeAll(async () => {
    c = await startTestCatalog();
  });
  afterAll(async () => c?.close());

  it('refuses a second run of the policy naming the execution that holds it, until that one gives it back', async () => {
    const deps = { catalog: c.catalog, now: () => 1_000 };
    await acquireRunLease({ policyId: 'p1', executionArn: 'arn:run-a' }, deps);
    await expect(acquireRunLease({ policyId: 'p1', executionArn: 'arn:run-b' }, deps)).rejects.toMatchObject({
      name: 'Run.Busy',
      message: expect.stringMatching(/policy 'p1' already has a Backup run in progress: execution arn:run-a;.*Wait for that run to end, or stop it/),
    });
    await acquireRunLease({ policyId: 'p2', executionArn: 'arn:run-b' }, deps); // another policy is not held up
    await releaseRunLease({ policyId: 'p1', executionArn: 'arn:run-b' }, deps); // not the holder: no effect
    await expect(acquireRunLease({ policyId: 'p1', executionArn: 'arn:run-b' }, deps)).rejects.toMatchObject({ name: 'Run.Busy' });
    await releaseRunLease({ policyId: 'p1', executionArn: 'arn:run-a' }, deps);
    await acquireRunLease({ policyId: 'p1', executionArn: 'arn:run-b' }, deps);
  });

  it("is given back on the failure path, which then fails with the run's own error", async () => {
    const deps = { catalog: c.catalog, now: () => 1_000 };
    await acquireRunLease({ policyId: 'p3', executionArn: 'arn:run-a' }, deps);
    await expect(
      releaseRunLease({ policyId: 'p3', executionArn: 'arn:run-a', error: { Error: 'Catalog.PolicyNotFound', Cause: 'gone' } }, deps),
    ).rejects.toMatchObject({ name: 'Catalog.PolicyNotFound', message: 'gone' });
    await acquireRunLease({ policyId: 'p3', executionArn: 'arn:run-b' }, deps);
  });

  it('expires, so a run that died without any cleanup blocks its policy no longer than a run may last', async () => {
    await acquireRunLease({ policyId: 'p4', executionArn: 'arn:dead' }, { catalog: c.catalog, now: () => 0 });
    await expect(acquireRunLease({ policyId: 'p4', executionArn: 'arn:next' }, { catalog: c.catalog, now: () => RUN_LEASE_MS - 1 })).rejects.toMatchObject({
      name: 'Run.Busy',
    });
    await acquireRunLease({ policyId: 'p4', executionArn: 'arn:next' }, { catalog: c.catalog, now: () => RUN_LEASE_MS + 1 });
  });
});

describe('two Backup runs of one policy at once', () => {
  let t: TestStack;
  beforeAll(async () => {
    t = await startTestStack({ movers: 1 });
  }, 120_000);
  afterAll(async () => t?.close());

  it('runs one; the other fails with Run.Busy naming it, and backs nothing up', async () => {
    const vmDir = join(t.dir, 'vm-twice');
    await createVmFolder(vmDir, { name: 'vm-twice', disks: [{ id: 'disk0', sizeBytes: 4 * MiB }] }, seededRng(3));
    await t.stack.catalog.putVm({ vmId: 'vm-twice', host: 'esx-02', source: vmDir });
    await t.stack.catalog.putPolicy({ policyId: 'p-twice', vmIds: ['vm-twice'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });
    const arn = t.stack.endpoints.backupStateMachineArn;
    const runs = await Promise.all([runExecution(t.sfn, arn, { policyId: 'p-twice' }), runExecution(t.sfn, arn, { policyId: 'p-twice' })]);
    const ok = runs.filter((r) => r.status === 'SUCCEEDED');
    const refused = runs.filter((r) => r.status === 'FAILED');
    expect(ok).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.error).toBe('Run.Busy');
    expect(refused[0]!.cause).toContain(ok[0]!.executionArn!);
    expect(await t.stack.catalog.listBackups('vm-twice')).toHaveLength(1);
    // Given back: the next run goes ahead.
    expect((await runExecution(t.sfn, arn, { policyId: 'p-twice' })).status).toBe('SUCCEEDED');
  }, 120_000);
});
