/**
 * A running guest whose disk is a raw image: QEMU keeps changed-block bitmaps only in
 * qcow2 images and libvirt refuses a checkpoint of a raw disk, so every backup reads the
 * disk whole (holes skipped) and compares it chunk by chunk, uploading only what changed,
 * and says why in the run's report. The backup job itself, the freeze and the restore are
 * as for a qcow2 disk.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { startMover } from '../local/movers.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary, RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const CHUNK = 256 * 1024;
const DISK = 32 * MiB;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

let t: TestStack;
let vm: LabVm;
const vmId = 'raw-guest';

async function backup(): Promise<RunSummary> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-raw' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const run = JSON.parse(d.output!) as RunSummary;
  expect(run.failed, JSON.stringify(run.vms.map((v) => v.error))).toBe(0);
  return run;
}

describe.skipIf(!lab.available)('libvirt source driver on a running guest with a raw disk', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 1 });
    await t.movers[0]!.stop(true);
    t.movers[0] = startMover(t.stack.endpoints, {
      name: 'raw-mover',
      group: 'site-a',
      env: { LIFEBOAT_WORK_DIR: join(t.dir, 'work') },
      onLog: (l) => t.logs.push(l),
    });
    vm = await startLabVm({
      dir: join(t.dir, 'vm'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: `lifeboat-raw-${process.pid}`,
      sizeBytes: DISK,
      dataBytes: 8 * MiB,
      format: 'raw',
      behaviour: { mode: 'write', writeKiBs: 128 },
    });
    await t.stack.catalog.putVm({ vmId, host: 'kvm-01', source: vm.name });
    await t.stack.catalog.putPolicy({ policyId: 'p-raw', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: CHUNK, slotLimit: 2 });
  }, 240_000);
  afterAll(async () => {
    await vm?.remove();
    await t?.close();
  });

  it('backs it up with no checkpoint, reads it whole each time (saying why) but uploads only what changed, and restores it as it was at the freeze', async () => {
    const full = await backup();
    expect(full.committed).toBe(1);
    expect(full.vms[0]!.consistency).toMatchObject({ level: 'filesystem' });
    expect((await virsh(['checkpoint-list', '--name', vm.name])).trim()).toBe('');
    expect((await t.stack.catalog.latestCommitted(vmId))?.checkpoint).toBeUndefined();

    await vm.freezeHashes(1);
    const incr = await backup();
    expect(incr.vms[0]!.fullReads).toEqual([{ diskId: 'vda', reason: expect.stringMatching(/vda is a raw image.*qcow2/) }]);
    expect(incr.totals.bytesUnchanged ?? 0).toBe(0);
    // Read whole but the holes (the raw file is sparse: never read), compared by chunk id: the guest's writes are uploaded, not the disk.
    expect(incr.totals.bytesRead).toBeGreaterThanOrEqual(8 * MiB);
    expect(incr.totals.bytesRead! + incr.totals.bytesUnallocated!).toBe(DISK);
    expect(incr.totals.uploadedChunks).toBeLessThan(DISK / CHUNK / 2);
    expect((await virsh(['checkpoint-list', '--name', vm.name])).trim()).toBe('');
    // No job, no snapshot folder left.
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
    expect(await readdir(join(t.dir, 'work', 'libvirt')).catch(() => [])).toEqual([]);
    const nbd = await new Promise<string>((ok) => execFile('pgrep', ['-af', `qemu-nbd.*${t.dir}`], (_e, out) => ok(String(out))));
    expect(nbd.trim()).toBe('');

    const hashes = await vm.freezeHashes(2);
    const restored = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, { vmId, moverGroup: 'site-a', target: join(t.dir, 'restore') });
    expect(restored.status, restored.cause).toBe('SUCCEEDED');
    expect((JSON.parse(restored.output!) as RestoreSummary).disks[0]!.sha256).toBe(hashes[1]);
  }, 600_000);
});
