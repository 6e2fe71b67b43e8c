/**
 * Restore tests as part of deep verification, end to end: a real guest under QEMU (TCG)
 * through libvirtd, the embedded stack running the synthesized DeepVerify workflows, a
 * real mover process that restores the backup into a throwaway folder, boots it as a
 * `lifeboat-restoretest-*` domain without network, waits for its sign of life (serial
 * console line, guest agent) and removes it; the control plane records the outcome on
 * the backup. Also: a guest that never shows the sign of life (recorded as failed, with a
 * reason, and still removed), and the sweep of what a killed mover left behind.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RESTORE_TEST_PREFIX } from '../contracts/restore-test.ts';
import { runExecution } from '../local/client.ts';
import { createQcow2, guestCmdline, guestDomainXml } from '../local/vm-lab/domain.ts';
import { buildGuest } from '../local/vm-lab/guest.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { ownerOfThisProcess, restoreTestRoot } from '../mover/recovery/restore-test.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { DeepVerifySummary, RestoreTestOutcome, RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

let t: TestStack;
let vm: LabVm;
const vmId = 'kvm-rtest';
const cacheDir = join(tmpdir(), 'lifeboat-vm-lab-cache');
/** Domains this file defines by hand (the sweep's fixtures), removed in afterAll whatever happened. */
const handMade: string[] = [];

const workDir = () => join(t.dir, 'work');
/** This run's test domains (their names carry this process's pid): another run on the same host has its own. */
const ours = new RegExp(`-${process.pid}(-|$)`);
const testDomains = async () =>
  (await virsh(['list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith(RESTORE_TEST_PREFIX) && ours.test(n));
const testFolders = async () => (await readdir(restoreTestRoot(workDir())).catch(() => [] as string[])).filter((n) => n.includes(RESTORE_TEST_PREFIX));

async function verify(machine: 'DeepVerify' | 'DeepVerifyPolicy', input: object) {
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines[machine]!, input);
  expect(d.status, d.cause).toBe('SUCCEEDED');
  return JSON.parse(d.output!) as Record<string, unknown>;
}

/** A domain with the restore-test prefix, as a mover would have left it: disk in a test folder, owner in its description. */
async function leftoverDomain(name: string, owner: object, start: boolean): Promise<string> {
  const guest = await buildGuest(cacheDir);
  const folder = join(restoreTestRoot(workDir()), name);
  await mkdir(folder, { recursive: true });
  const disk = join(folder, 'vda.qcow2');
  await createQcow2(disk, 16 * MiB);
  const xml = join(folder, 'domain.xml');
  await writeFile(
    xml,
    guestDomainXml({
      name,
      disks: [{ path: disk, format: 'qcow2', target: 'vda' }],
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guestCmdline({ mode: 'idle' }),
      serialLog: join(folder, 'console.log'),
      agent: false,
      memoryMiB: 128,
    }),
  );
  handMade.push(name);
  await virsh(['define', xml]);
  await virsh(['desc', name, '--config', '--new-desc', JSON.stringify(owner)]);
  if (start) await virsh(['start', name]);
  return folder;
}

/** The pid of a process that has exited: the owner of a killed mover's leftovers. */
async function deadPid(): Promise<number> {
  const child = execFile('true');
  await new Promise((r) => child.once('exit', r));
  return child.pid!;
}

describe.skipIf(!lab.available)('restore tests in deep verification', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 1, moverEnv: { LIFEBOAT_WORK_DIR: '' } });
    await t.movers[0]!.stop(true);
    t.movers[0] = (await import('../local/movers.ts')).startMover(t.stack.endpoints, {
      name: 'kvm-mover',
      group: 'site-a',
      env: { LIFEBOAT_WORK_DIR: workDir() },
      onLog: (l) => t.logs.push(l),
    });
    vm = await startLabVm({
      dir: join(t.dir, 'vm'),
      cacheDir,
      name: `lifeboat-e2e-rtest-${process.pid}`,
      sizeBytes: 32 * MiB,
      dataBytes: 4 * MiB,
      behaviour: { mode: 'idle' },
    });
    await t.stack.catalog.putVm({ vmId, host: 'kvm-01', source: vm.name, name: vm.name });
    await t.stack.catalog.putPolicy({ policyId: 'p-rtest', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: 256 * 1024, slotLimit: 1 });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-rtest' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect((JSON.parse(d.output!) as RunSummary).committed).toBe(1);
  }, 300_000);
  afterAll(async () => {
    for (const name of [...handMade, ...(await testDomains().catch(() => []))]) {
      await virsh(['destroy', name]).catch(() => {});
      await virsh(['undefine', name]).catch(() => {});
    }
    await vm?.remove();
    await t?.close();
  }, 120_000);

  it('boots the newest verified backup of each VM of the policy without network, sees its console line and its guest agent, records it on the backup, and leaves nothing behind', async () => {
    const out = await verify('DeepVerifyPolicy', {
      policyId: 'p-rtest',
      sample: 1,
      restoreTest: { bootCheck: { serial: 'LIFEBOAT-GUEST READY', agent: true }, timeoutSeconds: 240 },
    });
    const [s] = out.verified as DeepVerifySummary[];
    expect(s!.damaged).toBe(false);
    const test = s!.restoreTest as RestoreTestOutcome;
    expect(test, JSON.stringify(test)).toMatchObject({
      passed: true,
      agent: true,
      line: expect.stringMatching(/LIFEBOAT-GUEST READY/),
      domain: expect.stringMatching(/^lifeboat-restoretest-lifeboat-e2e-rtest-/),
    });
    expect(test.seconds).toBeGreaterThan(0);
    expect(test.restoreSeconds).toBeGreaterThan(0);
    expect(s).not.toHaveProperty('restoreTestJob');

    const backup = (await t.stack.catalog.latestCommitted(vmId))!;
    expect(backup.backupId).toBe(s!.backupId);
    expect(backup.restoreTest).toMatchObject({ passed: true, restoreId: s!.verifyId });
    expect(backup.restoreTest!.seconds).toBeCloseTo(test.seconds, 3);
    expect(backup.restoreTest!.reason).toBeUndefined();

    expect(await testDomains()).toEqual([]);
    expect(await testFolders()).toEqual([]);
    // The VM it was restored from runs on, untouched.
    expect((await virsh(['domstate', vm.name])).trim()).toBe('running');
  }, 420_000);

  it('records a guest that never shows the sign of life as failed, with the reason, and still removes its domain and folder', async () => {
    const s = (await verify('DeepVerify', {
      vmId,
      moverGroup: 'site-a',
      restoreTest: { bootCheck: { serial: 'NEVER-PRINTED-BY-THIS-GUEST' }, timeoutSeconds: 12 },
    })) as unknown as DeepVerifySummary;
    expect(s.damaged).toBe(false);
    const test = s.restoreTest as RestoreTestOutcome;
    expect(test.passed).toBe(false);
    // What the guest did print, if anything yet (a TCG guest under load may still be silent at 12 s).
    expect(test.reason).toMatch(
      /^no serial console line matched \/NEVER-PRINTED-BY-THIS-GUEST\/ within 12 s; (its last console line: ".+"|the console stayed empty)$/,
    );
    expect(test.seconds).toBeGreaterThanOrEqual(12);
    const backup = (await t.stack.catalog.getBackup(vmId, s.backupId))!;
    expect(backup.restoreTest).toMatchObject({ passed: false, restoreId: s.verifyId, reason: test.reason });
    expect(await testDomains()).toEqual([]);
    expect(await testFolders()).toEqual([]);
  }, 300_000);

  it("first sweeps the test domains and folders of a killed mover, and nothing else: not a live test's, not other domains or folders", async () => {
    const pid = process.pid;
    const dead = { host: (await ownerOfThisProcess(0)).host, pid: await deadPid(), start: '1', expires: new Date(Date.now() + 3600_000).toISOString() };
    const killedName = `${RESTORE_TEST_PREFIX}killed-${pid}`;
    const killedFolder = await leftoverDomain(killedName, dead, true);
    // A folder of a killed mover whose domain was never defined.
    const orphan = join(restoreTestRoot(workDir()), `${RESTORE_TEST_PREFIX}orphan-${pid}`);
    await mkdir(orphan, { recursive: true });
    await writeFile(join(orphan, '.lifeboat-restoretest-owner.json'), JSON.stringify(dead));
    // A test still running in a live process (this one), and things that are not restore tests.
    const liveName = `${RESTORE_TEST_PREFIX}live-${pid}`;
    const liveFolder = await leftoverDomain(liveName, await ownerOfThisProcess(3600_000), false);
    const other = join(restoreTestRoot(workDir()), `keep-me-${pid}`);
    await mkdir(other, { recursive: true });
    expect((await testDomains()).sort()).toEqual([killedName, liveName].sort());

    const s = (await verify('DeepVerify', {
      vmId,
      moverGroup: 'site-a',
      restoreTest: { bootCheck: { agent: true }, timeoutSeconds: 240 },
    })) as unknown as DeepVerifySummary;
    const test = s.restoreTest as RestoreTestOutcome;
    expect(test, JSON.stringify(test)).toMatchObject({ passed: true, agent: true });
    expect(test.swept.sort()).toEqual([killedName, `${RESTORE_TEST_PREFIX}orphan-${pid}`].sort());
    expect(t.logs.some((l) => l.event === 'restoretest.swept' && l.domain === killedName)).toBe(true);

    expect(await testDomains()).toEqual([liveName]);
    const left = await readdir(restoreTestRoot(workDir()));
    expect(left.sort()).toEqual([liveFolder.split('/').at(-1)!, `keep-me-${pid}`].sort());
    expect(left).not.toContain(killedFolder.split('/').at(-1));
    expect((await virsh(['domstate', vm.name])).trim()).toBe('running');
  }, 420_000);
});
