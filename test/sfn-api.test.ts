import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DescribeExecutionCommand,
  GetActivityTaskCommand,
  ListExecutionsCommand,
  SendTaskFailureCommand,
  SendTaskHeartbeatCommand,
  SendTaskSuccessCommand,
  SFNClient,
  StartExecutionCommand,
  StopExecutionCommand,
  TaskTimedOut,
} from '@aws-sdk/client-sfn';
import { ActivityBroker } from '../local/activities.ts';
import { startSfnApi } from '../local/sfn-api.ts';
import type { ExecutionRecord, ExecutionService, SfnApi } from '../local/sfn-api.ts';

const ACTIVITY = 'arn:aws:states:us-east-1:000000000000:activity:lifeboat-mover';
const MACHINE = 'arn:aws:states:us-east-1:000000000000:stateMachine:backup';

/** Tiny in-memory execution store. */
class MemoryExecutions implements ExecutionService {
  readonly records = new Map<string, ExecutionRecord>();
  async start(stateMachineArn: string, input: string, name?: string) {
    const n = name ?? `exec-${this.records.size + 1}`;
    const executionArn = `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${n}`;
    const startDate = new Date(1_700_000_000_500);
    this.records.set(executionArn, { executionArn, stateMachineArn, name: n, status: 'RUNNING', startDate, input });
    return { executionArn, startDate };
  }
  async describe(executionArn: string) {
    const r = this.records.get(executionArn);
    if (!r) throw Object.assign(new Error(`no execution ${executionArn}`), { name: 'ExecutionDoesNotExist' });
    return r;
  }
  async list(stateMachineArn: string, statusFilter?: string, maxResults?: number) {
    const all = [...this.records.values()].filter((r) => r.stateMachineArn === stateMachineArn && (!statusFilter || r.status === statusFilter));
    return all.slice(0, maxResults ?? all.length);
  }
  async stop(executionArn: string, error?: string, cause?: string) {
    const r = await this.describe(executionArn);
    Object.assign(r, { status: 'ABORTED', stopDate: new Date(1_700_000_100_000), error, cause });
    return { stopDate: r.stopDate! };
  }
}

let broker: ActivityBroker;
let api: SfnApi;
let sfn: SFNClient;

beforeEach(async () => {
  broker = new ActivityBroker();
  api = await startSfnApi({ port: 0, broker, executions: new MemoryExecutions(), maxPollMs: 300 });
  sfn = new SFNClient({
    endpoint: api.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
    maxAttempts: 1,
  });
});

afterEach(async () => {
  sfn.destroy();
  broker.close();
  await api.close();
});

const poll = () => sfn.send(new GetActivityTaskCommand({ activityArn: ACTIVITY, workerName: 'w1' }));

/** Captures a promise's rejection so it is never unhandled while the test works. */
function settle<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: Error }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: Error) => ({ ok: false as const, error }),
  );
}

describe('activity tasks over the SFN API', () => {
  it('hands a scheduled task to GetActivityTask and resolves with SendTaskSuccess output', async () => {
    expect(api.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(api.url).not.toMatch(/:0$/);
    const result = broker.schedule(ACTIVITY, { vm: 'vm-1', chunks: 3 });
    const task = await poll();
    expect(task.taskToken).toBeTruthy();
    expect(JSON.parse(task.input!)).toEqual({ vm: 'vm-1', chunks: 3 });
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '{"ok":true,"bytes":42}' }));
    await expect(result).resolves.toEqual({ ok: true, bytes: 42 });
  });

  it('long-polls: a task scheduled while polling is delivered', async () => {
    const pending = poll();
    await new Promise((r) => setTimeout(r, 50));
    const result = settle(broker.schedule(ACTIVITY, { late: true }));
    const task = await pending;
    expect(JSON.parse(task.input!)).toEqual({ late: true });
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '1' }));
    expect(await result).toEqual({ ok: true, value: 1 });
  });

  it('rejects schedule() with the SendTaskFailure error name and cause', async () => {
    const result = settle(broker.schedule(ACTIVITY, {}));
    const task = await poll();
    await sfn.send(new SendTaskFailureCommand({ taskToken: task.taskToken, error: 'Mover.DiskGone', cause: 'vmdk vanished' }));
    const r = await result;
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.name).toBe('Mover.DiskGone');
      expect(r.error.message).toBe('vmdk vanished');
    }
  });

  it('times out a handed-out task without heartbeats; the token then gives TaskTimedOut', async () => {
    const result = settle(broker.schedule(ACTIVITY, {}, { heartbeatSeconds: 1 }));
    const task = await poll();
    const r = await result;
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.name).toBe('States.Timeout');
      expect(r.error.message).toContain('HeartbeatSeconds');
      expect(r.error.message).toContain(ACTIVITY);
    }
    const late = sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '{}' }));
    await expect(late).rejects.toBeInstanceOf(TaskTimedOut);
    await expect(late).rejects.toMatchObject({ name: 'TaskTimedOut', $metadata: { httpStatusCode: 400 } });
  });

  it('enforces TimeoutSeconds from scheduling even for a task never picked up', async () => {
    const r = await settle(broker.schedule(ACTIVITY, {}, { timeoutSeconds: 0.2 }));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatchObject({ name: 'States.Timeout', message: expect.stringContaining('TimeoutSeconds') });
    expect((await poll()).taskToken).toBeUndefined();
  });

  it('keeps a task alive past heartbeatSeconds while heartbeats arrive', async () => {
    const result = settle(broker.schedule(ACTIVITY, { n: 1 }, { heartbeatSeconds: 1 }));
    const task = await poll();
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 400));
      await sfn.send(new SendTaskHeartbeatCommand({ taskToken: task.taskToken }));
    }
    // 1.6 s since hand-out, well past HeartbeatSeconds=1.
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '"done"' }));
    expect(await result).toEqual({ ok: true, value: 'done' });
  });

  it('returns an empty response when nothing is queued within the poll window', async () => {
    const started = Date.now();
    const task = await poll();
    expect(task.taskToken).toBeUndefined();
    expect(task.input).toBeUndefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('does not hand a later task to a poller that disconnected', async () => {
    const ac = new AbortController();
    const abandoned = settle(sfn.send(new GetActivityTaskCommand({ activityArn: ACTIVITY }), { abortSignal: ac.signal }));
    await new Promise((r) => setTimeout(r, 50));
    ac.abort();
    expect((await abandoned).ok).toBe(false);
    await new Promise((r) => setTimeout(r, 50)); // let the server see the socket close
    const result = settle(broker.schedule(ACTIVITY, { after: 'abort' }));
    const task = await poll();
    expect(JSON.parse(task.input!)).toEqual({ after: 'abort' });
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '{}' }));
    expect(await result).toEqual({ ok: true, value: {} });
  });

  it('answers TaskDoesNotExist for unknown and already-completed tokens', async () => {
    await expect(sfn.send(new SendTaskHeartbeatCommand({ taskToken: 'nope' }))).rejects.toMatchObject({ name: 'TaskDoesNotExist' });
    const result = broker.schedule(ACTIVITY, {});
    const task = await poll();
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '{}' }));
    await result;
    await expect(sfn.send(new SendTaskFailureCommand({ taskToken: task.taskToken, error: 'x' }))).rejects.toMatchObject({ name: 'TaskDoesNotExist' });
  });

  it('rejects invalid output JSON and keeps the task open', async () => {
    const result = broker.schedule(ACTIVITY, {});
    const task = await poll();
    await expect(sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '{not json' }))).rejects.toMatchObject({ name: 'InvalidOutput' });
    await sfn.send(new SendTaskSuccessCommand({ taskToken: task.taskToken, output: '[1]' }));
    await expect(result).resolves.toEqual([1]);
  });

  it('removes a task whose schedule() signal aborts', async () => {
    const ac = new AbortController();
    const result = settle(broker.schedule(ACTIVITY, {}, { signal: ac.signal }));
    ac.abort();
    expect((await result).ok).toBe(false);
    expect((await poll()).taskToken).toBeUndefined();
  });
});

describe('executions over the SFN API', () => {
  it('round-trips StartExecution, DescribeExecution, ListExecutions and StopExecution', async () => {
    const started = await sfn.send(new StartExecutionCommand({ stateMachineArn: MACHINE, name: 'nightly', input: '{"vm":"a"}' }));
    expect(started.executionArn).toBe('arn:aws:states:us-east-1:000000000000:execution:backup:nightly');
    expect(started.startDate).toEqual(new Date(1_700_000_000_500));

    const d = await sfn.send(new DescribeExecutionCommand({ executionArn: started.executionArn }));
    expect(d).toMatchObject({ name: 'nightly', status: 'RUNNING', stateMachineArn: MACHINE, input: '{"vm":"a"}' });
    expect(d.startDate).toEqual(new Date(1_700_000_000_500));
    expect(d.stopDate).toBeUndefined();

    const listed = await sfn.send(new ListExecutionsCommand({ stateMachineArn: MACHINE, statusFilter: 'RUNNING' }));
    expect(listed.executions?.map((e) => e.name)).toEqual(['nightly']);

    const stopped = await sfn.send(new StopExecutionCommand({ executionArn: started.executionArn, error: 'Op', cause: 'user' }));
    expect(stopped.stopDate).toEqual(new Date(1_700_000_100_000));
    const after = await sfn.send(new DescribeExecutionCommand({ executionArn: started.executionArn }));
    expect(after).toMatchObject({ status: 'ABORTED', error: 'Op', cause: 'user' });
  });

  it('maps ExecutionDoesNotExist from the service to the SDK exception', async () => {
    await expect(sfn.send(new DescribeExecutionCommand({ executionArn: `${MACHINE}:missing` }))).rejects.toMatchObject({
      name: 'ExecutionDoesNotExist',
      message: expect.stringContaining('missing'),
    });
  });
});

describe('protocol errors', () => {
  const call = (target: string, body: string) =>
    fetch(api.url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': target },
      body,
    });

  it('answers unknown operations, malformed JSON and missing fields with typed 400s', async () => {
    const unknown = await call('AWSStepFunctions.Nope', '{}');
    expect(unknown.status).toBe(400);
    expect(unknown.headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
    expect(await unknown.json()).toMatchObject({ __type: 'UnknownOperationException' });

    const bad = await call('AWSStepFunctions.SendTaskHeartbeat', '{oops');
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ __type: 'SerializationException' });

    const missing = await call('AWSStepFunctions.SendTaskHeartbeat', '{}');
    expect(missing.status).toBe(400);
    expect(await missing.json()).toMatchObject({ __type: 'InvalidToken', message: expect.stringContaining('taskToken') });
  });

  it('surfaces missing-field errors as SDK exceptions', async () => {
    await expect(sfn.send(new StartExecutionCommand({} as never))).rejects.toMatchObject({
      name: 'InvalidArn',
      message: expect.stringContaining('stateMachineArn'),
    });
  });
});
