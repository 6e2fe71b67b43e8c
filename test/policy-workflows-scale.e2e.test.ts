/**
 * The per-policy workflows that iterate a policy's VMs or backups at fleet size, on the
 * embedded stack: a Prune of a policy of 300 VMs (`npm run test:policy-scale`; 40 in `npm test`; three committed backups each, keep the
 * newest) runs one child execution per expired backup through a Distributed Map reading the
 * list PlanPrune wrote to S3, so no payload and no history grows with the fleet. The backups
 * are catalog records without manifests (a fast stand-in for real backups: PruneBackup lists
 * and deletes what is there, here nothing), so the control plane runs for real at this size
 * without first backing up 300 VMs. The largest payload and history of all executions are
 * asserted far under what the former inline Map needed, and printed.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mapLimit } from '../core/concurrency.ts';
import { runExecution } from '../local/client.ts';
import type { QuotaUsage } from '../local/quota-guard.ts';
import type { ExecutionRecord } from '../local/sfn-api.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

/** 40 in `npm test` (80 child executions, within its budget); `npm run test:policy-scale` runs 300. */
const VMS = Number(process.env.LIFEBOAT_POLICY_SCALE_VMS ?? 40);
let t: TestStack;

beforeAll(async () => {
  t = await startTestStack({ movers: 0 });
}, 300_000);
afterAll(async () => {
  await t?.close();
});

/** The execution and its Map Runs' children, with what each used of the quotas. */
async function family(executionArn: string): Promise<(ExecutionRecord & { quotaUsage: QuotaUsage })[]> {
  const folder = join(t.stack.endpoints.dataDir, 'executions');
  const all = await Promise.all(
    (await readdir(folder))
      .filter((f) => f.endsWith('.json'))
      .map(async (f) => JSON.parse(await readFile(join(folder, f), 'utf8')) as ExecutionRecord & { quotaUsage: QuotaUsage }),
  );
  return all.filter((r) => r.executionArn === executionArn || r.parentExecutionArn === executionArn);
}

function largest(runs: (ExecutionRecord & { quotaUsage: QuotaUsage })[]) {
  const history = runs.reduce((a, b) => (b.quotaUsage.historyEvents > a.quotaUsage.historyEvents ? b : a));
  const payload = runs.reduce((a, b) => (b.quotaUsage.largestPayload.bytes > a.quotaUsage.largestPayload.bytes ? b : a));
  return { history: history.quotaUsage.historyEvents, payload: payload.quotaUsage.largestPayload };
}

it(`prunes a policy of ${VMS} VMs with one child execution per expired backup, no payload or history growing with the fleet`, async () => {
  const { catalog } = t.stack;
  const vmIds = Array.from({ length: VMS }, (_, i) => `prune-vm-${String(i).padStart(4, '0')}`);
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
  process.stdout.write(`seeded ${VMS} VMs and ${3 * VMS} backups\n`);
  await catalog.putPolicy({ policyId: 'p-scale', vmIds, bucket: t.stack.endpoints.bucket, chunkSize: 1024 * 1024, slotLimit: 1, retention: { keepLast: 1 } });
  const started = performance.now();
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Prune!, { policyId: 'p-scale' }, { pollMs: 500 });
  const seconds = (performance.now() - started) / 1000;
  expect(d.status, d.cause).toBe('SUCCEEDED');
  expect(JSON.parse(d.output!)).toMatchObject({ pruned: 2 * VMS, keptCount: 0, skipped: 0, keepCount: VMS, removeCount: 2 * VMS });
  expect((await catalog.listBackups(vmIds[VMS - 1]!)).map((b) => b.backupId)).toEqual([`20261103T000000000Z-${vmIds[VMS - 1]}`]);
  const runs = await family(d.executionArn!);
  expect(runs).toHaveLength(1 + 2 * VMS); // the prune and one child per expired backup
  const big = largest(runs);
  process.stdout.write(
    `Prune of ${VMS} VMs (${2 * VMS} backups removed) in ${seconds.toFixed(1)} s: ${runs.length} executions; largest history ${big.history} events, largest payload ${big.payload.bytes} B (${big.payload.where})\n`,
  );
  // The inline Map this replaced carried every PruneItem (~300 B each) in one payload and ~8 events per backup in one history.
  expect(big.payload.bytes).toBeLessThan(4096);
  expect(big.history).toBeLessThan(100);
}, 600_000);
