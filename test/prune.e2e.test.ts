/**
 * The Prune workflow on the embedded stack: real backups by real movers, then a dry run,
 * a prune that removes manifests and catalog records, and the resumption of a prune
 * that stopped half-way.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { objectKeys } from '../repository/format.ts';
import type { PlannedPrune, PrunePlan } from '../functions/prune/prune.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository, repositoryStore } from '../local/stack.ts';
import { stackRecoveryCatalog, startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let vmDir: string;

const prune = (input: unknown) => runExecution(t.sfn, t.stack.endpoints.stateMachines.Prune!, input, { pollMs: 200 });
const backup = async () => {
  await changeDisk(join(vmDir, 'disk0.raw'), 6 * MiB, 0.1, 1, seededRng());
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-prune' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
};
/** A dry run's plan: its output names where PlanPrune wrote it (the stack's bucket), not the plan itself. */
const dryRun = async (policyId: string) => {
  const d = await prune({ policyId, dryRun: true });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const planned = JSON.parse(d.output!) as PlannedPrune;
  const { store } = await openRepository(t.stack.endpoints);
  return { planned, plan: JSON.parse((await store.get(planned.plan.key))!.toString('utf8')) as PrunePlan };
};
const ids = async () => (await t.stack.catalog.listBackups('vm-p')).map((b) => b.backupId);

beforeAll(async () => {
  t = await startTestStack({ movers: 1 });
  vmDir = join(t.dir, 'vms', 'vm-p');
  await createVmFolder(vmDir, { name: 'vm-p', disks: [{ id: 'disk0', sizeBytes: 6 * MiB }] }, seededRng(9));
  await t.stack.catalog.putVm({ vmId: 'vm-p', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({
    policyId: 'p-prune',
    vmIds: ['vm-p'],
    bucket: t.stack.endpoints.bucket,
    chunkSize: MiB,
    slotLimit: 1,
    retention: { keepLast: 2 },
  });
  for (let i = 0; i < 4; i++) await backup();
});
afterAll(async () => {
  await t?.close();
});

it('lists what would go and why on a dry run, and changes nothing', async () => {
  const before = await ids();
  expect(before).toHaveLength(4);
  const { planned, plan } = await dryRun('p-prune');
  expect(planned).toMatchObject({ dryRun: true, keepCount: 2, removeCount: 2, removeList: { count: 2 } });
  expect(plan).toMatchObject({ dryRun: true, keepCount: 2, removeCount: 2 });
  const decisions = plan.vms[0]!.decisions;
  expect(decisions.map((x) => [x.backupId, x.keep])).toEqual(before.map((id, i) => [id, i < 2]));
  expect(decisions[0]!.reason).toBe('keep-last (1 of 2)');
  expect(decisions[3]!.reason).toBe('older than what the rules keep (keep-last 2)');
  expect(await ids()).toEqual(before);
  const { store } = await openRepository(t.stack.endpoints);
  for (const id of before) expect(await store.head(objectKeys.manifest(id, 'disk0')), id).toBeDefined();
});

it('removes expired backups from the catalog and their manifests from the repository; the rest restore', async () => {
  const before = await ids();
  const d = await prune({ policyId: 'p-prune' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const s = JSON.parse(d.output!) as { pruned: number; objectsDeleted: number; bytesDeleted: number; kept: unknown[] };
  expect(s).toMatchObject({ pruned: 2, objectsDeleted: 6, kept: [] }); // each: its disk's manifest head, its one piece (format 3) and its VM config
  expect(s.bytesDeleted).toBeGreaterThan(0);
  expect(await ids()).toEqual(before.slice(0, 2));
  const { store } = await openRepository(t.stack.endpoints);
  for (const id of before.slice(2)) {
    expect(await store.head(objectKeys.manifest(id, 'disk0'))).toBeUndefined();
    expect(await store.head(objectKeys.vmConfig(id))).toBeUndefined();
  }
  // Both kept backups still restore (every chunk re-hashed); the newest equals the disk now.
  for (const [i, id] of before.slice(0, 2).entries()) {
    const r = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId: 'vm-p',
      backupId: id,
      diskId: 'disk0',
      target: join(t.dir, `after-prune-${i}.img`),
      moverGroup: 'site-a',
    });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    if (i === 0) expect((JSON.parse(r.output!) as RestoreSummary).disks[0]!.sha256).toBe(await sha256File(join(vmDir, 'disk0.raw')));
  }
  // ...and a second prune finds nothing more to do.
  expect((await dryRun('p-prune')).planned.removeCount).toBe(0);
});

it('finishes a prune that stopped after marking a backup', async () => {
  await backup();
  const list = await ids();
  expect(list).toHaveLength(3);
  const e = t.stack.endpoints;
  const recovery = stackRecoveryCatalog(e);
  // A prune that died right after its first step: the oldest is `pruning`, its manifests still there.
  expect(await recovery.beginPrune('vm-p', list[2]!, 'keep-last test', new Date())).toBe(true);
  const dry = (await dryRun('p-prune')).plan;
  expect(dry.remove.map((x) => x.backupId)).toEqual([list[2]]);
  expect(dry.remove[0]!.reason).toContain('an earlier prune began removing it (keep-last test)');
  const d = await prune({ policyId: 'p-prune' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  expect(await ids()).toEqual(list.slice(0, 2));
});

it('fails with a clear cause for a policy without retention or an unknown one', async () => {
  await t.stack.catalog.putPolicy({ policyId: 'p-none', vmIds: [], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
  const none = await prune({ policyId: 'p-none' });
  expect(none.status).toBe('FAILED');
  expect(none.cause).toContain("policy 'p-none' has no retention rules");
  const unknown = await prune({ policyId: 'nope' });
  expect(unknown.error).toBe('Catalog.PolicyNotFound');
});

it("removes a pruned backup's copy from the DR repository (on its own endpoint) too; the kept one still restores from there", async () => {
  const e = t.stack.endpoints;
  const dr = e.buckets.dr!;
  const dir = join(t.dir, 'vms', 'vm-q');
  await createVmFolder(dir, { name: 'vm-q', disks: [{ id: 'disk0', sizeBytes: 4 * MiB }] }, seededRng(12));
  await t.stack.catalog.putVm({ vmId: 'vm-q', host: 'esx-01', source: dir });
  await t.stack.catalog.putPolicy({
    policyId: 'p-q',
    vmIds: ['vm-q'],
    bucket: e.bucket,
    chunkSize: MiB,
    slotLimit: 1,
    retention: { keepLast: 1 },
    replicateTo: { repositoryId: 'dr', ...e.repositories.dr!, moverGroup: 'site-a' },
  });
  for (let i = 0; i < 2; i++) {
    await changeDisk(join(dir, 'disk0.raw'), 4 * MiB, 0.2, 1, seededRng(60 + i));
    const b = await runExecution(t.sfn, e.backupStateMachineArn, { policyId: 'p-q' }, { pollMs: 200 });
    expect(b.status, b.cause).toBe('SUCCEEDED');
    // Each run starts the replication of its backup.
    const r = await waitForExecution(t.sfn, (JSON.parse(b.output!) as { replication: { executionArn: string } }).replication.executionArn, { pollMs: 200 });
    expect(r.status, r.cause).toBe('SUCCEEDED');
  }
  const [newest, older] = (await t.stack.catalog.listBackups('vm-q')).map((b) => b.backupId);
  const drStore = repositoryStore(e, 'dr');
  expect(await drStore.head(objectKeys.manifest(older!, 'disk0'))).toBeDefined();

  const d = await prune({ policyId: 'p-q' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  expect(JSON.parse(d.output!)).toMatchObject({ pruned: 1, objectsDeleted: 6 }); // manifest head, its piece and the VM config, here and at DR
  expect(await drStore.head(objectKeys.manifest(older!, 'disk0'))).toBeUndefined();
  expect(await drStore.head(objectKeys.vmConfig(older!))).toBeUndefined();
  const recovery = stackRecoveryCatalog(e);
  expect(await recovery.getReplica('vm-q', dr, older!)).toBeUndefined();
  expect(await recovery.getReplica('vm-q', dr, newest!)).toBeDefined();
  const r = await runExecution(
    t.sfn,
    e.stateMachines.Restore!,
    { vmId: 'vm-q', target: join(t.dir, 'q-from-dr'), moverGroup: 'site-a', fromBucket: dr },
    { pollMs: 200 },
  );
  expect(r.status, r.cause).toBe('SUCCEEDED');
  expect((JSON.parse(r.output!) as RestoreSummary).disks[0]!.sha256).toBe(await sha256File(join(dir, 'disk0.raw')));
});
