/**
 * The real Backup workflow against Step Functions' payload quota on the embedded stack, the
 * quota lowered to 8 KiB so a handful of VMs would reach it if anything grew with them. The
 * run carries no VM list (Plan writes the lists to S3, the BackupHosts and per-host BackupVms
 * Distributed Maps read them, and Summarize reads the outcomes from the catalog) and each VM runs in a child execution of its
 * own, so the run's payloads and history stay the same size as VMs are added; a VM whose own
 * steps outgrow the quota fails alone, through its own failure path: snapshot and slot released.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { payloadSize } from '../local/quotas.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
const LIMIT = 8 * 1024;
let t: TestStack;

beforeAll(async () => {
  t = await startTestStack({ movers: 2, slots: 2, quotas: { payloadBytes: LIMIT } });
}, 300_000);
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

/** The output size of each named state of an execution, from its history, and its history's length as AWS counts it. */
async function outputSizes(executionArn: string, states: string[]): Promise<Record<string, number>> {
  const file = join(t.stack.endpoints.dataDir, 'executions', `${executionArn.split(':').slice(-2).join('--')}.history.jsonl`);
  const events = (await readFile(file, 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; state?: { name: string; output?: unknown } });
  const sizes = Object.fromEntries(states.map((s) => [s, payloadSize(events.find((e) => e.type === 'StateExited' && e.state?.name === s)?.state?.output)]));
  // The execution's record keeps its history's length as AWS counts it (local/quota-guard.ts).
  const record = JSON.parse(await readFile(file.replace(/\.history\.jsonl$/, '.json'), 'utf8')) as { quotaUsage: { historyEvents: number } };
  return { ...sizes, history: record.quotaUsage.historyEvents };
}

const backup = async (policyId: string) => runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 300 });

it("keeps the Backup run's payloads and history the same size whatever the number of VMs: each VM runs in its own child execution", async () => {
  const states = ['Plan', 'BackupHosts', 'ReleaseRunLease'];
  const sizes: Record<number, Record<string, number>> = {};
  for (const n of [2, 6]) {
    const d = await backup(await policy(`p${n}`, n));
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect(JSON.parse(d.output!)).toMatchObject({ committed: n, failed: 0 });
    sizes[n] = await outputSizes(d.executionArn!, states);
  }
  process.stdout.write(`Backup run at 2 and 6 VMs: ${[...states, 'history'].map((s) => `${s} ${sizes[2]![s]} / ${sizes[6]![s]}`).join('; ')}\n`);
  // The same but for the digits of a run id: nothing carries a VM list, and the history has no per-VM events.
  for (const s of states) expect(Math.abs(sizes[6]![s]! - sizes[2]![s]!), s).toBeLessThan(8);
  expect(sizes[6]!.history).toBe(sizes[2]!.history);
}, 600_000);

it('fails only the VM whose own execution outgrows the payload quota: it releases its snapshot and slot and says why, and the run goes on and gives its lease back', async () => {
  // Twelve disks: the VM's Dispatch results (about 750 B a disk) outgrow the lowered quota; its neighbour has one disk.
  const vmId = 'wide-vm';
  const dir = join(t.dir, 'vms', vmId);
  await createVmFolder(dir, { name: vmId, disks: Array.from({ length: 12 }, (_, i) => ({ id: `disk${i}`, sizeBytes: 64 * 1024 })) }, seededRng(5));
  await t.stack.catalog.putVm({ vmId, host: 'esx-01', source: dir });
  await policy('narrow', 1);
  await t.stack.catalog.putPolicy({ policyId: 'wide', vmIds: [vmId, 'narrow-vm-0'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2 });
  const d = await backup('wide');
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const summary = JSON.parse(d.output!) as { committed: number; failed: number; vms: { vmId: string; error?: { Error: string; Cause: string } }[] };
  expect(summary).toMatchObject({ committed: 1, failed: 1 });
  const failed = summary.vms.find((v) => v.vmId === vmId)!;
  const folder = join(t.stack.endpoints.dataDir, 'executions');
  const files = (await readdir(folder)).filter((f) => f.endsWith('.json'));
  const records = await Promise.all(
    files.map(async (f) => ({
      file: f,
      ...(JSON.parse(await readFile(join(folder, f), 'utf8')) as {
        executionArn: string;
        parentExecutionArn?: string;
        status: string;
        input: string;
        error?: string;
        cause?: string;
      }),
    })),
  );
  // The run's host child (one host here) started the VM's own child.
  const hostChild = records.find((c) => c.parentExecutionArn === d.executionArn)!;
  const child = records.find((c) => c.parentExecutionArn === hostChild.executionArn && c.input.includes('"wide-vm"'))!;
  expect(child.status, `${child.error} ${child.cause}`).toBe('SUCCEEDED');
  // The Dispatch Map's collected result fails the state with AWS's error, which its Catch names: the VM's failure path runs.
  expect(failed.error?.Error).toBe('States.DataLimitExceeded');
  expect(failed.error?.Cause).toMatch(
    /^The state\/task 'Dispatch' returned a result with a size exceeding the maximum number of bytes service limit\. \(\d+ bytes; the limit is 8192\) — VM 'wide-vm' \(12 disks\) outgrew Step Functions' payload quota .*Next step: give its policy a larger segmentSizeGiB/,
  );
  const history = (await readFile(join(folder, child.file.replace(/\.json$/, '.history.jsonl')), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; state?: { name: string } });
  const ran = history.filter((e) => e.type === 'StateEntered').map((e) => e.state!.name);
  expect(
    ran
      .filter((s) => /^(ReleaseSnapshotAfterFailure|RecordFailure|ReleaseSlotAfterFailure)\b/.test(s) && !s.endsWith('OnMoverGroup'))
      .map((s) => s.split(' ')[0]),
  ).toEqual(['ReleaseSnapshotAfterFailure', 'RecordFailure', 'ReleaseSlotAfterFailure']);
  expect(ran).not.toContain('Verify');
  // Its slot went back (not at lease expiry): nothing holds a slot of its host, and nobody is left in line.
  expect(await t.stack.catalog.slotsHeldBy('', `${d.executionArn!.split(':').pop()}/`)).toEqual([]);
  // The run's lease is given back: a second run is not refused.
  const again = await backup('narrow');
  expect(again.status, again.cause).toBe('SUCCEEDED');
}, 600_000);
