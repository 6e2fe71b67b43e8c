/** The embedded stack keeps its state in its data folder across restarts. */
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { runExecution, sfnClient } from '../local/client.ts';
import { EmbeddedStack, openRepository, type StackEndpoints } from '../local/stack.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const masterKey = async (e: StackEndpoints) => (await openRepository(e)).masterKey;

it('keeps the catalog, the repository key and execution history across a restart', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  const first = await EmbeddedStack.start({ dataDir: dir });
  let key: Buffer;
  let executionArn: string | undefined;
  try {
    await first.catalog.putPolicy({ policyId: 'kept', vmIds: [], bucket: first.endpoints.bucket, chunkSize: 1 << 20, slotLimit: 1 });
    key = await masterKey(first.endpoints);
    const d = await runExecution(sfnClient(first.endpoints), first.endpoints.backupStateMachineArn, { policyId: 'missing' });
    expect(d.status).toBe('FAILED');
    executionArn = d.executionArn;
  } finally {
    await first.stop();
  }

  const second = await EmbeddedStack.start({ dataDir: dir });
  try {
    expect(await second.catalog.getPolicy('kept')).toMatchObject({ policyId: 'kept', slotLimit: 1 });
    expect((await masterKey(second.endpoints)).equals(key)).toBe(true);
    const listed = await sfnClient(second.endpoints).send(new ListExecutionsCommand({ stateMachineArn: second.endpoints.backupStateMachineArn }));
    expect(listed.executions?.map((x) => [x.executionArn, x.status])).toContainEqual([executionArn, 'FAILED']);
  } finally {
    await second.stop();
  }
});
