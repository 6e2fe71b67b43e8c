/**
 * Instant recovery end to end, with real parts: a running guest under QEMU (TCG) through
 * libvirtd is backed up by the Backup workflow (a real mover process, s3rver); the Restore
 * workflow in instant mode has the mover serve the backup over NBD from an export process
 * of the recovery's own, start a new domain on qcow2 overlays backed by the exports, and
 * move it with a libvirt block copy into the target folder while it runs.
 *
 * The target is a tmpfs too small for the disk, so the move fails for want of room: the VM
 * keeps running (its writes, the guest writes all the time, land in the overlay), and the
 * error says where and how to resume. The tmpfs is grown and the recovery resumed; mid-move
 * the mover is SIGKILLed: the guest and its copy go on without it, a new mover's retry of the
 * task re-attaches to the export process, takes up the copy job and pivots. The guest hashes
 * its own disk at a freeze taken while it still runs on overlay and exports: the moved disk
 * has that hash. Before that, the export process is SIGKILLed while the guest runs: its watchdog
 * starts it again on the same socket and the guest's direct reads of its disk succeed; with
 * the socket's path taken, it cannot, and says why and how to resume. Bad input: a backup that does not exist, a VM that is not a libvirt backup,
 * instant without --define. Everything it makes (domains, mount, overlays, export processes)
 * is removed in afterAll, also on failure.
 */
import { StartExecutionCommand } from '@aws-sdk/client-sfn';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEndpoint, waitForEndpoint } from '../cli/export-endpoint.ts';
import type { ExportEndpoint } from '../contracts/export-job.ts';
import type { InstantRestoreSummary } from '../contracts/workflow-outputs.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { startMover } from '../local/movers.ts';
import { instantRoot } from '../mover/recovery/instant.ts';
import { EXPORT_FILES, stopExportProcess } from '../mover/recovery/export-process.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI && process.env.LIFEBOAT_INSTANT_E2E) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

let t: TestStack;
let vm: LabVm;
const vmId = 'kvm-instant';
const domain = `lifeboat-e2e-instant-${process.pid}-r`;
const workDir = () => join(t.dir, 'work');
const target = () => join(t.dir, 'target');
let mounted = false;

async function restore(input: Record<string, unknown>, name: string) {
  const { executionArn } = await t.sfn.send(
    new StartExecutionCommand({ stateMachineArn: t.stack.endpoints.stateMachines.Restore!, name, input: JSON.stringify(input) }),
  );
  return executionArn!;
}

const PHASES = ['running', 'moving', 'moved'] as const;
/** The endpoint record once the recovery is at `phase` or past it (the mover writes running and moving moments apart). */
async function waitPhase(arn: string, restoreId: string, phase: (typeof PHASES)[number]): Promise<ExportEndpoint> {
  const { store } = await openRepository(t.stack.endpoints);
  const at = PHASES.indexOf(phase);
  return waitForEndpoint({
    sfn: t.sfn,
    executionArn: arn,
    store,
    exportId: restoreId,
    ready: (r) => PHASES.indexOf(r.phase as (typeof PHASES)[number]) >= at,
    what: `phase ${phase}`,
  });
}

async function consoleMatch(file: string, pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = (await readFile(file, 'utf8').catch(() => '')).match(pattern);
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`no console line matching ${pattern} in ${file} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Bytes of the overlay's own layer (depth 0) holding data: the guest's writes. */
async function overlayDataBytes(overlay: string): Promise<number> {
  // The overlay alone (its backing, the export, is closed once the move failed).
  const { stdout } = await run('qemu-img', [
    'map',
    '-U',
    '--output=json',
    `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: overlay }, backing: null })}`,
  ]);
  const map = JSON.parse(stdout) as { length: number; depth: number; data: boolean }[];
  return map.filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
}

async function retry<T>(f: () => Promise<T>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** The restored domain's copy job on vda, if any. */
async function blockJob(): Promise<{ cur: number; end: number } | undefined> {
  const text = await virsh(['blockjob', domain, 'vda', '--info', '--raw']);
  const cur = /cur=(\d+)/.exec(text);
  const end = /end=(\d+)/.exec(text);
  return cur && end ? { cur: Number(cur[1]), end: Number(end[1]) } : undefined;
}

/** The pid of the recovery's export process, once it listens. */
async function exportProcessPid(): Promise<number> {
  const ready = JSON.parse(await readFile(join(instantRoot(workDir()), domain, EXPORT_FILES.ready), 'utf8')) as { pid: number };
  expect(existsSync(`/proc/${ready.pid}`)).toBe(true);
  return ready.pid;
}

async function sha256OfImage(path: string, format: string): Promise<string> {
  const raw = join(t.dir, 'moved.raw');
  await run('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', path, raw]);
  const h = createHash('sha256')
    .update(await readFile(raw))
    .digest('hex');
  await rm(raw);
  return h;
}

// Two TCG boots (the source guest, then the instant recovery) and a backup of a running guest: minutes,
// over what npm test may spend; `npm run test:instant` runs it (and CI with LIFEBOAT_INSTANT_E2E=1).
describe.skipIf(!lab.available || !process.env.LIFEBOAT_INSTANT_E2E)('instant recovery of a libvirt backup', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 0 });
    t.movers.push(
      startMover(t.stack.endpoints, {
        name: 'kvm-mover',
        group: 'site-a',
        env: { LIFEBOAT_WORK_DIR: workDir(), LIFEBOAT_INSTANT_SPARE: '1' },
        onLog: (l) => t.logs.push(l),
      }),
    );
    vm = await startLabVm({
      dir: join(t.dir, 'vm'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: `lifeboat-e2e-instant-${process.pid}`,
      sizeBytes: 32 * MiB,
      dataBytes: 8 * MiB,
      behaviour: { mode: 'write', writeKiBs: 64 },
    });
    await t.stack.catalog.putVm({ vmId, host: 'kvm-01', source: vm.name, name: vm.name });
    await t.stack.catalog.putPolicy({ policyId: 'p-instant', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: 256 * 1024, slotLimit: 1 });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-instant' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    // The source guest is not needed any more: one guest at a time on these 2 cores.
    await vm.remove();
    await mkdir(target(), { recursive: true });
    // The final storage: a file system of its own, too small for the disk's 8 MiB of data, so the first move fails.
    await run('mount', ['-t', 'tmpfs', '-o', 'size=4m', `lifeboat-e2e-instant-${process.pid}`, target()]);
    mounted = true;
  }, 900_000);
  afterAll(async () => {
    // By name too: a beforeAll that timed out may still be starting the source VM.
    for (const name of [domain, `lifeboat-e2e-instant-${process.pid}`]) {
      await virsh(['destroy', name]).catch(() => {});
      await virsh(['undefine', '--checkpoints-metadata', name]).catch(() => {});
    }
    await vm?.remove().catch(() => {});
    // Export processes outlive movers by design: this test's go with it.
    for (const dir of await readdir(instantRoot(workDir())).catch(() => [])) await stopExportProcess(join(instantRoot(workDir()), dir)).catch(() => {});
    if (mounted) await run('umount', ['-l', target()]).catch(() => {});
    await t?.close();
  }, 120_000);

  it('refuses bad input with errors naming it: a backup that does not exist, a VM that is not a libvirt backup, --instant without --define', async () => {
    const define = { uri: 'qemu:///system', name: `${domain}-bad` };
    const none = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId,
      backupId: 'b-none',
      target: join(t.dir, 'x'),
      moverGroup: 'site-a',
      define,
      instant: {},
    });
    expect(none.status).toBe('FAILED');
    expect(none.cause).toMatch(/VM 'kvm-instant' has no backup 'b-none'/);
    const noDefine = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, { vmId, target: join(t.dir, 'x'), moverGroup: 'site-a', instant: {} });
    expect(noDefine.cause).toMatch(/an instant recovery runs the backup as a VM: it needs \\"define\\"/);

    const dir = join(t.dir, 'vms', 'vm-folder');
    await createVmFolder(dir, { name: 'vm-folder', disks: [{ id: 'vda', sizeBytes: 2 * MiB }] }, seededRng(5));
    await t.stack.catalog.putVm({ vmId: 'vm-folder', host: 'esx-01', source: dir });
    await t.stack.catalog.putPolicy({ policyId: 'p-folder', vmIds: ['vm-folder'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
    expect((await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-folder' })).status).toBe('SUCCEEDED');
    const folder = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId: 'vm-folder',
      target: join(t.dir, 'y'),
      moverGroup: 'site-a',
      define,
      instant: {},
    });
    expect(folder.status).toBe('FAILED');
    expect(folder.error).toBe('Recovery.RequestInvalid');
    expect(folder.cause).toMatch(
      /backup \S+ of VM 'vm-folder' was not taken by the libvirt driver .* restore its disks as files instead \(without --instant\)/,
    );
    // Nothing was defined or left in the work folder.
    await expect(virsh(['domuuid', define.name])).rejects.toThrow();
    expect(await readdir(instantRoot(workDir())).catch(() => [])).toEqual([]);
  }, 300_000);

  it('runs the VM on overlays backed by the exports within seconds, its writes landing in the overlay; a target that fills up fails the move, and the VM keeps running with its writes kept', async () => {
    const restoreId = `instant-a-${process.pid}`;
    const asked = performance.now();
    // The move starts once the guest is up and writing, and is capped, so the guest writes for seconds before it fails.
    const arn = await restore(
      {
        vmId,
        target: target(),
        moverGroup: 'site-a',
        define: { uri: 'qemu:///system', name: domain },
        instant: { moveBandwidthMiBs: 1, moveAfter: { consoleLine: 'LIFEBOAT-GUEST READY', timeoutSeconds: 300 } },
      },
      restoreId,
    );
    const running = await waitPhase(arn, restoreId, 'running');
    const runningSeconds = (performance.now() - asked) / 1000;
    console.log(`instant recovery: domain running ${runningSeconds.toFixed(1)} s after the request`);
    expect(running).toMatchObject({ kind: 'instant', domain, vmId, state: 'listening', phase: expect.stringMatching(/^(running|moving)$/) });
    const overlay = running.overlays!.vda!;
    expect(overlay.startsWith(instantRoot(workDir()))).toBe(true);
    expect(running.uris.vda).toMatch(/^nbd\+unix:\/\/\/vda\?socket=/);
    await consoleMatch(join(target(), 'console.log'), /LIFEBOAT-GUEST READY/, 240_000);

    const d = await waitForExecution(t.sfn, arn);
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Recovery.InstantMoveFailed');
    expect(d.cause).toContain(`moving disk vda to ${join(target(), 'vda.qcow2')} failed`);
    expect(d.cause).toContain(`The VM keeps running on its overlays, and its writes are kept in ${overlay}`);
    expect(d.cause).toMatch(/resume with lifeboat restore --vm kvm-instant .* --instant --resume/);
    // The export process serves on: the guest runs and keeps writing, into the overlay, not into the backup.
    expect((await virsh(['domstate', domain])).trim()).toBe('running');
    // (A loaded machine may fail the move before the slow TCG guest's first write: it keeps running, so wait for two.)
    const written = await retry(async () => {
      const bytes = await overlayDataBytes(overlay);
      if (bytes <= 0) throw new Error(`the guest wrote nothing into ${overlay}`);
      return bytes;
    }, 90_000);
    await retry(async () => expect(await overlayDataBytes(overlay)).toBeGreaterThan(written), 90_000);
    expect(await exportProcessPid()).toBeGreaterThan(0);
    const { store } = await openRepository(t.stack.endpoints);
    expect(await readEndpoint(store, restoreId)).toMatchObject({ phase: 'failed', error: expect.any(String) });
  }, 420_000);

  it("an export process killed while the guest runs is started again on the same socket by its watchdog: the guest's reads of the backup go on; one that cannot be started again says why and how to resume", async () => {
    const dir = join(instantRoot(workDir()), domain);
    const exportLog = () => readFile(join(dir, EXPORT_FILES.log), 'utf8');
    const killed = await exportProcessPid();
    process.kill(killed, 'SIGKILL');
    // At once, the guest reads 32 MiB of its disk it has (mostly) not written: direct I/O, so from the backup through the export.
    const dd = { path: '/bin/dd', arg: ['if=/dev/vda', 'of=/dev/null', 'bs=1M', 'count=32', 'iflag=direct'], 'capture-output': true };
    const started = JSON.parse(await virsh(['qemu-agent-command', domain, JSON.stringify({ execute: 'guest-exec', arguments: dd })])) as {
      return: { pid: number };
    };
    // A paused guest's agent does not answer: asked again until the read is done.
    const status = await retry(async () => {
      const r = JSON.parse(
        await virsh(['qemu-agent-command', '--timeout', '5', domain, JSON.stringify({ execute: 'guest-exec-status', arguments: { pid: started.return.pid } })]),
      ) as { return: { exited: boolean; exitcode?: number; 'err-data'?: string } };
      if (!r.return.exited) throw new Error('the read in the guest is not done');
      return r.return;
    }, 180_000);
    expect(status.exitcode, Buffer.from(status['err-data'] ?? '', 'base64').toString()).toBe(0);
    const restarted = await exportProcessPid();
    expect(restarted).not.toBe(killed);
    expect((await virsh(['domstate', domain])).trim()).toBe('running');
    const logText = await exportLog();
    expect(logText).toContain('"event":"export.process.died"');
    expect(logText).toContain('"event":"export.restarted"');
    console.log(
      `export process ${killed} killed, ${restarted} serving; the guest was ${logText.includes('export.guest.resumed') ? 'paused by its reads and resumed' : 'not paused'}`,
    );

    // Something in the socket's place (here a folder): it cannot be started again, and says so.
    const socket = join(dir, 'nbd.sock');
    process.kill(restarted, 'SIGKILL');
    await rm(socket, { force: true });
    await mkdir(socket);
    const failed = await retry(async () => JSON.parse(await readFile(join(dir, EXPORT_FILES.failed), 'utf8')) as { error: string }, 120_000);
    expect(failed.error).toContain(`the export process of ${dir} died and could not be started again`);
    expect(failed.error).toContain(socket);
    expect(failed.error).toMatch(/resume the instant recovery .*--instant --resume/);
    expect(await exportLog()).toContain('"event":"export.restart.failed"');
    // The next test's resume starts it again.
    await rm(socket, { recursive: true });
  }, 420_000);

  it('resumed once there is room, a mover killed mid-move leaves the guest and its copy running; the next mover takes the copy up and pivots: the moved disk is what the guest saw on overlay and exports', async () => {
    await run('mount', ['-o', 'remount,size=96m', target()]);
    const restoreId = `instant-b-${process.pid}`;
    const arn = await restore(
      {
        vmId,
        target: target(),
        moverGroup: 'site-a',
        define: { uri: 'qemu:///system', name: domain },
        instant: { resume: true, moveBandwidthMiBs: 1 },
      },
      restoreId,
    );
    const moving = await waitPhase(arn, restoreId, 'moving');
    // The copy job is running: kill the mover (no drain) under it.
    const before = await retry(async () => {
      const job = await blockJob();
      if (!job) {
        const errors = t.logs.filter((l) => l.level === 'error' || String(l.event).startsWith('instant.')).slice(-8);
        const exportLog = await readFile(join(instantRoot(workDir()), domain, EXPORT_FILES.log), 'utf8').catch(() => '');
        throw new Error(
          `no copy job yet (domain ${(await virsh(['domstate', '--reason', domain]).catch(() => '?')).trim()}); mover: ${JSON.stringify(errors)}; export.log ends: ${exportLog.trim().split('\n').slice(-6).join('\n')}`,
        );
      }
      return job;
    }, 60_000);
    await t.movers[0]!.stop(true);
    const exportPid = await exportProcessPid();
    expect(exportPid).toBeGreaterThan(0);
    // Without its mover: the guest runs, the export process serves it, the copy goes on (or waits, in step, for its pivot).
    const after = await retry(async () => {
      const job = await blockJob();
      if (!job || !(job.cur > before.cur || job.cur === job.end))
        throw new Error(`the copy job does not go on without its mover: before ${JSON.stringify(before)}, now ${JSON.stringify(job)}`);
      return job;
    }, 60_000);
    console.log(`copy job without its mover: ${before.cur}/${before.end} → ${after.cur}/${after.end}`);
    expect((await virsh(['domstate', domain])).trim()).toBe('running');
    // The guest stops writing and hashes its disk, still on overlay and exports (the agent may answer only a moment after).
    await retry(() => virsh(['qemu-agent-command', domain, '{"execute":"guest-fsfreeze-freeze"}']), 90_000);
    const [, seen] = await consoleMatch(join(target(), 'console.log'), /LIFEBOAT-FREEZE sha256=([0-9a-f]{64})/, 180_000);
    // A new mover: the workflow retries the task when the dead one's heartbeat times out, and the retry takes the recovery up.
    t.movers.push(
      startMover(t.stack.endpoints, {
        name: 'kvm-mover-2',
        group: 'site-a',
        env: { LIFEBOAT_WORK_DIR: workDir(), LIFEBOAT_INSTANT_SPARE: '1' },
        onLog: (l) => t.logs.push(l),
      }),
    );
    const d = await waitForExecution(t.sfn, arn);
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as InstantRestoreSummary;
    expect(s.instant).toMatchObject({ domain, resumed: true, disks: [join(target(), 'vda.qcow2')] });
    // What the export process served all along (it said so when the completed move stopped it).
    expect(s.instant.bytesServed).toBeGreaterThan(0);
    expect(t.logs.some((l) => l.mover === 'kvm-mover-2' && l.event === 'instant.export.attached')).toBe(true);
    expect(t.logs.some((l) => l.mover === 'kvm-mover-2' && l.event === 'instant.move.adopted')).toBe(true);
    expect((await virsh(['domstate', domain])).trim()).toBe('running');
    expect(await virsh(['domblklist', domain])).toContain(join(target(), 'vda.qcow2'));
    expect(await virsh(['dumpxml', '--inactive', domain])).toContain(join(target(), 'vda.qcow2'));
    expect(await sha256OfImage(join(target(), 'vda.qcow2'), 'qcow2')).toBe(seen);
    // The overlays, their folder, the export process and its socket are gone; the record says moved.
    await expect(stat(moving.overlays!.vda!)).rejects.toThrow();
    expect(await readdir(instantRoot(workDir()))).toEqual([]);
    expect(existsSync(`/proc/${exportPid}`)).toBe(false);
    const { store } = await openRepository(t.stack.endpoints);
    expect(await readEndpoint(store, restoreId)).toMatchObject({ phase: 'moved', state: 'closed' });
    await virsh(['qemu-agent-command', domain, '{"execute":"guest-fsfreeze-thaw"}']);
  }, 600_000);
});
