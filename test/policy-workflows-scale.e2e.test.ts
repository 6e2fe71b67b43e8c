/**
 * The per-policy workflows that iterate a policy's VMs or backups at fleet size, on the
 * embedded stack: each plans its items into the stack's bucket and runs one child
 * execution per item through a Distributed Map, so no payload and no history grows with
 * the fleet; the largest of each, over the run and all its children, is asserted and
 * printed. `npm run test:policy-scale` runs 300 VMs; `npm test` 6 (40 for Prune).
 *
 * Prune: three committed backups per VM, keep the newest. The backups are catalog records
 * without manifests (a fast stand-in for real backups: PruneBackup lists and deletes what
 * is there, here nothing), so the control plane runs for real without first backing up
 * the fleet.
 *
 * ReplicatePolicy and DeepVerifyPolicy: a template VM is backed up and replicated by real
 * movers (site-a, dr); then the movers are an instant stand-in (test/helpers/instant-mover.ts)
 * that answers every VM's tasks with the template's: the policy's VMs are backed up (their
 * manifests are real, sealed under their own backup ids), replicated (the stand-in copies
 * each manifest to the DR repository, which holds the template's packs, so VerifyReplica
 * checks each copy for real) and deep-verified (the stand-in counts the template's chunks
 * and reads nothing).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mapLimit } from '../core/concurrency.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import type { DeepVerifyPolicySummary, RunSummary } from '../contracts/workflow-outputs.ts';
import type { ReplicatePolicySummary } from '../functions/replicate/replicate-policy.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { repositoryStore } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { executionFamily, largestUsage } from './helpers/execution-family.ts';
import { startInstantMover, type InstantMover } from './helpers/instant-mover.ts';
import { stackRecoveryCatalog, startTestStack, type TestStack } from './helpers/stack.ts';

const SCALE = process.env.LIFEBOAT_POLICY_SCALE_VMS;
/** VMs of the replicated and verified policy: 6 in `npm test` (its cost is mostly the template's real backup and replication). */
const VMS = Number(SCALE ?? 6);
/** VMs of the pruned policy: 40 in `npm test` (80 child executions, within its budget). */
const PRUNE_VMS = Number(SCALE ?? 40);
const MiB = 1024 * 1024;
const example = loadConfig();
/** The example's sites, groups and hosts; its DR repository replicated by group dr without a standby folder (the stand-in keeps no replica). */
const config: LifeboatConfig = {
  ...example,
  repositories: example.repositories.map((r) => (r.replication ? { ...r, replication: { moverGroup: r.replication.moverGroup } } : r)),
  policies: [],
  backup: { vmConcurrency: 50 },
};
let t: TestStack;
const standIns: InstantMover[] = [];
/** VMs whose recovery tasks the stand-in fails. */
const failVms = new Set<string>();

beforeAll(async () => {
  t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config });
}, 300_000);
afterAll(async () => {
  await Promise.all(standIns.map((m) => m.stop()));
  await t?.close();
});

const run = async (machine: string, input: unknown) => runExecution(t.sfn, t.stack.endpoints.stateMachines[machine]!, input, { pollMs: 300 });

/** The run's and its children's largest history and payload, printed, and asserted bounded whatever the fleet. */
async function assertBounded(label: string, executionArn: string, children: number, seconds: number) {
  const runs = await executionFamily(t.stack.endpoints.dataDir, executionArn);
  expect(runs).toHaveLength(1 + children);
  const big = largestUsage(runs);
  const parent = runs.find((r) => r.executionArn === executionArn)!;
  process.stdout.write(
    `${label} of ${VMS} VMs in ${seconds.toFixed(1)} s: ${runs.length} executions; parent history ${parent.quotaUsage.historyEvents} events, largest history ${big.history} events (${big.historyExecution}), largest payload ${big.payload.bytes} B (${big.payload.where}, ${big.payloadExecution})\n`,
  );
  // The listings of the outputs stop at 64 KiB (functions/commons/map-run.ts); the histories are one VM's steps or the run's few states.
  expect(big.payload.bytes).toBeLessThan(100 * 1024);
  expect(big.history).toBeLessThan(200);
  expect(parent.quotaUsage.historyEvents).toBeLessThan(60);
}

it(`prunes a policy of ${PRUNE_VMS} VMs with one child execution per expired backup, no payload or history growing with the fleet`, async () => {
  const { catalog } = t.stack;
  const vmIds = Array.from({ length: PRUNE_VMS }, (_, i) => `prune-vm-${String(i).padStart(4, '0')}`);
  await mapLimit(vmIds, 16, async (vmId) => {
    await catalog.putVm({ vmId, host: 'esx-01', source: `/vms/${vmId}` });
    for (let b = 0; b < 3; b++) {
      await catalog.startBackup({
        vmId,
        backupId: `2026110${b + 1}T000000000Z-${vmId}`,
        runId: `run-${b}`,
        policyId: 'p-scale',
        status: 'committed',
        parentBackupId: null,
        startedAt: `2026-11-0${b + 1}T00:00:00.000Z`,
      });
    }
  });
  process.stdout.write(`seeded ${PRUNE_VMS} VMs and ${3 * PRUNE_VMS} backups\n`);
  await catalog.putPolicy({ policyId: 'p-scale', vmIds, bucket: t.stack.endpoints.bucket, chunkSize: 1024 * 1024, slotLimit: 1, retention: { keepLast: 1 } });
  const started = performance.now();
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Prune!, { policyId: 'p-scale' }, { pollMs: 500 });
  const seconds = (performance.now() - started) / 1000;
  expect(d.status, d.cause).toBe('SUCCEEDED');
  expect(JSON.parse(d.output!)).toMatchObject({ pruned: 2 * PRUNE_VMS, keptCount: 0, skipped: 0, keepCount: PRUNE_VMS, removeCount: 2 * PRUNE_VMS });
  expect((await catalog.listBackups(vmIds[PRUNE_VMS - 1]!)).map((b) => b.backupId)).toEqual([`20261103T000000000Z-${vmIds[PRUNE_VMS - 1]}`]);
  const runs = await executionFamily(t.stack.endpoints.dataDir, d.executionArn!);
  expect(runs).toHaveLength(1 + 2 * PRUNE_VMS); // the prune and one child per expired backup
  const big = largestUsage(runs);
  process.stdout.write(
    `Prune of ${PRUNE_VMS} VMs (${2 * PRUNE_VMS} backups removed) in ${seconds.toFixed(1)} s: ${runs.length} executions; largest history ${big.history} events, largest payload ${big.payload.bytes} B (${big.payload.where})\n`,
  );
  // The inline Map this replaced carried every PruneItem (~300 B each) in one payload and ~8 events per backup in one history.
  expect(big.payload.bytes).toBeLessThan(4096);
  expect(big.history).toBeLessThan(100);
}, 600_000);

it(`replicates and deep-verifies a policy of ${VMS} VMs with one child execution per VM, no payload or history growing with the fleet`, async () => {
  const e = t.stack.endpoints;
  const { catalog } = t.stack;
  const replicateTo = { repositoryId: 'dr', ...e.repositories.dr!, moverGroup: 'dr' };
  // The template: backed up and replicated by the real movers (ReplicatePolicy through its Distributed Map, one child).
  const dir = join(t.dir, 'vms', 'template');
  await createVmFolder(dir, { name: 'template', disks: [{ id: 'disk0', sizeBytes: MiB }] }, seededRng(7));
  await catalog.putVm({ vmId: 'template', host: 'esx-02', source: dir });
  await catalog.putPolicy({ policyId: 'template', vmIds: ['template'], bucket: e.bucket, chunkSize: MiB, slotLimit: 2, replicateTo });
  const first = await runExecution(t.sfn, e.backupStateMachineArn, { policyId: 'template' }, { pollMs: 200 });
  expect(first.status, first.cause).toBe('SUCCEEDED');
  const firstRun = JSON.parse(first.output!) as RunSummary & { replication: { executionArn: string } };
  expect(firstRun, first.output).toMatchObject({ committed: 1, replication: { started: true } });
  const copied = await waitForExecution(t.sfn, firstRun.replication.executionArn, { pollMs: 200 });
  expect(copied.status, copied.cause).toBe('SUCCEEDED');
  expect(JSON.parse(copied.output!)).toMatchObject({ vms: 1, replicatedCount: 1, failedCount: 0, replicated: [{ replication: { vmId: 'template' } }] });
  const backupId = firstRun.vms[0]!.backupId;
  const record = (await catalog.getBackup('template', backupId))!;
  await Promise.all(t.movers.map((m) => m.stop(true)));

  const template = {
    backupId,
    snapshot: {
      handle: 'instant',
      config: {},
      disks: record.disks!.map((d) => ({ diskId: d.diskId, path: join(dir, `${d.diskId}.raw`), sizeBytes: d.sizeBytes })),
    },
    disks: record.disks!,
    repository: await stackRepositoryKeys(e),
  };
  const activity = (group: string) => e.activities[Object.keys(e.activities).find((a) => a.endsWith(`-mover-${group}`))!]!;
  for (const group of ['site-a', 'dr']) standIns.push(startInstantMover(t.sfn, activity(group), template, 8, { dr: repositoryStore(e, 'dr'), failVms }));

  const vmIds = Array.from({ length: VMS }, (_, i) => `pv-${String(i).padStart(4, '0')}`);
  for (const [i, vmId] of vmIds.entries()) await catalog.putVm({ vmId, host: i % 2 ? 'esx-01' : 'esx-02', source: dir });
  await catalog.putPolicy({ policyId: 'p-fleet', vmIds, bucket: e.bucket, chunkSize: MiB, slotLimit: 2, replicateTo });

  // The Backup run starts the policy's replication of the VMs it backed up.
  const backup = await runExecution(t.sfn, e.backupStateMachineArn, { policyId: 'p-fleet' }, { pollMs: 500 });
  expect(backup.status, backup.cause).toBe('SUCCEEDED');
  const backedUp = JSON.parse(backup.output!) as RunSummary & { replication: { executionArn: string } };
  expect(backedUp).toMatchObject({ committed: VMS, failed: 0 });
  let started = performance.now();
  const replicated = await waitForExecution(t.sfn, backedUp.replication.executionArn, { pollMs: 500 });
  expect(replicated.status, replicated.cause).toBe('SUCCEEDED');
  const rep = JSON.parse(replicated.output!) as ReplicatePolicySummary & { drRecoveryPointAgeHours: number };
  expect(rep).toMatchObject({ policyId: 'p-fleet', runId: backedUp.runId, vms: VMS, replicatedCount: VMS, failedCount: 0, skippedCount: 0 });
  expect(rep.replicated.length).toBeGreaterThan(0);
  expect(rep.drRecoveryPointAgeHours).toBeGreaterThanOrEqual(0);
  await assertBounded('ReplicatePolicy', replicated.executionArn!, VMS, (performance.now() - started) / 1000);

  started = performance.now();
  const verified = await run('DeepVerifyPolicy', { policyId: 'p-fleet', sample: 1 });
  expect(verified.status, verified.cause).toBe('SUCCEEDED');
  const dv = JSON.parse(verified.output!) as DeepVerifyPolicySummary;
  expect(dv).toMatchObject({ policyId: 'p-fleet', vms: VMS, verifiedCount: VMS, damagedCount: 0, failedCount: 0, skippedCount: 0 });
  expect(dv.verified[0]).toMatchObject({ damaged: false, findingsCount: 0 });
  expect(dv.verified.length).toBeGreaterThan(0);
  expect(dv.verified.length).toBeLessThanOrEqual(VMS);
  await assertBounded('DeepVerifyPolicy', verified.executionArn!, VMS, (performance.now() - started) / 1000);
}, 1_800_000);

it("fails a policy's verification naming the VM that failed, after every other VM was verified", async () => {
  failVms.add('pv-0001');
  const d = await run('DeepVerifyPolicy', { policyId: 'p-fleet', sample: 1 });
  expect(d.status).toBe('FAILED');
  expect(d.error).toBe('DeepVerify.VmsFailed');
  expect(d.cause).toContain(`1 of ${VMS} VM(s) could not be verified; the first, VM 'pv-0001': Mover.Failed`);
  const rec = (await stackRecoveryCatalog(t.stack.endpoints).getRecord('DEEPVERIFY', d.executionArn!.split(':').pop()!)) as {
    status: string;
    summary: Partial<DeepVerifyPolicySummary>;
  };
  expect(rec).toMatchObject({ status: 'failed', summary: { verifiedCount: VMS - 1, failedCount: 1 } });
}, 600_000);
