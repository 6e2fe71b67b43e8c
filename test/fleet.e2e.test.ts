/**
 * A fleet on the embedded stack: two mover groups, each VM's work on the group serving
 * its host, one large disk split into segments read by several movers at once and joined
 * at commit, movers never over their slots, and the per-host slot limit held across all
 * movers. Real mover processes; restores are compared byte for byte.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MoverLogLine } from '../local/movers.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { restoreVm } from '../mover/pipeline/restore-vm.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const SLOTS = 1;
let t: TestStack;

beforeAll(async () => {
  // site-a serves esx-01 and esx-02, site-b serves esx-03 (lifeboat.config.json).
  t = await startTestStack({ groups: { 'site-a': 3, 'site-b': 1 }, slots: SLOTS, moverEnv: { LIFEBOAT_HEARTBEAT_MS: '1000' } });
}, 120_000);
afterAll(async () => {
  await t?.close();
});

/** The most tasks one mover ran at the same time, from its task.started / task.succeeded|failed lines. */
function peakConcurrency(logs: MoverLogLine[], mover: string): number {
  let now = 0;
  let peak = 0;
  for (const l of logs.filter((x) => x.mover === mover)) {
    if (l.event === 'task.started') peak = Math.max(peak, ++now);
    else if (l.event === 'task.succeeded' || l.event === 'task.failed') now--;
  }
  return peak;
}

async function restoreMatches(vmId: string, vmDir: string, diskIds: string[]): Promise<boolean> {
  const backup = (await t.stack.catalog.latestCommitted(vmId))!;
  const repository = await openRepository(t.stack.endpoints);
  const restored = await restoreVm({ repository, backupId: backup.backupId, diskIds, targetDir: join(t.dir, 'restore', vmId) });
  for (const d of restored.disks) {
    if ((await sha256File(d.path)) !== (await sha256File(join(vmDir, `${d.diskId}.raw`)))) return false;
  }
  return true;
}

describe('a fleet of movers', () => {
  it("routes each VM to its host's mover group and spreads a large disk's segments over the group", async () => {
    const big = join(t.dir, 'vms', 'vm-big');
    const small = join(t.dir, 'vms', 'vm-small');
    await createVmFolder(
      big,
      {
        name: 'vm-big',
        disks: [
          { id: 'disk0', sizeBytes: 96 * MiB },
          { id: 'disk1', sizeBytes: 8 * MiB },
        ],
      },
      seededRng(11),
    );
    await createVmFolder(small, { name: 'vm-small', disks: [{ id: 'disk0', sizeBytes: 16 * MiB }] }, seededRng(12));
    await t.stack.catalog.putVm({ vmId: 'vm-big', host: 'esx-01', source: big });
    await t.stack.catalog.putVm({ vmId: 'vm-small', host: 'esx-03', source: small });
    await t.stack.catalog.putPolicy({
      policyId: 'p-fleet',
      vmIds: ['vm-big', 'vm-small'],
      bucket: t.stack.endpoints.bucket,
      chunkSize: MiB,
      slotLimit: 2,
      segmentBytes: 32 * MiB,
    });

    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-fleet' }, { pollMs: 300 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const summary = JSON.parse(d.output!) as RunSummary;
    expect(summary.committed).toBe(2);

    const tasksOf = (vmId: string) => t.logs.filter((l) => l.event === 'task.succeeded' && l.vmId === vmId);
    // Affinity: every task of a VM ran on a mover of the group serving its host.
    expect(tasksOf('vm-big').length).toBeGreaterThan(0);
    expect(tasksOf('vm-big').every((l) => l.mover.startsWith('site-a-'))).toBe(true);
    expect(
      tasksOf('vm-small')
        .map((l) => l.task)
        .sort(),
    ).toEqual(['dispatch', 'releaseSnapshot', 'snapshot']);
    expect(tasksOf('vm-small').every((l) => l.mover === 'site-b-mover-1')).toBe(true);

    // One disk, many movers: 96 MiB in 32 MiB segments is three dispatch tasks, on more than one mover.
    const segments = tasksOf('vm-big').filter((l) => l.task === 'dispatch' && l.diskId === 'disk0');
    expect(segments.map((l) => l.segment).sort()).toEqual([0, 1, 2]);
    expect(new Set(segments.map((l) => l.mover)).size).toBeGreaterThan(1);
    // disk1 (8 MiB) is below the segment size: one task, no segment.
    expect(
      tasksOf('vm-big')
        .filter((l) => l.task === 'dispatch' && l.diskId === 'disk1')
        .map((l) => l.segment),
    ).toEqual([undefined]);

    // The joined manifest describes the whole disk: Verify passed, and the restore is identical.
    const backup = (await t.stack.catalog.latestCommitted('vm-big'))!;
    expect(backup.disks!.map((x) => [x.diskId, x.sizeBytes, x.stats.chunks])).toEqual([
      ['disk0', 96 * MiB, 96],
      ['disk1', 8 * MiB, 8],
    ]);
    expect(await restoreMatches('vm-big', big, ['disk0', 'disk1'])).toBe(true);
    expect(await restoreMatches('vm-small', small, ['disk0'])).toBe(true);

    // No mover ever ran more tasks at once than its slots.
    for (const m of t.movers) expect(peakConcurrency(t.logs, m.name), m.name).toBeLessThanOrEqual(SLOTS);
  }, 240_000);

  it('holds the per-host limit across all movers of the group', async () => {
    const vms = ['vm-h1', 'vm-h2', 'vm-h3'];
    for (const [i, vmId] of vms.entries()) {
      const dir = join(t.dir, 'vms', vmId);
      await createVmFolder(dir, { name: vmId, disks: [{ id: 'disk0', sizeBytes: 12 * MiB }] }, seededRng(20 + i));
      await t.stack.catalog.putVm({ vmId, host: 'esx-02', source: dir });
    }
    // The policy allows one backup at a time on a host; three movers of the group are idle.
    await t.stack.catalog.putPolicy({ policyId: 'p-host', vmIds: vms, bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
    const from = t.logs.length;
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-host' }, { pollMs: 300 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect((JSON.parse(d.output!) as RunSummary).committed).toBe(3);

    // Each VM's work spans its snapshot start to its snapshot release; on one host they never overlap.
    const logs = t.logs.slice(from);
    const spans = vms
      .map((vmId) => {
        const own = logs.filter((l) => l.vmId === vmId);
        const start = own.findIndex((l) => l.event === 'task.started' && l.task === 'snapshot');
        const end = own.findLastIndex((l) => l.event === 'task.succeeded' && l.task === 'releaseSnapshot');
        return [logs.indexOf(own[start]!), logs.indexOf(own[end]!)] as const;
      })
      .sort((a, b) => a[0] - b[0]);
    for (const [s, e] of spans) expect(s).toBeLessThan(e);
    for (let i = 1; i < spans.length; i++)
      expect(spans[i]![0], 'the next VM started only after the previous released its snapshot').toBeGreaterThan(spans[i - 1]![1]);
  }, 240_000);
});
