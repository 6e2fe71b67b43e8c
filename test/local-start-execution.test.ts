/**
 * The embedded stack's `states:startExecution` integration behaves as Step Functions
 * documents StartExecution: a name taken by a running execution with the same input
 * returns that execution; another input, or a closed execution, fails with
 * StepFunctions.ExecutionAlreadyExists, which a Catch can match.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ActivityBroker } from '../local/activities.ts';
import type { ResolvedTemplate } from '../local/asl.ts';
import { LocalExecutions } from '../local/executions.ts';

const arn = (name: string) => `arn:aws:states:us-east-1:000000000000:stateMachine:${name}`;
const start = (name: string, input: unknown, next?: string) => ({
  Type: 'Task',
  Resource: 'arn:aws:states:::states:startExecution',
  Parameters: { StateMachineArn: arn('Child'), Input: input, Name: 'child-1' },
  ResultSelector: { 'arn.$': '$.ExecutionArn' },
  ResultPath: `$.${name}`,
  Catch: [{ ErrorEquals: ['StepFunctions.ExecutionAlreadyExists'], ResultPath: `$.${name}`, Next: next ?? 'Done' }],
  ...(next ? { Next: next } : { End: true }),
});
const template: ResolvedTemplate = {
  functions: {},
  functionTimeouts: {},
  activities: {},
  tables: {},
  stateMachines: {
    Child: { logicalId: 'Child', arn: arn('Child'), definition: { StartAt: 'Wait', States: { Wait: { Type: 'Wait', Seconds: 1, End: true } } } },
    Parent: {
      logicalId: 'Parent',
      arn: arn('Parent'),
      definition: {
        StartAt: 'First',
        States: {
          First: start('first', { n: 1 }, 'Again'),
          Again: start('again', { n: 1 }, 'Other'),
          Other: start('other', { n: 2 }, 'Done'),
          Done: { Type: 'Pass', End: true },
        },
      },
    },
  },
};

let dir: string;
let executions: LocalExecutions;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-start-'));
  executions = new LocalExecutions({ dataDir: dir, template, broker: new ActivityBroker() });
  await executions.load();
});
afterAll(async () => {
  await executions.close();
  await rm(dir, { recursive: true, force: true });
});

async function finished(executionArn: string) {
  for (;;) {
    const r = await executions.describe(executionArn);
    if (r.status !== 'RUNNING') return r;
    await sleep(50);
  }
}

it('starts a named execution once: the same input while it runs returns it, another input or a closed one is ExecutionAlreadyExists', async () => {
  const parent = await finished((await executions.start(arn('Parent'), '{}', 'p-1')).executionArn);
  expect(parent.status, parent.cause).toBe('SUCCEEDED');
  const out = JSON.parse(parent.output!) as Record<string, { arn?: string; Error?: string }>;
  const child = `${arn('Child').replace(':stateMachine:', ':execution:')}:child-1`;
  expect(out.first).toEqual({ arn: child });
  expect(out.again).toEqual({ arn: child });
  expect(out.other!.Error).toBe('StepFunctions.ExecutionAlreadyExists');
  expect((await finished(child)).status).toBe('SUCCEEDED');
  expect(await executions.list(arn('Child'))).toHaveLength(1);

  // The child has closed: its name stays taken whatever the input.
  const late = await finished((await executions.start(arn('Parent'), '{}', 'p-2')).executionArn);
  expect((JSON.parse(late.output!) as Record<string, { Error?: string }>).first!.Error).toBe('StepFunctions.ExecutionAlreadyExists');
});
