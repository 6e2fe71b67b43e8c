/**
 * Restore tests planned by deep verification (which VMs, when, with which sign of life),
 * recorded by RecordRestoreTest, and the owner rule of the mover's sweep; on a real
 * dynalite catalog. The boot itself is test/restore-test.e2e.test.ts.
 */
import { execFile } from 'node:child_process';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DiskResult } from '../contracts/jobs.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { planDeepVerify, recordDeepVerify, recordRestoreTest, recordRestoreTestInput } from '../functions/deep-verify/deep-verify.ts';
import { planDeepVerifyPolicy } from '../functions/deep-verify/deep-verify-policy.ts';
import { syncConfig } from '../functions/deploy/sync-config.ts';
import { loadConfig } from '../core/config.ts';
import { restoreTestMetrics } from '../contracts/metric-names.ts';
import { isLeftover, ownerOfThisProcess, restoreTestDomainName } from '../mover/recovery/restore-test.ts';
import { startTestCatalog } from './helpers/catalog.ts';
import type { DeepVerifySummary } from '../contracts/workflow-outputs.ts';

let db: Awaited<ReturnType<typeof startTestCatalog>>;
let catalog: Catalog;
let recovery: RecoveryCatalog;
const now = new Date('2026-12-05T04:00:00Z');
const deps = (metrics = newMetrics()) => ({ catalog, recovery, metrics, now: () => now });
function newMetrics() {
  return new Metrics({ namespace: 'LifeboatTest', serviceName: 'lifeboat' });
}
/** What `metrics` would publish as EMF: each metric's value, and the dimension sets. */
function published(metrics: Metrics): { values: Record<string, unknown>; dimensions: string[][] } {
  const emf = metrics.serializeMetrics() as unknown as Record<string, unknown> & {
    _aws: { CloudWatchMetrics: { Dimensions: string[][]; Metrics: { Name: string }[] }[] };
  };
  const directive = emf._aws.CloudWatchMetrics[0]!;
  return { values: Object.fromEntries(directive.Metrics.map((m) => [m.Name, emf[m.Name]])), dimensions: directive.Dimensions };
}
const disk: DiskResult = {
  diskId: 'vda',
  sizeBytes: 1 << 20,
  manifestKey: 'manifests/b/vda.manifest',
  stats: {
    bytesScanned: 0,
    bytesNew: 0,
    bytesZero: 0,
    bytesUploaded: 0,
    bytesStored: 0,
    chunks: 0,
    zeroChunks: 0,
    parentChunks: 0,
    dedupedChunks: 0,
    uploadedChunks: 0,
    seconds: 0,
  },
};

async function committed(vmId: string, backupId: string) {
  await catalog.startBackup({ vmId, backupId, runId: 'r', policyId: 'p', status: 'running', parentBackupId: null, startedAt: now.toISOString() });
  await catalog.commitBackup(vmId, backupId, [disk], now);
}

beforeAll(async () => {
  db = await startTestCatalog();
  ({ catalog, recovery } = db);
  await catalog.putHost({
    hostId: 'kvm-1',
    moverGroup: 'site-kvm',
    site: 's',
    maxConcurrentBackups: 1,
    datastores: {},
    hypervisor: { driver: 'libvirt', uri: 'qemu+ssh://kvm-1/system' },
  });
  await catalog.putHost({ hostId: 'files', moverGroup: 'site-a', site: 's', maxConcurrentBackups: 1, datastores: {} });
  await catalog.putVm({ vmId: 'web@kvm-1', host: 'kvm-1', source: 'web', name: 'web' });
  await catalog.putVm({ vmId: 'plain', host: 'files', source: '/srv/vms/plain' });
  await catalog.putPolicy({
    policyId: 'p',
    vmIds: ['web@kvm-1', 'plain'],
    bucket: 'repo',
    chunkSize: 1 << 16,
    slotLimit: 1,
    restoreTest: { enabled: true, bootCheck: { serial: 'login:' }, timeoutSeconds: 120, everyDays: 7 },
  });
  await committed('web@kvm-1', 'b1');
  await committed('plain', 'b1');
});
afterAll(() => db?.close());

describe('planning restore tests', () => {
  it("takes a policy's restore test settings from the configuration into the catalog (SyncConfig)", async () => {
    const example = loadConfig();
    const restoreTest = { enabled: true, bootCheck: { serial: 'login:', agent: true }, timeoutSeconds: 240, everyDays: 7 };
    const config = { ...example, policies: example.policies.map((p, i) => (i === 1 ? { ...p, restoreTest } : p)) };
    await syncConfig({ config, buckets: { primary: 'repo', dr: 'lifeboat-dr' } }, { catalog });
    expect((await catalog.getPolicy(example.policies[1]!.id))!.restoreTest).toEqual(restoreTest);
    expect((await catalog.getPolicy(example.policies[0]!.id))!.restoreTest).toBeUndefined();
  });

  it('plans a test for each libvirt VM of a policy that enables them, on the group of its host with its libvirt URI, and says why a folder VM gets none', async () => {
    const { jobs } = await planDeepVerifyPolicy({ verifyId: 'v1', request: { policyId: 'p' } }, deps());
    const web = jobs.find((j) => j.vmId === 'web@kvm-1')!;
    expect(web.moverGroup).toBe('site-kvm');
    expect(web.restoreTest).toEqual({
      testId: 'v1-web@kvm-1',
      vmId: 'web@kvm-1',
      backupId: 'b1',
      moverGroup: 'site-kvm',
      repository: { bucket: 'repo' },
      uri: 'qemu+ssh://kvm-1/system',
      vmName: 'web',
      disks: [{ diskId: 'vda', sizeBytes: 1 << 20 }],
      bootCheck: { serial: 'login:' },
      timeoutSeconds: 120,
    });
    const plain = jobs.find((j) => j.vmId === 'plain')!;
    expect(plain.restoreTest).toBeUndefined();
    expect(plain.restoreTestSkipped).toMatch(/not on a libvirt host \(host 'files' uses the folder driver\)/);
  });

  it('skips a VM tested within everyDays unless the request asks for the test, and none runs when the request says false', async () => {
    await catalog.recordRestoreTest('web@kvm-1', 'b1', {
      passed: true,
      seconds: 9,
      restoreId: 'older',
      at: new Date(now.getTime() - 2 * 86_400_000).toISOString(),
    });
    const due = (await planDeepVerifyPolicy({ verifyId: 'v2', request: { policyId: 'p' } }, deps())).jobs.find((j) => j.vmId === 'web@kvm-1')!;
    expect(due.restoreTest).toBeUndefined();
    expect(due.restoreTestSkipped).toMatch(/not due: .* every 7 day/);
    const forced = await planDeepVerify({ verifyId: 'v3', request: { vmId: 'web@kvm-1', moverGroup: 'site-kvm', restoreTest: true } }, deps());
    expect(forced.restoreTest?.bootCheck).toEqual({ serial: 'login:' });
    const own = await planDeepVerify(
      { verifyId: 'v4', request: { vmId: 'web@kvm-1', moverGroup: 'site-kvm', restoreTest: { bootCheck: { agent: true }, timeoutSeconds: 30 } } },
      deps(),
    );
    expect(own.restoreTest).toMatchObject({ bootCheck: { agent: true }, timeoutSeconds: 30 });
    const off = await planDeepVerify({ verifyId: 'v5', request: { vmId: 'web@kvm-1', moverGroup: 'site-kvm', restoreTest: false } }, deps());
    expect(off).not.toHaveProperty('restoreTest');
    expect(off).not.toHaveProperty('restoreTestSkipped');
  });

  it('defaults to the guest agent as the sign of life and 300 s when neither the request nor the policy says', async () => {
    await catalog.putPolicy({ policyId: 'bare', vmIds: ['web@kvm-1'], bucket: 'repo', chunkSize: 1 << 16, slotLimit: 1 });
    await catalog.startBackup({
      vmId: 'web@kvm-1',
      backupId: 'b2',
      runId: 'r',
      policyId: 'bare',
      status: 'running',
      parentBackupId: null,
      startedAt: now.toISOString(),
    });
    await catalog.commitBackup('web@kvm-1', 'b2', [disk], now);
    const job = await planDeepVerify({ verifyId: 'v6', request: { vmId: 'web@kvm-1', backupId: 'b2', moverGroup: 'site-kvm', restoreTest: true } }, deps());
    expect(job.restoreTest).toMatchObject({ backupId: 'b2', bootCheck: { agent: true }, timeoutSeconds: 300 });
  });
});

describe('recording restore tests', () => {
  const planned = () => planDeepVerify({ verifyId: 'v7', request: { vmId: 'web@kvm-1', backupId: 'b1', moverGroup: 'site-kvm', restoreTest: true } }, deps());
  const verified = (damaged: boolean) => [
    {
      diskId: 'vda',
      chunksTotal: 4,
      chunksChecked: 4,
      bytesRead: 1,
      seconds: 0,
      damaged: damaged ? [{ backupId: 'b1', diskId: 'vda', offsets: [0], objectKey: 'packs/ab/x', reason: 'bad tag' }] : [],
    },
  ];

  it('passes the test on only after a clean verification; a damaged backup is not booted', async () => {
    const job = await planned();
    const clean = await recordDeepVerify({ ...job, verified: verified(false) }, deps());
    expect(clean.restoreTestJob).toEqual(job.restoreTest);
    const dirty = await recordDeepVerify({ ...job, verified: verified(true) }, deps());
    expect(dirty.restoreTestJob).toBeUndefined();
    expect(dirty.restoreTest).toEqual({ skipped: 'the backup is damaged: it is not restore-tested' });
  });

  it("records the mover's answer on the backup, and a test that failed as a task as failed with the error as its reason", async () => {
    const job = await planned();
    const clean = await recordDeepVerify({ ...job, verified: verified(false) }, deps());
    const passed = await recordRestoreTest(
      recordRestoreTestInput.parse({
        ...clean,
        restoreTestResult: {
          testId: 'v7',
          vmId: 'web@kvm-1',
          backupId: 'b1',
          domain: 'lifeboat-restoretest-web-0a1b2c3d',
          passed: true,
          seconds: 11.5,
          restoreSeconds: 3,
          line: 'login:',
          swept: [],
        },
      }),
      deps(),
    );
    expect(passed.restoreTest).toEqual({
      passed: true,
      seconds: 11.5,
      restoreSeconds: 3,
      domain: 'lifeboat-restoretest-web-0a1b2c3d',
      line: 'login:',
      swept: [],
    });
    expect(passed).not.toHaveProperty('restoreTestJob');
    expect((await catalog.getBackup('web@kvm-1', 'b1'))!.restoreTest).toEqual({ passed: true, seconds: 11.5, restoreId: 'v7', at: now.toISOString() });

    const failed = await recordRestoreTest(
      recordRestoreTestInput.parse({ ...clean, restoreTestError: { Error: 'Mover.SourceUnavailable', Cause: 'virsh start failed: no kernel' } }),
      deps(),
    );
    expect(failed.restoreTest).toMatchObject({ passed: false, seconds: 0, domain: null, reason: 'Mover.SourceUnavailable: virsh start failed: no kernel' });
    expect((await catalog.getBackup('web@kvm-1', 'b1'))!.restoreTest).toMatchObject({
      passed: false,
      reason: 'Mover.SourceUnavailable: virsh start failed: no kernel',
    });
    const record = await recovery.getRecord('DEEPVERIFY', 'v7');
    expect((record!.summary as DeepVerifySummary).restoreTest).toMatchObject({ passed: false });
  });

  it('publishes RestoreTestsFailed and shapes the Lifeboat Restore Test Failed event for a failed test, and only RestoreTestsPassed for a passed one', async () => {
    const job = await planned();
    const clean = await recordDeepVerify({ ...job, verified: verified(false) }, deps());
    const result = (passed: boolean) => ({
      testId: 'v7',
      vmId: 'web@kvm-1',
      backupId: 'b1',
      domain: 'lifeboat-restoretest-web-0a1b2c3d',
      passed,
      seconds: passed ? 11.5 : 120,
      restoreSeconds: 3,
      swept: [],
    });

    const onPass = newMetrics();
    const passed = await recordRestoreTest(recordRestoreTestInput.parse({ ...clean, restoreTestResult: result(true) }), deps(onPass));
    expect(passed).not.toHaveProperty('restoreTestFailed');
    expect(published(onPass)).toEqual({ values: { [restoreTestMetrics.passed]: 1 }, dimensions: [['service']] });

    const onTimeout = newMetrics();
    const timedOut = await recordRestoreTest(recordRestoreTestInput.parse({ ...clean, restoreTestResult: result(false) }), deps(onTimeout));
    expect(timedOut.restoreTestFailed).toEqual({
      vmId: 'web@kvm-1',
      backupId: 'b1',
      verifyId: 'v7',
      reason: 'no sign of life within the timeout',
      seconds: 120,
    });
    expect(published(onTimeout)).toEqual({ values: { [restoreTestMetrics.failed]: 1 }, dimensions: [['service']] });

    // A test that failed as a task is a failed test too: the event carries the error.
    const onError = newMetrics();
    const errored = await recordRestoreTest(
      recordRestoreTestInput.parse({ ...clean, restoreTestError: { Error: 'Mover.SourceUnavailable', Cause: 'virsh start failed: no kernel' } }),
      deps(onError),
    );
    expect(errored.restoreTestFailed).toEqual({
      vmId: 'web@kvm-1',
      backupId: 'b1',
      verifyId: 'v7',
      reason: 'Mover.SourceUnavailable: virsh start failed: no kernel',
      seconds: 0,
    });
    expect(published(onError).values).toEqual({ [restoreTestMetrics.failed]: 1 });
  });
});

describe('what the sweep takes for a leftover', () => {
  it('a test of a live mover process on this host is not; one whose process is gone, or whose time ran out, is', async () => {
    const live = await ownerOfThisProcess(60_000);
    expect(await isLeftover(live)).toBe(false);
    expect(await isLeftover({ ...live, expires: new Date(Date.now() - 1).toISOString() })).toBe(true);
    // The same pid started at another time is another process (a pid reused).
    expect(await isLeftover({ ...live, start: `${live.start}0` })).toBe(true);
    const child = execFile('true');
    await new Promise((r) => child.once('exit', r));
    expect(await isLeftover({ ...live, pid: child.pid! })).toBe(true);
    // Another host's test is trusted until its time runs out.
    expect(await isLeftover({ ...live, host: 'elsewhere', pid: child.pid! })).toBe(false);
  });

  it('names test domains with the prefix, a safe part of the VM name and a random part', () => {
    const a = restoreTestDomainName('web server/01 with a very long name indeed');
    expect(a).toMatch(/^lifeboat-restoretest-web-server-01-with-a-ver-[0-9a-f]{8}$/);
    expect(restoreTestDomainName('web')).not.toBe(restoreTestDomainName('web'));
  });
});
