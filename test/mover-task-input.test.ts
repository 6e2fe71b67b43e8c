/**
 * The mover parses every Backup workflow task input with the contract's schema
 * (contracts/jobs.ts `moverTask`) before it touches a driver or a repository: a bad input
 * fails as Mover.BadTaskInput naming each bad field, and a good one reaches the driver.
 */
import { expect, test } from 'vitest';
import type { VmJob } from '../contracts/jobs.ts';
import type { DriverFor } from '../mover/sources/drivers.ts';
import { taskHandler, TASK_KINDS } from '../mover/tasks.ts';

const job: VmJob = {
  runId: 'run-1',
  policyId: 'p',
  backupId: 'bk-1',
  vmId: 'vm-1',
  host: 'h1',
  moverGroup: 'g',
  source: '/vms/vm-1',
  repository: { bucket: 'repo', chunkSize: 1024 * 1024 },
  parentBackupId: null,
  parentManifests: {},
  slotScopes: [{ scope: 'host:h1', limit: 2 }],
  slot: null,
  snapshot: null,
  segmentBytes: 64 * 1024 * 1024,
};

/** Reached only by a task that passed validation: the driver's first call says so. */
class ReachedDriver extends Error {}
const drivers: DriverFor = () => {
  throw new ReachedDriver('the task reached its driver');
};
const handler = taskHandler({
  drivers,
  repository: async () => {
    throw new ReachedDriver('the task reached its repository');
  },
  logger: { info: () => {}, error: () => {} },
  parallelism: 1,
  workDir: '/nonexistent',
});
const ctx = { signal: new AbortController().signal, progress: () => {} };

async function failure(input: unknown): Promise<Error> {
  const err = await handler(input, ctx).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  if (!err) throw new Error('the task did not fail');
  return err;
}

test.each([
  ['a job without its repository chunk size', { task: 'snapshot', job: { ...job, repository: { bucket: 'repo' } } }, 'job.repository.chunkSize'],
  ['a slot scope with no room', { task: 'releaseSnapshot', job: { ...job, slotScopes: [{ scope: 'host:h1', limit: 0 }] } }, 'job.slotScopes.0.limit'],
  ['a dispatch without the disk path', { task: 'dispatch', job, disk: { diskId: 'vda', sizeBytes: 10 } }, 'disk.path'],
  ['a job with a hypervisor the schema does not know', { task: 'snapshot', job: { ...job, hypervisor: { driver: 'vmware' } } }, 'job.hypervisor'],
  ['no job at all', { task: 'snapshot' }, 'job'],
])('%s fails as Mover.BadTaskInput naming the field', async (_what, input, field) => {
  const err = await failure(input);
  expect(err.name).toBe('Mover.BadTaskInput');
  expect(err.message).toContain(`${(input as { task: string }).task} task input is not valid`);
  expect(err.message).toContain(`${field}:`);
});

test('an unknown task kind names the kinds this mover knows', async () => {
  const err = await failure({ task: 'frobnicate', job });
  expect(err.name).toBe('Mover.BadTaskInput');
  expect(err.message).toContain(`unknown task 'frobnicate'; this mover knows ${TASK_KINDS.join(', ')}`);
});

test.each([
  ['snapshot', { task: 'snapshot', job }],
  ['dispatch', { task: 'dispatch', job, disk: { diskId: 'vda', path: '/vms/vm-1/vda.img', sizeBytes: 10 }, segment: null }],
  ['releaseSnapshot', { task: 'releaseSnapshot', job, unknownStateField: 'carried along' }],
])('a valid %s task passes validation and reaches its driver', async (_kind, input) => {
  expect(await failure(input)).toBeInstanceOf(ReachedDriver);
});

/* The recovery workflows' tasks (contracts/recovery-jobs.ts `recoveryTask`) are parsed the same way. */
const repository = { bucket: 'repo' };
const restore = {
  restoreId: 'r-1',
  vmId: 'vm-1',
  backupId: 'bk-1',
  moverGroup: 'g',
  repository,
  target: '/restore/vm-1',
  diskId: null,
  disks: [{ diskId: 'vda', sizeBytes: 10, path: '/restore/vm-1/vda.raw' }],
};
const verify = { verifyId: 'v-1', vmId: 'vm-1', backupId: 'bk-1', moverGroup: 'g', repository, sample: 1, disks: [{ diskId: 'vda', sizeBytes: 10 }] };
const replicate = {
  replicationId: 'rep-1',
  vmId: 'vm-1',
  backupId: 'bk-1',
  moverGroup: 'dr',
  source: repository,
  target: { bucket: 'dr' },
  disks: [{ diskId: 'vda', sizeBytes: 10 }],
  replicaDir: '/replicas',
  recoveryPoint: '2026-12-01T00:00:00.000Z',
};
const restoreTest = {
  testId: 't-1',
  vmId: 'vm-1',
  backupId: 'bk-1',
  moverGroup: 'g',
  repository,
  uri: 'qemu:///system',
  vmName: 'vm-1',
  disks: [{ diskId: 'vda', sizeBytes: 10 }],
  bootCheck: { agent: true },
  timeoutSeconds: 60,
};
const exportJob = { exportId: 'e-1', vmId: 'vm-1', backupId: 'bk-1', repository, diskIds: ['vda'], listen: { port: 0 } };
const filesJob = { filesId: 'f-1', vmId: 'vm-1', backupId: 'bk-1', diskId: 'vda', moverGroup: 'g', repository, op: 'ls', path: '/etc' };
const restored = { diskId: 'vda', path: '/restore/vm-1/vda.raw', sizeBytes: 10, bytesDownloaded: 0, chunksVerified: 0, sha256: 'a'.repeat(64), seconds: 0 };
const standby = {
  diskId: 'vda',
  path: '/replicas/vm-1/vda.raw',
  sizeBytes: 10,
  fromBackupId: null,
  chunksWritten: 0,
  bytesWritten: 0,
  chunksUnchanged: 0,
  sha256: 'a'.repeat(64),
  seconds: 0,
};
const disk = { diskId: 'vda', sizeBytes: 10 };
const backupRef = (backupId: string, bucket: string) => ({ backupId, repository: { bucket } });
const failback = {
  failbackId: 'fb-1', vmId: 'vm-1', drVmId: 'vm-1-dr', productionGroup: 'g', drGroup: 'dr',
  production: { uri: 'qemu:///system', name: 'vm-1' }, dr: { uri: 'qemu:///system', name: 'vm-1-dr' }, drPolicyId: 'p-dr',
  base: backupRef('bk-1', 'repo'), target: backupRef('bk-dr-1', 'dr'), disks: [disk], shutdownTimeoutSeconds: 60, readiness: { agent: true },
};

test.each([
  ['a restore of a disk without its path', { task: 'restoreDisk', restore, disk }, 'disk.path'],
  [
    'a restore job without its repository',
    { task: 'restoreDisk', restore: { ...restore, repository: undefined }, disk: restore.disks[0] },
    'restore.repository',
  ],
  ['a restored disk whose hash is not SHA-256', { task: 'restoreVmConfig', restore, disks: [{ ...restored, sha256: 'abc' }] }, 'disks.0.sha256'],
  ['a pool volume discard without the restore id', { task: 'discardPoolVolumes', restore: { ...restore, restoreId: '' } }, 'restore.restoreId'],
  ['a deep verification without its sample', { task: 'deepVerifyDisk', verify: { ...verify, sample: undefined }, disk }, 'verify.sample'],
  ['a replication without its target', { task: 'replicateDisk', replicate: { ...replicate, target: undefined }, disk, index: 0 }, 'replicate.target'],
  [
    'a standby update of a replication that keeps no replica',
    { task: 'updateStandbyDisk', replicate: { ...replicate, replicaDir: null }, disk },
    'replicate.replicaDir',
  ],
  ['a standby config with a disk lacking its path', { task: 'standbyVmConfig', replicate, disks: [{ ...standby, path: undefined }] }, 'disks.0.path'],
  ['a restore test with a timeout under 5 s', { task: 'restoreTest', test: { ...restoreTest, timeoutSeconds: 1 } }, 'test.timeoutSeconds'],
  ['an export on a port that does not exist', { task: 'export', export: { ...exportJob, listen: { port: 99999 } } }, 'export.listen.port'],
  ['a file listing of a relative path', { task: 'files', files: { ...filesJob, path: 'etc' } }, 'files.path'],
  ['an instant recovery without a domain to define', { task: 'instantRecover', restore }, 'restore.define'],
  ['a failback disk without its mode', { task: 'failbackDisk', failback, disk, from: failback.base, to: failback.target }, 'mode'],
  ['a DR VM shutdown with no time to shut down', { task: 'stopDrVm', failback: { ...failback, shutdownTimeoutSeconds: 0 } }, 'failback.shutdownTimeoutSeconds'],
  ['a production start without a sign of life', { task: 'startProductionVm', failback: { ...failback, readiness: {} } }, 'failback.readiness'],
])('%s fails as Mover.BadTaskInput naming the field', async (_what, input, field) => {
  const err = await failure(input);
  expect(err.name).toBe('Mover.BadTaskInput');
  expect(err.message).toContain(`${input.task} task input is not valid`);
  expect(err.message).toContain(`${field}:`);
});

test.each([
  ['restoreDisk', { task: 'restoreDisk', restore, disk: restore.disks[0] }],
  ['restoreVmConfig', { task: 'restoreVmConfig', restore, disks: [restored] }],
  ['deepVerifyDisk', { task: 'deepVerifyDisk', verify, disk }],
  ['replicateDisk', { task: 'replicateDisk', replicate, disk, index: 0 }],
  ['updateStandbyDisk', { task: 'updateStandbyDisk', replicate, disk }],
  ['standbyVmConfig', { task: 'standbyVmConfig', replicate, disks: [standby] }],
  ['restoreTest', { task: 'restoreTest', test: restoreTest }],
  ['export', { task: 'export', export: exportJob }],
  ['files', { task: 'files', files: filesJob }],
  ['instantRecover', { task: 'instantRecover', restore: { ...restore, define: { uri: 'qemu:///system' }, instant: {} } }],
  ['failbackDisk', { task: 'failbackDisk', failback, disk, from: failback.base, to: failback.target, mode: 'hash' }],
])('a valid %s task passes validation and reaches its repository', async (_kind, input) => {
  expect(await failure(input)).toBeInstanceOf(ReachedDriver);
});
