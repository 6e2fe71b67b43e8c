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
