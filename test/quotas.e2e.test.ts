/**
 * The real Backup workflow against Step Functions' payload quota on the embedded stack: its
 * `BackupVms` Map collects every VM's outcome into one payload, and Summarize's result holds
 * them all again, both growing with the policy's VM count, so a large enough policy fails with
 * States.DataLimitExceeded in AWS and here. Reaching 256 KiB takes a couple of hundred VMs;
 * the quota is lowered to 8 KiB so a handful do, and the real quota's VM count is
 * extrapolated from the measured growth per VM and printed.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { AWS_QUOTAS, payloadSize } from '../local/quotas.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
const LIMIT = 8 * 1024;
let t: TestStack;

beforeAll(async () => {
  t = await startTestStack({ movers: 2, slots: 2, quotas: { payloadBytes: LIMIT } });
}, 120_000);
afterAll(async () => {
  await t?.close();
});

/** A policy of `count` fresh 1 MiB VMs on site-a's two hosts. */
async function policy(name: string, count: number): Promise<string> {
  const vmIds: string[] = [];
  for (let i = 0; i < count; i++) {
    const vmId = `${name}-vm-${i}`;
    const dir = join(t.dir, 'vms', vmId);
    await createVmFolder(dir, { name: vmId, disks: [{ id: 'disk0', sizeBytes: MiB }] }, seededRng(100 + i));
    await t.stack.catalog.putVm({ vmId, host: i % 2 ? 'esx-02' : 'esx-01', source: dir });
    vmIds.push(vmId);
  }
  await t.stack.catalog.putPolicy({ policyId: name, vmIds, bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });
  return name;
}

/** The output size of each named state of a Backup execution, from its history. */
async function outputSizes(executionArn: string, states: string[]): Promise<Record<string, number>> {
  const file = join(t.stack.endpoints.dataDir, 'executions', `${executionArn.split(':').slice(-2).join('--')}.history.jsonl`);
  const events = (await readFile(file, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { type: string; state?: { name: string; output?: unknown } });
  const sizes = Object.fromEntries(states.map((s) => [s, payloadSize(events.find((e) => e.type === 'StateExited' && e.state?.name === s)?.state?.output)]));
  // The execution's record keeps its history's length as AWS counts it (local/quota-guard.ts).
  const record = JSON.parse(await readFile(file.replace(/\.history\.jsonl$/, '.json'), 'utf8')) as { quotaUsage: { historyEvents: number } };
  return { ...sizes, history: record.quotaUsage.historyEvents };
}

it('fails the Backup workflow with States.DataLimitExceeded at the first state whose output passes the quota: Summarize, then the BackupVms Map', async () => {
  const states = ['Plan', 'BackupVms', 'Summarize']; // in the order the workflow runs them
  const backup = async (vms: number) => runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: await policy(`p${vms}`, vms) }, { pollMs: 300 });
  const sizes: Record<number, Record<string, number>> = {};
  for (const n of [2, 4]) {
    const d = await backup(n);
    expect(d.status, d.cause).toBe('SUCCEEDED');
    sizes[n] = await outputSizes(d.executionArn!, states);
  }
  // The growth per VM of each state's output, and the VM count from which it passes a quota.
  const perVm = Object.fromEntries(states.map((s) => [s, (sizes[4]![s]! - sizes[2]![s]!) / 2]));
  const vmsOver = (s: string, limit: number) => Math.ceil((limit + 1 - sizes[2]![s]!) / perVm[s]! + 2);
  process.stdout.write(`Backup payloads: ${states.map((s) => `${s} ${sizes[2]![s]} B at 2 VMs, +${perVm[s]} B per VM, over ${AWS_QUOTAS.payloadBytes} B from ${vmsOver(s, AWS_QUOTAS.payloadBytes)} VMs`).join('; ')}\n`);
  for (const s of states) expect(perVm[s], s).toBeGreaterThan(0);
  // History events grow per VM too (about 60: nine tasks, three Choices, AcquireSlot's retries vary).
  const eventsPerVm = (sizes[4]!.history! - sizes[2]!.history!) / 2;
  process.stdout.write(`Backup history: ${sizes[2]!.history} events at 2 VMs, +${eventsPerVm} per VM, over ${AWS_QUOTAS.historyEvents} from ${Math.ceil((AWS_QUOTAS.historyEvents + 1 - sizes[2]!.history!) / eventsPerVm + 2)} VMs\n`);
  expect(eventsPerVm).toBeGreaterThan(40);

  // Summarize's output (every VM's outcome and totals) outgrows the Map's, which outgrows Plan's.
  const over = Object.fromEntries(states.map((s) => [s, vmsOver(s, LIMIT)]));
  expect(over.Summarize).toBeLessThan(over.BackupVms!);
  expect(over.BackupVms).toBeLessThan(over.Plan!);
  expect(over.BackupVms).toBeLessThan(10); // one-digit VM numbers keep every VM's payload the same size

  const fits = await backup(over.Summarize! - 1);
  expect(fits.status, fits.cause).toBe('SUCCEEDED');
  const cause = (state: string) => new RegExp(`^The state/task '${state}' returned a result with a size exceeding the maximum number of bytes service limit\\. \\(\\d+ bytes; the limit is ${LIMIT}\\)$`);
  for (const [vms, state] of [[over.Summarize!, 'Summarize'], [over.BackupVms!, 'BackupVms']] as const) {
    const d = await backup(vms);
    expect(d.status, `${vms} VMs`).toBe('FAILED');
    expect(d.error).toBe('States.DataLimitExceeded');
    expect(d.cause).toMatch(cause(state));
  }
}, 600_000);
