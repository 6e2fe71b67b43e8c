/**
 * The mover worker's lifecycle rules against an in-memory activity (the Step Functions
 * calls it makes, answered in process): hand-over to an upgraded program, drain, grace
 * time, resumed tasks. The e2e suite runs the same rules with real processes.
 */
import { GetActivityTaskCommand, SendTaskFailureCommand, SendTaskHeartbeatCommand, SendTaskSuccessCommand } from '@aws-sdk/client-sfn';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { CannotUpgrade } from '../contracts/errors.ts';
import { MoverWorker, type HandedOverTask, type Logger, type Restart, type WorkerOptions } from '../mover/worker.ts';

interface Answer {
  kind: 'success' | 'failure' | 'heartbeat';
  token: string;
  error?: string;
  cause?: string;
}

/** An activity with a queue of tasks; records every answer. */
class FakeActivity {
  readonly answers: Answer[] = [];
  /** Tokens whose heartbeat is refused with TaskDoesNotExist, as for a stopped execution. */
  readonly gone = new Set<string>();
  polls = 0;
  private readonly queue: { taskToken: string; input: string }[] = [];
  private waiter: (() => void) | undefined;

  push(taskToken: string, input: unknown): void {
    this.queue.push({ taskToken, input: JSON.stringify(input) });
    this.waiter?.();
  }

  get queued(): number {
    return this.queue.length;
  }

  readonly send = async (cmd: unknown, opts?: { abortSignal?: AbortSignal }): Promise<unknown> => {
    if (cmd instanceof GetActivityTaskCommand) {
      this.polls++;
      for (;;) {
        if (opts?.abortSignal?.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
        const t = this.queue.shift();
        if (t) return t;
        await new Promise<void>((ok) => {
          this.waiter = ok;
          opts?.abortSignal?.addEventListener('abort', () => ok(), { once: true });
        });
      }
    }
    if (cmd instanceof SendTaskSuccessCommand) this.answers.push({ kind: 'success', token: cmd.input.taskToken! });
    else if (cmd instanceof SendTaskFailureCommand)
      this.answers.push({ kind: 'failure', token: cmd.input.taskToken!, error: cmd.input.error!, cause: cmd.input.cause! });
    else if (cmd instanceof SendTaskHeartbeatCommand) {
      if (this.gone.has(cmd.input.taskToken!)) throw Object.assign(new Error('task token is unknown or already completed'), { name: 'TaskDoesNotExist' });
      this.answers.push({ kind: 'heartbeat', token: cmd.input.taskToken! });
    }
    return {};
  };

  of(token: string, kind?: Answer['kind']): Answer[] {
    return this.answers.filter((a) => a.token === token && (!kind || a.kind === kind));
  }
}

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((ok) => {
    resolve = ok;
  });
  return { promise, resolve };
}

const quiet: Logger = { info: () => {}, error: () => {} };

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !cond(); await sleep(5)) if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
}

/** A worker whose tasks `{ task: 'new' }` need an upgrade; `{ wait: name }` tasks run until released. */
function setup(o: { slots?: number; restart?: Restart; resume?: HandedOverTask[]; shutdownGraceMs?: number } = {}) {
  const activity = new FakeActivity();
  const gates = new Map<string, ReturnType<typeof deferred>>();
  const gate = (name: string) => {
    if (!gates.has(name)) gates.set(name, deferred());
    return gates.get(name)!;
  };
  const restarts: HandedOverTask[][] = [];
  const ran: string[] = [];
  const worker = new MoverWorker({
    // A test double at the SDK boundary: only the four commands the worker sends.
    sfn: activity as unknown as WorkerOptions['sfn'],
    activityArn: 'arn:activity',
    workerName: 'w',
    slots: o.slots ?? 2,
    logger: quiet,
    heartbeatMs: 10,
    ...(o.resume ? { resume: o.resume } : {}),
    ...(o.shutdownGraceMs !== undefined ? { shutdownGraceMs: o.shutdownGraceMs } : {}),
    admit: async (input) => ((input as { task?: string }).task === 'new' ? (o.restart ?? ((tasks) => void restarts.push(tasks))) : undefined),
    handler: async (input, ctx) => {
      const t = input as { wait?: string; id: string; honourAbort?: boolean };
      ran.push(t.id);
      if (t.wait) {
        await (t.honourAbort
          ? Promise.race([gate(t.wait).promise, new Promise((_, fail) => ctx.signal.addEventListener('abort', () => fail(ctx.signal.reason), { once: true }))])
          : gate(t.wait).promise);
      }
      return { ok: t.id };
    },
  });
  return { activity, worker, gate, restarts, ran };
}

describe('mover worker', () => {
  it('holds a task that needs an upgrade, heartbeating it, until the other task in flight finished, then restarts with it', async () => {
    const { activity, worker, gate, restarts } = setup();
    const running = worker.run();
    activity.push('a', { id: 'a', wait: 'a' });
    activity.push('b', { id: 'b', task: 'new' });
    await until(() => activity.of('b', 'heartbeat').length >= 3, 'heartbeats of the held task');
    activity.push('c', { id: 'c' });
    await sleep(30);
    expect(restarts).toEqual([]);
    expect(activity.queued).toBe(1); // c was not taken: the worker is about to restart

    gate('a').resolve();
    await until(() => restarts.length === 1, 'the restart');
    expect(restarts[0]).toEqual([{ taskToken: 'b', input: JSON.stringify({ id: 'b', task: 'new' }) }]);
    expect(activity.of('a', 'success')).toHaveLength(1);
    // The held task is answered by the new program, never by this one.
    expect(activity.of('b').filter((x) => x.kind !== 'heartbeat')).toEqual([]);
    void worker.drain();
    await running;
  });

  it('abandons a held task without an answer when drained before the restart', async () => {
    const { activity, worker, gate, restarts } = setup();
    const running = worker.run();
    activity.push('a', { id: 'a', wait: 'a' });
    activity.push('b', { id: 'b', task: 'new' });
    await until(() => activity.of('b', 'heartbeat').length >= 1, 'the held task');
    const drained = worker.drain();
    gate('a').resolve();
    expect(await drained).toBe(true);
    await running;
    expect(restarts).toEqual([]);
    expect(activity.of('a', 'success')).toHaveLength(1);
    expect(activity.of('b').filter((x) => x.kind !== 'heartbeat')).toEqual([]);
  });

  it('fails the held tasks with the restart error and goes back to work when the restart fails', async () => {
    const { activity, worker, ran } = setup({
      restart: () => {
        throw new CannotUpgrade('release 0.2.0 is installed but the mover could not restart into it');
      },
    });
    const running = worker.run();
    activity.push('b', { id: 'b', task: 'new' });
    await until(() => activity.of('b', 'failure').length === 1, 'the failure');
    expect(activity.of('b', 'failure')[0]!.error).toBe('Mover.CannotUpgrade');
    activity.push('c', { id: 'c' });
    await until(() => activity.of('c', 'success').length === 1, 'the next task');
    expect(ran).toEqual(['c']);
    void worker.drain();
    await running;
  });

  it('drain: finishes the task in flight, takes no new one', async () => {
    const { activity, worker, gate, ran } = setup({ slots: 1, shutdownGraceMs: 5000 });
    const running = worker.run();
    activity.push('a', { id: 'a', wait: 'a' });
    await until(() => ran.includes('a'), 'task a');
    const drained = worker.drain();
    activity.push('b', { id: 'b' });
    gate('a').resolve();
    expect(await drained).toBe(true);
    await running;
    expect(activity.of('a', 'success')).toHaveLength(1);
    expect(ran).toEqual(['a']);
    expect(activity.queued).toBe(1);
  });

  it('aborts a task that outlasts the grace time and leaves it unanswered', async () => {
    const { activity, worker, ran } = setup({ slots: 1, shutdownGraceMs: 50 });
    const running = worker.run();
    activity.push('a', { id: 'a', wait: 'never', honourAbort: true });
    await until(() => ran.includes('a'), 'task a');
    const started = Date.now();
    expect(await worker.drain()).toBe(false);
    expect(Date.now() - started).toBeLessThan(2000);
    await running;
    expect(activity.of('a').filter((x) => x.kind !== 'heartbeat')).toEqual([]);
  });

  it('runs tasks handed over by the previous program first, under their tokens', async () => {
    const { activity, worker, ran } = setup({ resume: [{ taskToken: 'h', input: JSON.stringify({ id: 'h' }) }] });
    const running = worker.run();
    await until(() => activity.of('h', 'success').length === 1, 'the handed-over task');
    expect(ran[0]).toBe('h');
    void worker.drain();
    await running;
  });
});

describe('mover worker: liveness of real progress', () => {
  /** A worker with one slot whose tasks `{ id, progressMs?, runMs? }` report progress every `progressMs` for `runMs`, or hang ignoring their signal. */
  function liveness(stallTimeoutMs: number) {
    const activity = new FakeActivity();
    const finished: string[] = [];
    const worker = new MoverWorker({
      sfn: activity as unknown as WorkerOptions['sfn'],
      activityArn: 'arn:activity',
      workerName: 'w',
      slots: 1,
      logger: quiet,
      heartbeatMs: 10,
      stallTimeoutMs,
      handler: async (input, ctx) => {
        const t = input as { id: string; progressMs?: number; runMs?: number };
        if (t.progressMs === undefined) await new Promise(() => {}); // stuck in a call that ignores the signal
        for (const end = Date.now() + (t.runMs ?? 0); Date.now() < end; await sleep(t.progressMs)) ctx.progress();
        finished.push(t.id);
        return { ok: t.id };
      },
    });
    return { activity, worker, finished };
  }

  it('aborts a task that reports no progress for the stall timeout, fails it with Mover.TaskStalled naming the task and the time, and frees its slot', async () => {
    const { activity, worker } = liveness(100);
    const running = worker.run();
    activity.push('stuck', { id: 'stuck', task: 'restoreDisk', disk: { diskId: 'disk0' } });
    activity.push('next', { id: 'next', progressMs: 5, runMs: 20 });
    await until(() => activity.of('next', 'success').length === 1, 'the next task in the freed slot', 3000);
    const [failure] = activity.of('stuck', 'failure');
    expect(failure).toMatchObject({
      error: 'Mover.TaskStalled',
      cause: expect.stringMatching(/restoreDisk.*disk0.*made no progress for \d+ s \(LIFEBOAT_STALL_TIMEOUT_MS=100\)/),
    });
    void worker.drain();
    await running;
  });

  it('keeps a task that reports progress running past the stall timeout', async () => {
    const { activity, worker, finished } = liveness(100);
    const running = worker.run();
    activity.push('busy', { id: 'busy', progressMs: 20, runMs: 400 });
    await until(() => activity.of('busy', 'success').length === 1, 'the busy task', 3000);
    expect(activity.of('busy', 'failure')).toEqual([]);
    expect(finished).toEqual(['busy']);
    void worker.drain();
    await running;
  });

  it('frees the slot at once, unanswered, when a heartbeat is refused because the execution was stopped', async () => {
    const { activity, worker } = liveness(60_000);
    const running = worker.run();
    activity.push('stopped', { id: 'stopped' });
    await until(() => activity.of('stopped', 'heartbeat').length >= 1, 'the running task');
    activity.gone.add('stopped');
    activity.push('next', { id: 'next', progressMs: 5, runMs: 10 });
    await until(() => activity.of('next', 'success').length === 1, 'the next task in the freed slot', 2000);
    expect(activity.of('stopped').filter((a) => a.kind !== 'heartbeat')).toEqual([]);
    void worker.drain();
    await running;
  });
});
