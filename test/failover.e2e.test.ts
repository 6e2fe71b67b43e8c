/**
 * A mover killed with SIGKILL in the middle of a Dispatch: the heartbeat timeout fires,
 * the task is retried on the other mover, the backup commits, chunks that already landed
 * are not uploaded again, and the restore is byte-identical.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { restoreVm } from '../mover/pipeline/restore-vm.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;

beforeAll(async () => {
  // One chunk at a time and a fast heartbeat, so the kill lands mid-transfer.
  // 1 MiB packs: many packs per disk, so the kill lands between them.
  t = await startTestStack({ movers: 2, moverEnv: { LIFEBOAT_MOVER_PARALLELISM: '1', LIFEBOAT_HEARTBEAT_MS: '1000', LIFEBOAT_PACK_MIB: '1' } });
});
afterAll(async () => {
  await t?.close();
});

it('retries a Dispatch on another mover after one is killed mid-transfer', async () => {
  const vmDir = join(t.dir, 'vms', 'vm-f');
  await createVmFolder(vmDir, { name: 'vm-f', disks: [{ id: 'disk0', sizeBytes: 160 * MiB }] }, seededRng(3));
  await t.stack.catalog.putVm({ vmId: 'vm-f', host: 'esx-02', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-f', vmIds: ['vm-f'], bucket: t.stack.endpoints.bucket, chunkSize: 256 * 1024, slotLimit: 1 });

  const run = runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-f' }, { pollMs: 500 });
  let victim: string | undefined;
  for (let i = 0; i < 600 && !victim; i++) {
    const p = t.logs.find((l) => l.event === 'dispatch.progress' && (l.bytesStored as number) > 0);
    victim = p?.mover;
    if (!victim) await sleep(20);
  }
  expect(victim).toBeDefined();
  const killed = t.movers.find((m) => m.name === victim)!;
  await killed.stop(true);

  const d = await run;
  expect(d.status).toBe('SUCCEEDED');
  const summary = JSON.parse(d.output!) as RunSummary;
  expect(summary.committed).toBe(1);
  // The retry found the chunks the killed mover had already stored.
  expect(summary.totals.dedupedChunks).toBeGreaterThan(0);
  const survivor = t.movers.find((m) => m !== killed)!.name;
  expect(t.logs.some((l) => l.mover === survivor && l.event === 'task.succeeded' && l.task === 'dispatch')).toBe(true);

  const backup = (await t.stack.catalog.latestCommitted('vm-f'))!;
  const e = t.stack.endpoints;
  const repository = await openRepository(e);
  const restored = await restoreVm({ repository, backupId: backup.backupId, diskIds: ['disk0'], targetDir: join(t.dir, 'restore-f') });
  expect(await sha256File(restored.disks[0]!.path)).toBe(await sha256File(join(vmDir, 'disk0.raw')));
}, 180_000);
