/**
 * A stack killed mid-backup (kill -9 of `lifeboat up` and its movers, as a crash does) is
 * reconciled when it starts again: the run's backup record is failed naming the restart,
 * its slot and the policy's run lease are free, the mover releases the snapshot it left in
 * the VM folder, and the next run of the policy commits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { DescribeExecutionCommand, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import { Catalog } from '../functions/catalog/catalog.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { LOCAL_CREDENTIALS, type StackEndpoints } from '../local/stack.ts';

const MiB = 1024 * 1024;
const children: ChildProcess[] = [];
let dir = '';

/** `lifeboat up` in its own process group (the stack and its movers), with its JSON log lines. */
async function up(dataDir: string): Promise<{ child: ChildProcess; lines: string[]; e: StackEndpoints }> {
  const child = spawn(process.execPath, ['cli/lifeboat.ts', 'up', '--data-dir', dataDir, '--movers', '1', '--sfn-port', '0'], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Slow movers: the backup is still dispatching when the stack is killed.
    env: { ...process.env, LIFEBOAT_BANDWIDTH_LIMIT: String(2 * MiB) },
  });
  children.push(child);
  const lines: string[] = [];
  let buffered = '';
  child.stdout!.on('data', (d: Buffer) => {
    buffered += d.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  await until(
    () => lines.some((l) => l.startsWith('Lifeboat embedded stack is up')),
    90_000,
    () => `the stack did not start: ${stderr}`,
  );
  const e = JSON.parse(await readFile(join(dataDir, 'endpoints.json'), 'utf8')) as StackEndpoints;
  return { child, lines, e };
}

async function until(ok: () => boolean | Promise<boolean>, ms: number, what: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(what());
    await sleep(200);
  }
}

const killGroup = (c: ChildProcess) => {
  try {
    process.kill(-c.pid!, 'SIGKILL');
  } catch {
    /* gone */
  }
};
const catalogOf = (e: StackEndpoints) =>
  new Catalog(DynamoDBDocumentClient.from(new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS })), e.table);

afterAll(async () => {
  for (const c of children) killGroup(c);
  if (dir) await rm(dir, { recursive: true, force: true });
});

it('reconciles a backup the stack was killed in: record failed, slot and run lease free, snapshot released, next run clean', async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-reconcile-'));
  const dataDir = join(dir, 'data');
  const vmDir = join(dir, 'vm-r');
  await createVmFolder(vmDir, { name: 'vm-r', disks: [{ id: 'disk0', sizeBytes: 48 * MiB }] }, seededRng(17));

  const first = await up(dataDir);
  let catalog = catalogOf(first.e);
  await catalog.putVm({ vmId: 'vm-r', host: 'esx-02', source: vmDir });
  await catalog.putPolicy({ policyId: 'p-r', vmIds: ['vm-r'], bucket: first.e.bucket, chunkSize: MiB, slotLimit: 1 });
  const { executionArn } = await sfnClient(first.e).send(
    new StartExecutionCommand({ stateMachineArn: first.e.backupStateMachineArn, input: JSON.stringify({ policyId: 'p-r' }) }),
  );
  const runId = executionArn!.split(':').pop()!;
  await until(
    () => first.lines.some((l) => l.includes('"task.started"') && l.includes('"dispatch"')),
    60_000,
    () => `no dispatch started:\n${first.lines.slice(-20).join('\n')}`,
  );
  killGroup(first.child);
  await new Promise((ok) => first.child.once('exit', ok));

  const [left] = await readdir(join(vmDir, '.lifeboat-snapshots'));
  expect(left, 'the killed run left its snapshot').toBeDefined();

  const second = await up(dataDir);
  catalog = catalogOf(second.e);
  const sfn = sfnClient(second.e);
  const reconcileArn = `${second.e.stateMachines.Reconcile!.replace(':stateMachine:', ':execution:')}:reconcile-${runId}`;
  await until(
    async () => (await sfn.send(new DescribeExecutionCommand({ executionArn: reconcileArn })).catch(() => undefined))?.status === 'SUCCEEDED',
    90_000,
    () => `the reconcile of ${runId} did not succeed`,
  );

  const [record] = await catalog.listBackups('vm-r');
  expect(record).toMatchObject({ runId, status: 'failed', error: { Error: 'Lifeboat.StackRestarted' } });
  expect(record!.error!.Cause).toMatch(/stopped while execution .* ran and was restarted at/);
  expect(await catalog.slotsHeldBy(executionArn!, `${runId}/`)).toEqual([]);
  expect(await readdir(join(vmDir, '.lifeboat-snapshots'))).toEqual([]);

  const next = await runExecution(sfn, second.e.backupStateMachineArn, { policyId: 'p-r' }, { pollMs: 500 });
  expect(next.status, next.cause).toBe('SUCCEEDED');
  expect((await catalog.latestCommitted('vm-r'))?.runId).toBe(next.executionArn!.split(':').pop());
}, 300_000);
