/**
 * The embedded stack fails where AWS Step Functions would on its hard quotas: a state's or
 * task's input or output over 256 KiB (States.DataLimitExceeded, which States.ALL does not
 * catch), an execution history over 25,000 events (States.Runtime), and the API refusing an
 * over-long StartExecution input or SendTaskSuccess output (ValidationException). Small state
 * machines run through the embedded runner, with the quotas lowered (as a stack option does)
 * so each is reached cheaply; one test runs into the real 25,000-event quota.
 */
import { SFNClient, SendTaskSuccessCommand, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmJob } from '../contracts/jobs.ts';
import { ActivityBroker } from '../local/activities.ts';
import type { ResolvedTemplate } from '../local/asl.ts';
import { createClients } from '../functions/commons/clients.ts';
import { LocalExecutions } from '../local/executions.ts';
import { LocalFunctions } from '../local/lambdas.ts';
import { AWS_QUOTAS, resolveQuotas } from '../local/quotas.ts';
import { startSfnApi, type ExecutionRecord, type SfnApi } from '../local/sfn-api.ts';
import { LOCAL_CREDENTIALS } from '../local/stack.ts';

process.env.POWERTOOLS_METRICS_DISABLED = 'true';

const MiB = 1024 * 1024;
const LIMIT = 4096;
const arn = (name: string) => `arn:aws:states:us-east-1:000000000000:stateMachine:${name}`;
const lambda = 'arn:aws:lambda:us-east-1:000000000000:function:PlanDispatchLocal';
const activity = 'arn:aws:states:us-east-1:000000000000:activity:site-a';
const big = (bytes: number) => 'x'.repeat(bytes);

/** PlanDispatch (a real handler) cuts a 64 MiB disk into 64 one-MiB segments: a small input, a ~9 KB result. */
const job: VmJob = {
  runId: 'run',
  policyId: 'p',
  backupId: 'bk',
  vmId: 'vm',
  host: 'h',
  moverGroup: 'g',
  source: '/vms/vm',
  repository: { bucket: 'b', chunkSize: MiB },
  parentBackupId: null,
  parentManifests: {},
  slotScopes: [],
  slot: null,
  segmentBytes: MiB,
  snapshot: { handle: 'h', config: {}, disks: [{ diskId: 'disk0', path: '/snap/disk0', sizeBytes: 64 * MiB }] },
} as unknown as VmJob;
const planDispatch = (extra: Record<string, unknown> = {}) => ({
  Type: 'Task',
  Resource: lambda,
  Parameters: { 'job.$': '$.job' },
  ResultPath: '$.work',
  ...extra,
});

const machines: Record<string, Record<string, unknown>> = {
  BigPass: {
    StartAt: 'Small',
    States: { Small: { Type: 'Pass', Next: 'Big' }, Big: { Type: 'Pass', Result: big(LIMIT), Next: 'After' }, After: { Type: 'Pass', End: true } },
  },
  BigLambda: { StartAt: 'PlanDispatch', States: { PlanDispatch: planDispatch({ End: true }) } },
  BigLambdaCaughtByAll: {
    StartAt: 'PlanDispatch',
    States: {
      PlanDispatch: planDispatch({
        Retry: [{ ErrorEquals: ['States.ALL'], MaxAttempts: 2, IntervalSeconds: 0 }],
        Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'Handled' }],
        End: true,
      }),
      Handled: { Type: 'Pass', End: true },
    },
  },
  BigLambdaCaughtByName: {
    StartAt: 'PlanDispatch',
    States: {
      PlanDispatch: planDispatch({ Catch: [{ ErrorEquals: ['States.DataLimitExceeded'], ResultPath: '$.error', Next: 'Handled' }], End: true }),
      Handled: { Type: 'Pass', End: true },
    },
  },
  BigMap: {
    StartAt: 'Vms',
    States: {
      Vms: {
        Type: 'Map',
        ItemsPath: '$.items',
        MaxConcurrency: 4,
        ItemProcessor: {
          ProcessorConfig: { Mode: 'INLINE' },
          StartAt: 'Vm',
          States: { Vm: { Type: 'Pass', Parameters: { 'id.$': '$', padding: big(100) }, End: true } },
        },
        Catch: [{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'Handled' }],
        Next: 'Summarize',
      },
      Summarize: { Type: 'Pass', End: true },
      Handled: { Type: 'Pass', End: true },
    },
  },
  BigMapCaughtByName: {
    StartAt: 'Vms',
    States: {
      Vms: {
        Type: 'Map',
        ItemsPath: '$.items',
        MaxConcurrency: 4,
        ItemProcessor: {
          ProcessorConfig: { Mode: 'INLINE' },
          StartAt: 'Vm',
          States: { Vm: { Type: 'Pass', Parameters: { 'id.$': '$', padding: big(100) }, End: true } },
        },
        ResultPath: '$.results',
        Catch: [
          { ErrorEquals: ['States.DataLimitExceeded'], ResultPath: '$.error', Next: 'Handled' },
          { ErrorEquals: ['States.ALL'], ResultPath: '$.other', Next: 'Handled' },
        ],
        Next: 'Summarize',
      },
      Summarize: { Type: 'Pass', End: true },
      Handled: { Type: 'Pass', End: true },
    },
  },
  SmallMap: {
    StartAt: 'Vms',
    States: {
      Vms: {
        Type: 'Map',
        ItemsPath: '$.items',
        ItemProcessor: { ProcessorConfig: { Mode: 'INLINE' }, StartAt: 'Vm', States: { Vm: { Type: 'Pass', End: true } } },
        End: true,
      },
    },
  },
  Activity: { StartAt: 'Snapshot', States: { Snapshot: { Type: 'Task', Resource: activity, TimeoutSeconds: 30, End: true } } },
  Loop: {
    StartAt: 'Poll',
    States: {
      Poll: { Type: 'Pass', Next: 'Done?' },
      'Done?': { Type: 'Choice', Choices: [{ Variable: '$.done', BooleanEquals: true, Next: 'End' }], Default: 'Poll' },
      End: { Type: 'Succeed' },
    },
  },
  TwoPasses: { StartAt: 'One', States: { One: { Type: 'Pass', Next: 'Two' }, Two: { Type: 'Pass', End: true } } },
};
const template: ResolvedTemplate = {
  functions: { [lambda]: 'PlanDispatch' },
  functionTimeouts: { PlanDispatch: 60 },
  activities: { 'site-a': activity },
  tables: {},
  stateMachines: Object.fromEntries(Object.entries(machines).map(([n, definition]) => [n, { logicalId: n, arn: arn(n), definition }])),
};

/** The functions the Lambda tasks run: PlanDispatch, which touches no client (none of these servers exist). */
const functions = new LocalFunctions(createClients({ tableName: 'unused', region: 'us-east-1' }));

let dir: string;
const stacks: { executions: LocalExecutions; broker: ActivityBroker; api: SfnApi; sfn: SFNClient }[] = [];
async function localStack(quotas: Parameters<typeof resolveQuotas>[0]) {
  const q = resolveQuotas(quotas);
  const broker = new ActivityBroker({ quotas: q });
  const executions = new LocalExecutions({ dataDir: join(dir, String(stacks.length)), template, broker, quotas: q, functions });
  await executions.load();
  const api = await startSfnApi({ port: 0, broker, executions, maxPollMs: 2000 });
  const s = { executions, broker, api, sfn: new SFNClient({ region: 'us-east-1', endpoint: api.url, credentials: LOCAL_CREDENTIALS }) };
  stacks.push(s);
  return s;
}
let low: Awaited<ReturnType<typeof localStack>>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-quotas-'));
  low = await localStack({ payloadBytes: LIMIT, historyEvents: 200 });
});
afterAll(async () => {
  for (const s of stacks) {
    await s.api.close();
    await s.executions.close();
    s.broker.close();
  }
  await rm(dir, { recursive: true, force: true });
});

async function run(executions: LocalExecutions, machine: string, input: unknown): Promise<ExecutionRecord> {
  const { executionArn } = await executions.start(arn(machine), JSON.stringify(input));
  for (;;) {
    const r = await executions.describe(executionArn);
    if (r.status !== 'RUNNING') return r;
    await sleep(20);
  }
}

describe('the payload quota (256 KiB, lowered here to 4 KiB)', () => {
  it("fails the execution when a Pass state's output is too large, naming the state and the size, before the next state runs", async () => {
    const r = await run(low.executions, 'BigPass', {});
    expect(r.status).toBe('FAILED');
    expect(r.error).toBe('States.DataLimitExceeded');
    expect(r.cause).toBe(
      `The state/task 'Big' returned a result with a size exceeding the maximum number of bytes service limit. (${LIMIT + 2} bytes; the limit is ${LIMIT})`,
    );
    // Entered: ExecutionStarted, Small (2), Big entered; Big's exit is where it failed, and After never ran.
    expect(r.quotaUsage!.largestPayload).toEqual({ bytes: LIMIT + 2, where: 'Big output' });
    const history = await readFile(join(dir, '0', 'executions', `BigPass--${r.name}.history.jsonl`), 'utf8');
    const entered = history
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; state?: { name: string } })
      .filter((e) => e.type === 'StateEntered')
      .map((e) => e.state!.name);
    expect(entered).toEqual(['Small', 'Big']);
  });

  it("fails the execution when a Lambda task's result is too large, and no States.ALL retrier or catcher takes it", async () => {
    for (const machine of ['BigLambda', 'BigLambdaCaughtByAll']) {
      const r = await run(low.executions, machine, { job });
      expect(r.status, machine).toBe('FAILED');
      expect(r.error).toBe('States.DataLimitExceeded');
      expect(r.cause).toMatch(
        /^The state\/task 'PlanDispatch' returned a result with a size exceeding the maximum number of bytes service limit\. \(\d+ bytes; the limit is 4096\)$/,
      );
      expect(r.quotaUsage!.largestPayload.where).toBe('PlanDispatch result');
      // One attempt only (ExecutionStarted, TaskStateEntered, 3 task events, ExecutionFailed): the States.ALL retrier did not run it again.
      expect(r.quotaUsage!.historyEvents, machine).toBe(6);
    }
  });

  it('lets a catcher that names States.DataLimitExceeded catch it', async () => {
    const r = await run(low.executions, 'BigLambdaCaughtByName', { job });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    expect((JSON.parse(r.output!) as { error: { Error: string } }).error.Error).toBe('States.DataLimitExceeded');
  });

  it("fails the execution when a Map state's collected output is too large, though each iteration's fits and the Map has a States.ALL catcher", async () => {
    const r = await run(low.executions, 'BigMap', { items: Array.from({ length: 40 }, (_, i) => `vm-${i}`) });
    expect(r.status).toBe('FAILED');
    expect(r.error, `${r.cause} ${JSON.stringify(r.quotaUsage)}`).toBe('States.DataLimitExceeded');
    expect(r.cause).toMatch(
      /^The state\/task 'Vms' returned a result with a size exceeding the maximum number of bytes service limit\. \(\d+ bytes; the limit is 4096\)$/,
    );
    const ok = await run(low.executions, 'BigMap', { items: ['vm-1', 'vm-2', 'vm-3'] });
    expect(ok.status, ok.cause).toBe('SUCCEEDED');
  });

  it("lets a Map state's catcher that names States.DataLimitExceeded catch its collected result over the quota, once every iteration ran", async () => {
    const r = await run(low.executions, 'BigMapCaughtByName', { items: Array.from({ length: 40 }, (_, i) => `vm-${i}`) });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    const out = JSON.parse(r.output!) as { error?: { Error: string; Cause: string }; results?: unknown };
    expect(out.results).toBeUndefined();
    expect(out.error?.Error).toBe('States.DataLimitExceeded');
    expect(out.error?.Cause).toMatch(
      /^The state\/task 'Vms' returned a result with a size exceeding the maximum number of bytes service limit\. \(\d+ bytes; the limit is 4096\)$/,
    );
    const history = await readFile(join(dir, '0', 'executions', `BigMapCaughtByName--${r.name}.history.jsonl`), 'utf8');
    const events = history
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; state?: { name: string } });
    expect(events.filter((e) => e.type === 'MapIterationSucceeded')).toHaveLength(40);
    expect(
      events
        .filter((e) => e.type === 'StateEntered')
        .map((e) => e.state!.name)
        .filter((n) => n !== 'Vm'),
    ).toEqual(['Vms', 'Handled']);
    const ok = await run(low.executions, 'BigMapCaughtByName', { items: ['vm-1', 'vm-2'] });
    expect(JSON.parse(ok.output!)).toMatchObject({ results: [{ id: 'vm-1' }, { id: 'vm-2' }] });
  });

  it("refuses an activity worker's SendTaskSuccess output over the quota as AWS does, and the task stays open for a good answer", async () => {
    const { executionArn } = await low.executions.start(arn('Activity'), '{}');
    const task = await low.broker.poll(activity, 'w', 5000, new AbortController().signal);
    expect(task).toBeDefined();
    const refused = await low.sfn
      .send(new SendTaskSuccessCommand({ taskToken: task!.taskToken, output: JSON.stringify({ disks: big(LIMIT) }) }))
      .catch((e: Error) => e);
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).name).toBe('ValidationException');
    expect((refused as Error).message).toBe(
      `1 validation error detected: Value at 'output' failed to satisfy constraint: Member must have length less than or equal to ${LIMIT}`,
    );
    expect((await low.executions.describe(executionArn)).status).toBe('RUNNING');
    await low.sfn.send(new SendTaskSuccessCommand({ taskToken: task!.taskToken, output: '{"ok":true}' }));
    for (let r = await low.executions.describe(executionArn); ; r = await low.executions.describe(executionArn)) {
      if (r.status !== 'RUNNING') {
        expect(r.status).toBe('SUCCEEDED');
        break;
      }
      await sleep(20);
    }
  });

  it("refuses a StartExecution input over the quota with AWS's ValidationException, at AWS's own 262,144 bytes too", async () => {
    const aws = await localStack({});
    for (const [s, limit] of [
      [low, LIMIT],
      [aws, AWS_QUOTAS.payloadBytes],
    ] as const) {
      // `{"p":"…"}` is 8 bytes around the string: one byte over the limit.
      const over = JSON.stringify({ p: big(limit - 7) });
      const refused = await s.sfn.send(new StartExecutionCommand({ stateMachineArn: arn('TwoPasses'), input: over })).catch((e: Error) => e);
      expect((refused as Error).name).toBe('ValidationException');
      expect((refused as Error).message).toBe(
        `1 validation error detected: Value at 'input' failed to satisfy constraint: Member must have length less than or equal to ${limit}`,
      );
      expect(await s.executions.list(arn('TwoPasses'))).toHaveLength(0);
      // Exactly at the limit is accepted, and runs.
      const at = JSON.stringify({ p: big(limit - 8) });
      const r = await run(s.executions, 'TwoPasses', JSON.parse(at));
      expect(r.status, r.cause).toBe('SUCCEEDED');
    }
    // Multi-byte characters count as their UTF-8 bytes, not as string length.
    const euro = JSON.stringify({ p: '€'.repeat(Math.ceil(LIMIT / 3)) });
    expect(euro.length).toBeLessThan(LIMIT);
    await expect(low.executions.start(arn('TwoPasses'), euro)).rejects.toThrow(/Member must have length less than or equal to 4096/);
  });
});

describe('the history quota (25,000 events)', () => {
  it("counts a Map's events as AWS writes them into the parent's history", async () => {
    const r = await run(low.executions, 'SmallMap', { items: Array.from({ length: 10 }, (_, i) => i) });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    // ExecutionStarted, MapStateEntered, MapStateStarted, 10 × (MapIterationStarted, PassStateEntered,
    // PassStateExited, MapIterationSucceeded), MapStateSucceeded, MapStateExited, ExecutionSucceeded.
    expect(r.quotaUsage!.historyEvents).toBe(1 + 2 + 10 * 4 + 2 + 1);
  });

  it('lets the last event be ExecutionSucceeded, and fails with any other event in that place', async () => {
    // ExecutionStarted, One entered/exited, Two entered/exited, ExecutionSucceeded: 6 events.
    const fits = await localStack({ historyEvents: 6 });
    const ok = await run(fits.executions, 'TwoPasses', {});
    expect(ok.status, ok.cause).toBe('SUCCEEDED');
    expect(ok.quotaUsage!.historyEvents).toBe(6);
    const short = await localStack({ historyEvents: 5 });
    const failed = await run(short.executions, 'TwoPasses', {});
    expect(failed.status).toBe('FAILED');
    expect(failed.error).toBe('States.Runtime');
    expect(failed.quotaUsage!.historyEvents).toBe(5);
  });

  it('fails a loop that runs past the quota with States.Runtime, as AWS does (lowered to 200 events)', async () => {
    const r = await run(low.executions, 'Loop', { done: false });
    expect(r.status).toBe('FAILED');
    expect(r.error).toBe('States.Runtime');
    expect(r.cause).toBe('The execution reached the maximum number of history events (200).');
    expect(r.quotaUsage!.historyEvents).toBe(200);
  });

  it('fails a loop at the real quota of 25,000 events', async () => {
    const aws = await localStack({});
    const started = performance.now();
    const r = await run(aws.executions, 'Loop', { done: false });
    expect(r.status).toBe('FAILED');
    expect(r.error).toBe('States.Runtime');
    expect(r.cause).toBe('The execution reached the maximum number of history events (25000).');
    expect(r.quotaUsage!.historyEvents).toBe(25_000);
    expect(performance.now() - started).toBeLessThan(60_000);
  }, 90_000);
});

describe('quota settings', () => {
  it('rejects unknown quotas and bad values, naming them', () => {
    expect(() => resolveQuotas({ payload: 1 } as never)).toThrow(/unknown Step Functions quota 'payload'/);
    expect(() => resolveQuotas({ historyEvents: 2 })).toThrow(/historyEvents must be a whole number of at least 3, got 2/);
    expect(resolveQuotas({})).toEqual(AWS_QUOTAS);
  });
});
