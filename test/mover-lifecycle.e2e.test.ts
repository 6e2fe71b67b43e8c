import { Repository } from '../repository/open.ts';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { publishRelease, buildMoverRelease } from '../cli/release.ts';
import { moverRecordKey, parseMoverRegistration } from '../core/mover-registry.ts';
import { generateReleaseKeyPair, parsePrivateKey } from '../core/release.ts';
import { LIFEBOAT_VERSION } from '../core/version.ts';
import { listMovers } from '../core/mover-fleet.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../local/movers.ts';
import { openRepository } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { restoreVm } from '../mover/pipeline/restore-vm.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const run = promisify(execFile);
let t: TestStack;
let publicKeyFile: string;
const releaseKey = generateReleaseKeyPair();
const CLI = join(import.meta.dirname, '..', 'cli', 'lifeboat.ts');
const started: MoverProcess[] = [];

beforeAll(async () => {
  t = await startTestStack({ movers: 0 });
  publicKeyFile = join(t.dir, 'release.pub');
  await writeFile(publicKeyFile, releaseKey.publicKeyPem);
  // What `lifeboat up` writes: the command line finds the running stack through it.
  await writeFile(join(t.stack.endpoints.dataDir, 'endpoints.json'), JSON.stringify(t.stack.endpoints));
});
afterEach(async () => {
  delete process.env.LIFEBOAT_MIN_MOVER_VERSION;
  await Promise.all(started.splice(0).map((m) => m.stop(true)));
});
afterAll(async () => {
  await t?.close();
});

function mover(name: string, env: Record<string, string> = {}, slots = 1): MoverProcess {
  const m = startMover(t.stack.endpoints, {
    name,
    group: 'site-a',
    slots,
    onLog: (l) => t.logs.push(l),
    env: { LIFEBOAT_RELEASE_PUBLIC_KEY_FILE: publicKeyFile, LIFEBOAT_REGISTRATION_SECONDS: '1', LIFEBOAT_HEARTBEAT_MS: '1000', ...env },
  });
  started.push(m);
  return m;
}

const logsOf = (name: string) => t.logs.filter((l) => l.mover === name);

async function waitForLog(name: string, pred: (l: MoverLogLine) => boolean, what: string, ms = 60_000): Promise<MoverLogLine> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(25)) {
    const hit = logsOf(name).find(pred);
    if (hit) return hit;
  }
  throw new Error(
    `mover ${name} logged no ${what} within ${ms} ms; its log:\n${logsOf(name)
      .map((l) => JSON.stringify(l))
      .join('\n')}`,
  );
}

async function addVm(vmId: string, sizeBytes: number, slotLimit = 1): Promise<string> {
  const dir = join(t.dir, 'vms', vmId);
  await createVmFolder(dir, { name: vmId, disks: [{ id: 'disk0', sizeBytes }] }, seededRng(5));
  await t.stack.catalog.putVm({ vmId, host: 'esx-01', source: dir });
  await t.stack.catalog.putPolicy({ policyId: `p-${vmId}`, vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit });
  return dir;
}

const backup = (vmId: string) => runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: `p-${vmId}` }, { pollMs: 250 });

async function registered(name: string) {
  const { store } = await openRepository(t.stack.endpoints);
  const bytes = await store.get(moverRecordKey(name));
  return bytes && parseMoverRegistration(bytes);
}

describe('registration', () => {
  it('registers name, group, version and capabilities in the repository; lifeboat movers lists it, then shows it stopped', async () => {
    const m = mover('life-reg', {}, 2);
    await waitForLog('life-reg', (l) => l.event === 'worker.started', 'worker.started');
    let rec = await registered('life-reg');
    for (let i = 0; !rec && i < 40; i++) rec = await sleep(50).then(() => registered('life-reg'));
    expect(rec).toMatchObject({
      name: 'life-reg',
      group: 'site-a',
      version: LIFEBOAT_VERSION,
      state: 'running',
      slots: 2,
      pid: m.child.pid,
      capabilities: { sources: ['folder'], tasks: expect.arrayContaining(['snapshot', 'dispatch', 'releaseSnapshot']) as unknown },
    });

    const e = t.stack.endpoints;
    const { store } = await openRepository(e);
    const live = await listMovers({ store, now: () => new Date() });
    expect(live.find((v) => v.name === 'life-reg')).toMatchObject({ status: 'live', upToDate: true });
    // Five missed heartbeats later, the same record reads as stale.
    const later = await listMovers({ store, now: () => new Date(Date.now() + 5000) });
    expect(later.find((v) => v.name === 'life-reg')?.status).toBe('stale');

    expect(await m.stop()).toBe(0);
    expect(await registered('life-reg')).toMatchObject({ state: 'stopped' });
    // The command line reads the same records through the running stack's endpoints file.
    const cli = await run(process.execPath, [CLI, 'movers', '--data-dir', e.dataDir]);
    expect(cli.stdout).toMatch(new RegExp(`site-a\\s+life-reg\\s+${LIFEBOAT_VERSION.replace(/\./g, '\\.')}\\s+stopped\\s+0/2`));
  });
});

describe('SIGTERM drain', () => {
  it('finishes the task in flight, takes no new one, and exits within the grace time', async () => {
    await addVm('vm-drain', 24 * MiB);
    // 2 MiB/s to the repository: the Dispatch takes seconds, so the signal lands mid-transfer.
    const m = mover('life-drain', {
      LIFEBOAT_BANDWIDTH_LIMIT: String(2 * MiB),
      LIFEBOAT_MOVER_PARALLELISM: '1',
      LIFEBOAT_PACK_MIB: '1',
      LIFEBOAT_SHUTDOWN_GRACE_MS: '60000',
    });
    const execution = backup('vm-drain');
    await waitForLog('life-drain', (l) => l.event === 'dispatch.progress' && (l.bytesStored as number) > 0, 'dispatch progress');
    const signalled = Date.now();
    const code = await m.stop();
    const took = Date.now() - signalled;
    expect(code).toBe(0);
    expect(took).toBeLessThan(60_000);

    const log = logsOf('life-drain');
    const drainAt = log.findIndex((l) => l.event === 'worker.draining');
    expect(drainAt).toBeGreaterThan(0);
    const after = log.slice(drainAt);
    // The Dispatch it had was finished and reported...
    expect(after.some((l) => l.event === 'task.succeeded' && l.task === 'dispatch')).toBe(true);
    // ...and nothing new was taken, though ReleaseSnapshot was waiting for a mover.
    expect(after.filter((l) => l.event === 'task.started')).toEqual([]);
    expect(await registered('life-drain')).toMatchObject({ state: 'stopped' });

    mover('life-drain-2');
    const d = await execution;
    expect(d.status).toBe('SUCCEEDED');
    expect(JSON.parse(d.output!) as RunSummary).toMatchObject({ committed: 1, failed: 0 });
    expect(logsOf('life-drain-2').some((l) => l.event === 'task.succeeded' && l.task === 'releaseSnapshot')).toBe(true);
  });

  it('abandons a task that outlasts the grace time, exits non-zero, and the task is retried on another mover', async () => {
    await addVm('vm-grace', 24 * MiB);
    const m = mover('life-grace', {
      LIFEBOAT_BANDWIDTH_LIMIT: String(MiB),
      LIFEBOAT_MOVER_PARALLELISM: '1',
      LIFEBOAT_PACK_MIB: '1',
      LIFEBOAT_SHUTDOWN_GRACE_MS: '1500',
    });
    const execution = backup('vm-grace');
    await waitForLog('life-grace', (l) => l.event === 'dispatch.progress' && (l.bytesStored as number) > 0, 'dispatch progress');
    const signalled = Date.now();
    expect(await m.stop()).toBe(1);
    expect(Date.now() - signalled).toBeLessThan(1500 + 4000);
    expect(logsOf('life-grace').some((l) => l.event === 'worker.grace_expired')).toBe(true);
    expect(logsOf('life-grace').some((l) => l.event === 'task.succeeded' && l.task === 'dispatch')).toBe(false);

    // No answer was sent: the heartbeat timeout hands the Dispatch to the next mover.
    mover('life-grace-2', {}, 2);
    const d = await execution;
    expect(d.status).toBe('SUCCEEDED');
    expect(logsOf('life-grace-2').some((l) => l.event === 'task.succeeded' && l.task === 'dispatch')).toBe(true);
  }, 180_000);
});

describe('self-update at job time', () => {
  it('an old mover fetches the signed release, re-executes as the new version in the same process, and the backup completes on it', async () => {
    const { store } = await openRepository(t.stack.endpoints);
    const published = await publishRelease(store, {
      version: '0.2.0',
      files: await buildMoverRelease('0.2.0'),
      privateKey: parsePrivateKey(releaseKey.privateKeyPem, 'test'),
    });
    expect(published.keyId).toBe(releaseKey.keyId);
    const vmDir = await addVm('vm-up', 16 * MiB);
    process.env.LIFEBOAT_MIN_MOVER_VERSION = '0.2.0';

    const m = mover('life-old');
    const first = await waitForLog('life-old', (l) => l.event === 'worker.started', 'worker.started');
    expect(first.version).toBe(LIFEBOAT_VERSION);
    const d = await backup('vm-up');
    expect(d.status).toBe('SUCCEEDED');
    expect(JSON.parse(d.output!) as RunSummary).toMatchObject({ committed: 1, failed: 0 });

    const log = logsOf('life-old');
    expect(log.find((l) => l.event === 'upgrade.installed')).toMatchObject({ version: LIFEBOAT_VERSION, release: '0.2.0', keyId: releaseKey.keyId });
    expect(log.some((l) => l.event === 'worker.restarting')).toBe(true);
    // Every task of the job ran on the new version; the old one ran none of them.
    const done = log.filter((l) => l.event === 'task.succeeded');
    expect(done.map((l) => l.task).sort()).toEqual(['dispatch', 'releaseSnapshot', 'snapshot']);
    expect(done.every((l) => l.version === '0.2.0')).toBe(true);
    expect(log.some((l) => l.event === 'task.resumed' && l.version === '0.2.0')).toBe(true);
    // Same process (re-exec, not a new child): still running, registered as 0.2.0 with its pid.
    expect(m.child.exitCode).toBeNull();
    expect(await registered('life-old')).toMatchObject({ version: '0.2.0', pid: m.child.pid, state: 'running' });

    const backupRec = (await t.stack.catalog.latestCommitted('vm-up'))!;
    const { keys } = await stackRepositoryKeys(t.stack.endpoints);
    const restored = await restoreVm({
      repository: new Repository(store, keys),
      backupId: backupRec.backupId,
      diskIds: ['disk0'],
      targetDir: join(t.dir, 'restore-up'),
    });
    expect(await sha256File(restored.disks[0]!.path)).toBe(await sha256File(join(vmDir, 'disk0.raw')));

    // Restarted from its original program, the appliance boots into the installed release.
    expect(await m.stop()).toBe(0);
    const startsAsNew = () => logsOf('life-old').filter((l) => l.event === 'worker.started' && l.version === '0.2.0').length;
    expect(startsAsNew()).toBe(1);
    mover('life-old');
    await waitForLog('life-old', () => startsAsNew() === 2, 'a second start as 0.2.0');
    expect(
      logsOf('life-old')
        .filter((l) => l.event === 'upgrade.boot')
        .map((l) => [l.version, l.to]),
    ).toEqual([[LIFEBOAT_VERSION, '0.2.0']]);
  }, 180_000);

  it('holds a task that needs the upgrade until the task in flight is finished by the old version, then restarts', async () => {
    await addVm('vm-busy-a', 24 * MiB, 2);
    await addVm('vm-busy-b', 8 * MiB, 2);
    const m = mover('life-busy', { LIFEBOAT_BANDWIDTH_LIMIT: String(2 * MiB), LIFEBOAT_MOVER_PARALLELISM: '1', LIFEBOAT_PACK_MIB: '1' }, 2);
    const a = backup('vm-busy-a');
    await waitForLog('life-busy', (l) => l.event === 'dispatch.progress' && (l.bytesStored as number) > 0, 'dispatch progress');
    // Jobs planned from now on need 0.2.0 (published by the test above).
    process.env.LIFEBOAT_MIN_MOVER_VERSION = '0.2.0';
    const b = backup('vm-busy-b');
    const [da, db] = await Promise.all([a, b]);
    expect([da.status, db.status]).toEqual(['SUCCEEDED', 'SUCCEEDED']);
    expect(JSON.parse(db.output!) as RunSummary).toMatchObject({ committed: 1, failed: 0 });

    const log = logsOf('life-busy');
    const restartAt = log.findIndex((l) => l.event === 'worker.restarting');
    expect(log.findIndex((l) => l.event === 'task.handover_waiting' && l.tasksInFlight === 1)).toBeGreaterThan(-1);
    // vm-busy-a's Dispatch finished on the old version before the restart...
    const aDispatch = log.findIndex((l) => l.event === 'task.succeeded' && l.task === 'dispatch' && l.vmId === 'vm-busy-a');
    expect(aDispatch).toBeGreaterThan(-1);
    expect(aDispatch).toBeLessThan(restartAt);
    expect(log[aDispatch]!.version).toBe(LIFEBOAT_VERSION);
    // ...and every task of vm-busy-b ran on the new one.
    const bDone = log.filter((l) => l.event === 'task.succeeded' && l.vmId === 'vm-busy-b');
    expect(bDone.map((l) => l.task).sort()).toEqual(['dispatch', 'releaseSnapshot', 'snapshot']);
    expect(bDone.every((l) => l.version === '0.2.0')).toBe(true);
    expect(m.child.exitCode).toBeNull();
  }, 120_000);

  it('refuses a release with a bad signature, names the release and the keys, and keeps serving the jobs it can', async () => {
    // Published with the command line, signed with a key the movers were not installed with.
    const attackerDir = join(t.dir, 'attacker');
    const keygen = await run(process.execPath, [CLI, 'release', 'keygen', '--out', attackerDir]);
    const attackerKeyId = /release key ([0-9a-f]{16})/.exec(keygen.stdout)?.[1];
    expect(attackerKeyId).toBeDefined();
    await expect(run(process.execPath, [CLI, 'release', 'keygen', '--out', attackerDir])).rejects.toThrow(/release.key exists already/);
    const published = await run(process.execPath, [
      CLI,
      'release',
      'publish',
      '--data-dir',
      t.stack.endpoints.dataDir,
      '--key',
      join(attackerDir, 'release.key'),
      '--version',
      '0.3.0',
    ]);
    expect(published.stdout).toContain(`published mover 0.3.0 to s3://${t.stack.endpoints.bucket}`);
    expect(published.stdout).toContain(`signed by key ${attackerKeyId}`);
    await addVm('vm-refuse', 8 * MiB);
    process.env.LIFEBOAT_MIN_MOVER_VERSION = '0.3.0';

    const m = mover('life-refuse');
    const refused = await backup('vm-refuse');
    expect(refused.status).toBe('SUCCEEDED');
    const summary = JSON.parse(refused.output!) as RunSummary;
    expect(summary).toMatchObject({ committed: 0, failed: 1 });
    const error = summary.vms[0]!.error!;
    expect(error.Error).toBe('Mover.CannotUpgrade');
    expect(error.Cause).toContain('release 0.3.0');
    expect(error.Cause).toContain('bad signature');
    expect(error.Cause).toContain(`release public key ${releaseKey.keyId} (LIFEBOAT_RELEASE_PUBLIC_KEY_FILE=${publicKeyFile})`);
    expect(error.Cause).toContain(`signed by key ${attackerKeyId}`);
    expect(existsSync(join(t.stack.endpoints.dataDir, 'movers', 'life-refuse', 'current'))).toBe(false);
    expect(m.child.exitCode).toBeNull();

    // A job its version can run goes through on the same, old mover.
    delete process.env.LIFEBOAT_MIN_MOVER_VERSION;
    const ok = await backup('vm-refuse');
    expect(ok.status).toBe('SUCCEEDED');
    expect(JSON.parse(ok.output!) as RunSummary).toMatchObject({ committed: 1, failed: 0 });
    const done = logsOf('life-refuse').filter((l) => l.event === 'task.succeeded' && l.task === 'dispatch');
    expect(done.length).toBe(1);
    expect(done[0]!.version).toBe(LIFEBOAT_VERSION);
    expect(m.child.exitCode).toBeNull();
  }, 120_000);
});
