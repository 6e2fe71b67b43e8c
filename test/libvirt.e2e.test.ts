/**
 * The libvirt driver end to end: a real guest under QEMU (TCG) through libvirtd, writing
 * to its disk the whole time; the embedded stack running the synthesized workflows; a
 * real mover process reading the backup job's NBD exports. Full → guest writes → CBT
 * incremental (only dirty extents read) → restore equal to the disk at the freeze →
 * the restored VM boots. Then each changed-block-tracking fallback, forced.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { stopGuestAgent } from './helpers/guest-agent.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary, RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const CHUNK = 256 * 1024;
const DISK = 64 * MiB;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

let t: TestStack;
let vm: LabVm;
const vmId = 'kvm-guest';

async function backup(): Promise<RunSummary> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-kvm' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const run = JSON.parse(d.output!) as RunSummary;
  expect(run.failed, JSON.stringify(run.vms.map((v) => v.error))).toBe(0);
  return run;
}

/** Nothing a backup makes may outlive it: no job on the domain, no snapshot folder, no scratch file. */
async function expectNothingLeft() {
  if ((await virsh(['domstate', vm.name])).trim() === 'running') expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
  const work = join(t.dir, 'work', 'libvirt');
  // No qemu-nbd (a shut-off VM's exports) is left serving a snapshot folder.
  const nbd = await new Promise<string>((ok) => execFile('pgrep', ['-af', `qemu-nbd.*${work}`], (_e, out) => ok(String(out))));
  expect(nbd.trim()).toBe('');
  expect(await readdir(work).catch(() => [])).toEqual([]);
}

const checkpoints = async () =>
  (await virsh(['checkpoint-list', '--name', vm.name]))
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);

describe.skipIf(!lab.available)('libvirt source driver on a running guest', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 1, moverEnv: { LIFEBOAT_WORK_DIR: '' } });
    // Work folder short enough for unix socket paths; one per test run.
    await t.movers[0]!.stop(true);
    t.movers[0] = (await import('../local/movers.ts')).startMover(t.stack.endpoints, {
      name: 'kvm-mover',
      group: 'site-a',
      env: { LIFEBOAT_WORK_DIR: join(t.dir, 'work') },
      onLog: (l) => t.logs.push(l),
    });
    vm = await startLabVm({
      dir: join(t.dir, 'vm'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: `lifeboat-e2e-${process.pid}`,
      sizeBytes: DISK,
      dataBytes: 24 * MiB,
      behaviour: { mode: 'write', writeKiBs: 256 },
    });
    await t.stack.catalog.putVm({ vmId, host: 'kvm-01', source: vm.name });
    await t.stack.catalog.putPolicy({ policyId: 'p-kvm', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: CHUNK, slotLimit: 2 });
  }, 240_000);
  afterAll(async () => {
    await vm?.remove();
    await t?.close();
  });

  it('backs up a running guest fully, then reads only the changed extents, restores the disk as it was at the freeze, and the restore boots', async () => {
    const full = await backup();
    expect(full).toMatchObject({ committed: 1, failed: 0 });
    expect(full.vms[0]!.consistency).toMatchObject({ level: 'filesystem' });
    expect(full.vms[0]!.fullReads?.[0]?.reason).toMatch(/first backup/);
    // The unallocated part of the qcow2 is never read.
    expect(full.totals.bytesRead).toBeLessThan(DISK * 0.6);
    await expectNothingLeft();

    await vm.writes(8); // the guest writes 64 KiB blocks at 256 KiB/s once the full's freeze hash is printed
    const incr = await backup();
    expect(incr).toMatchObject({ committed: 1, failed: 0 });
    expect(incr.vms[0]!.fullReads).toBeUndefined();
    const read = incr.totals.bytesRead!;
    // Dirty blocks are 64 KiB: each touches one 256 KiB chunk. Read: the written chunks, not the disk.
    expect(read).toBeGreaterThan(0);
    expect(read).toBeLessThan(DISK / 4);
    // The 24 MiB of data written before boot did not change: taken from the parent, unread (holes are not read either).
    expect(incr.totals.bytesUnchanged).toBeGreaterThan(16 * MiB);
    expect(read + incr.totals.bytesUnchanged! + incr.totals.bytesUnallocated!).toBe(DISK);
    await expectNothingLeft();

    const backups = await t.stack.catalog.listBackups(vmId);
    expect(backups.map((b) => b.status)).toEqual(['committed', 'committed']);
    const [latest, first] = backups;
    expect(latest!.checkpoint).toBe(`lifeboat-${latest!.backupId}`);
    expect(latest!.consistency?.level).toBe('filesystem');
    expect((await checkpoints()).sort()).toEqual([first!.checkpoint, latest!.checkpoint].sort());

    // The guest hashed its disk at each freeze: the restore of the incremental must equal the second hash.
    const hashes = await vm.freezeHashes(2);
    expect(hashes).toHaveLength(2);
    const restored = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, { vmId, moverGroup: 'site-a', target: join(t.dir, 'restore-files') });
    expect(restored.status).toBe('SUCCEEDED');
    expect((JSON.parse(restored.output!) as RestoreSummary).disks[0]!.sha256).toBe(hashes[1]);

    // A restore test: a new domain from the backed-up definition boots, then is removed with its disks.
    const name = `lifeboat-e2e-restored-${process.pid}`;
    const tested = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId,
      moverGroup: 'site-a',
      target: join(t.dir, 'restore-vm'),
      define: { uri: 'qemu:///system', name, bootCheck: { consoleLine: 'LIFEBOAT-GUEST READY', timeoutSeconds: 180 } },
    });
    expect(tested.status, tested.cause).toBe('SUCCEEDED');
    const summary = JSON.parse(tested.output!) as RestoreSummary;
    expect(summary.domain).toMatchObject({ name, bootCheck: { passed: true } });
    expect(await virsh(['list', '--all', '--name'])).not.toContain(name);
    expect((await t.stack.catalog.getBackup(vmId, latest!.backupId))?.restoreTest).toMatchObject({ passed: true });
  }, 600_000);

  it('reads everything, and says why, when the parent checkpoint was deleted by hand', async () => {
    const latest = (await t.stack.catalog.latestCommitted(vmId))!;
    await virsh(['checkpoint-delete', vm.name, latest.checkpoint!]);
    const run = await backup();
    expect(run.vms[0]!.fullReads?.[0]?.reason).toMatch(/checkpoint .* is gone/);
    expect(run.totals.bytesUnchanged ?? 0).toBe(0);
    // Whole reads upload only what changed: chunks are compared by id, and the ones the
    // repository has are not uploaded again (how many changed depends on how long the guest,
    // writing without pause, wrote since the last backup: not a fixed share of the disk).
    expect(run.totals.parentChunks + run.totals.dedupedChunks).toBeGreaterThan(0);
    expect(run.totals.uploadedChunks).toBeLessThan(run.totals.chunks - run.totals.zeroChunks);
    const next = await backup(); // and the one after is incremental again
    expect(next.vms[0]!.fullReads).toBeUndefined();
    await expectNothingLeft();
  }, 300_000);

  it('reads everything after the disk was resized, and says why', async () => {
    await virsh(['blockresize', vm.name, 'vda', `${DISK / MiB + 16}M`]);
    const run = await backup();
    expect(run.committed).toBe(1);
    expect(run.vms[0]!.fullReads?.[0]?.reason).toMatch(/resized|could not be used/);
    const next = await backup();
    expect(next.vms[0]!.fullReads).toBeUndefined();
  }, 300_000);

  it('backs up a shut-off VM from its image, and a job left by a dead mover does not block the next backup', async () => {
    await virsh(['destroy', vm.name]);
    const off = await backup();
    expect(off.committed).toBe(1);
    expect(off.vms[0]!.consistency?.reason).toMatch(/shut off/);
    expect(off.vms[0]!.fullReads?.[0]?.reason).toMatch(/shut off/);
    await expectNothingLeft();
    await vm.start();
    // A mover that died after Snapshot leaves the job running; the next backup clears it.
    const { LibvirtDriver } = await import('../mover/sources/libvirt/driver.ts');
    const orphan = await new LibvirtDriver({ uri: 'qemu:///system', workDir: join(t.dir, 'work', 'libvirt') }).snapshot({
      source: vm.name,
      backupId: 'orphan',
    });
    expect(orphan.disks).toHaveLength(1);
    const run = await backup();
    expect(run.committed).toBe(1);
    await expectNothingLeft();
  }, 300_000);

  it('does not trust the bitmaps after an unclean shutdown (QEMU killed), and says why', async () => {
    expect((await backup()).committed).toBe(1); // a parent with a checkpoint
    await vm.powerCut(); // the qcow2's bitmaps stay marked in use
    await vm.start();
    const run = await backup();
    expect(run.committed).toBe(1);
    expect(run.vms[0]!.fullReads?.[0]?.reason).toMatch(/could not be used|gone/);
    const next = await backup();
    expect(next.vms[0]!.fullReads).toBeUndefined();
    await expectNothingLeft();
  }, 300_000);

  it("runs the policy's hooks in the guest around the freeze; a failing pre hook fails the VM, or makes it crash-consistent when allowed", async () => {
    const policy = (quiesce: object) =>
      t.stack.catalog.putPolicy({ policyId: 'p-kvm', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: CHUNK, slotLimit: 2, quiesce });
    await policy({ pre: ['/bin/sh', '-c', 'echo LIFEBOAT-HOOK pre > /dev/console'], post: ['/bin/sh', '-c', 'echo LIFEBOAT-HOOK post > /dev/console'] });
    const ok = await backup();
    expect(ok.vms[0]!.consistency).toMatchObject({ level: 'application', reason: expect.stringMatching(/pre hook ran.*post hook ran/) });
    expect(await readFile(vm.serialLog, 'utf8')).toMatch(/LIFEBOAT-HOOK pre[\s\S]*LIFEBOAT-FROZEN[\s\S]*LIFEBOAT-THAW[\s\S]*LIFEBOAT-HOOK post/);

    await policy({ pre: ['/bin/sh', '-c', 'echo database busy >&2; exit 3'] });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-kvm' });
    const failed = JSON.parse(d.output!) as RunSummary;
    expect(failed).toMatchObject({ committed: 0, failed: 1 });
    expect(failed.vms[0]!.error?.Cause).toMatch(/could not be quiesced.*pre hook .* exited 3: database busy.*onHookFailure/);
    await expectNothingLeft();

    await policy({ pre: ['/bin/sh', '-c', 'exit 3'], onHookFailure: 'continue' });
    const crash = await backup();
    expect(crash.vms[0]!.consistency).toMatchObject({ level: 'crash', reason: expect.stringMatching(/exited 3; hooks not run/) });
    await policy({});
  }, 300_000);

  it('takes a crash-consistent backup, and says why, when the guest agent does not answer', async () => {
    await stopGuestAgent(vm.name);
    const run = await backup();
    expect(run.vms[0]!.consistency).toMatchObject({ level: 'crash', reason: expect.stringMatching(/guest agent did not answer/) });
    await expectNothingLeft();
  }, 300_000);

  it('fails only an unknown VM, naming it and what to do, and commits nothing for it', async () => {
    await t.stack.catalog.putVm({ vmId: 'kvm-ghost', host: 'kvm-01', source: 'no-such-domain' });
    await t.stack.catalog.putPolicy({ policyId: 'p-ghost', vmIds: ['kvm-ghost', vmId], bucket: t.stack.endpoints.bucket, chunkSize: CHUNK, slotLimit: 2 });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-ghost' });
    const run = JSON.parse(d.output!) as RunSummary;
    expect(run).toMatchObject({ committed: 1, failed: 1 });
    const ghost = run.vms.find((v) => v.vmId === 'kvm-ghost')!;
    expect(ghost.error?.Error).toBe('Mover.SourceUnavailable');
    expect(ghost.error?.Cause).toMatch(/no-such-domain.*does not exist.*discovery/);
    expect(await t.stack.catalog.latestCommitted('kvm-ghost')).toBeUndefined();
  }, 300_000);
});
