/**
 * In-memory Step Functions activity broker for the embedded stack.
 *
 * The local state machine runner calls {@link ActivityBroker.schedule} for an
 * activity task state; workers reach {@link ActivityBroker.poll} and the
 * SendTask* calls through the HTTP API in `sfn-api.ts`. TimeoutSeconds and
 * HeartbeatSeconds are enforced here, as Step Functions does.
 */
import { randomBytes } from 'node:crypto';
import { AWS_QUOTAS, fieldTooLong, type StepFunctionsQuotas } from './quotas.ts';

/** Options for {@link ActivityBroker.schedule}. */
export interface ScheduleOptions {
  /** Whole-task timeout, counted from scheduling (like TimeoutSeconds). */
  timeoutSeconds?: number;
  /** Max silence after hand-out or the last heartbeat (like HeartbeatSeconds). */
  heartbeatSeconds?: number;
  /** Aborting rejects the schedule() promise and removes the task. */
  signal?: AbortSignal;
}

/** A task as handed to a worker by {@link ActivityBroker.poll}. */
export interface ActivityTask {
  taskToken: string;
  /** JSON text of the task input. */
  input: string;
}

interface Task {
  token: string;
  activityArn: string;
  input: string;
  heartbeatSeconds: number | undefined;
  running: boolean;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timeoutTimer?: NodeJS.Timeout;
  heartbeatTimer?: NodeJS.Timeout;
  unlinkSignal?: () => void;
}

interface Waiter {
  hand(task: Task | undefined): void;
}

/** How many timed-out tokens are remembered for `TaskTimedOut` answers. */
const TIMED_OUT_MEMORY = 1000;

function namedError(name: string, message: string): Error {
  const err = new Error(message);
  err.name = name;
  return err;
}

/** Queues activity tasks, hands them to long-polling workers and tracks their outcome. */
export class ActivityBroker {
  readonly #queues = new Map<string, Task[]>();
  readonly #waiters = new Map<string, Waiter[]>();
  readonly #tasks = new Map<string, Task>();
  readonly #timedOut = new Set<string>();
  readonly #quotas: StepFunctionsQuotas;
  #closed = false;

  /** `quotas`: the payload quota SendTaskSuccess's output is held to (default AWS's). */
  constructor(opts: { quotas?: StepFunctionsQuotas } = {}) {
    this.#quotas = opts.quotas ?? AWS_QUOTAS;
  }

  /**
   * Queues a task for `activityArn` and waits for its outcome.
   * @returns the parsed JSON output sent with SendTaskSuccess.
   * @throws Error named after SendTaskFailure's `error` (message = `cause`),
   *   or `States.Timeout` when TimeoutSeconds/HeartbeatSeconds elapse.
   */
  schedule(activityArn: string, input: unknown, opts: ScheduleOptions = {}): Promise<unknown> {
    return this.#open(activityArn, JSON.stringify(input ?? {}), opts, false).result;
  }

  /**
   * A callback task (a `.waitForTaskToken` integration): no worker polls it; its token goes
   * out in the task's input, and SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat with it
   * settle it as they settle an activity task. HeartbeatSeconds counts from now. `label`
   * names it in timeout messages (the state).
   */
  awaitCallback(label: string, opts: ScheduleOptions = {}): { token: string; result: Promise<unknown> } {
    return this.#open(label, '{}', opts, true);
  }

  /** Ends a callback task whose integration failed before it could wait (its Lambda invocation failed): its token answers TaskDoesNotExist. */
  cancel(taskToken: string, err: Error): void {
    const task = this.#tasks.get(taskToken);
    if (task) this.#finish(task, err);
  }

  #open(activityArn: string, input: string, opts: ScheduleOptions, callback: boolean): { token: string; result: Promise<unknown> } {
    const token = randomBytes(32).toString('base64url');
    const result = new Promise<unknown>((resolve, reject) => {
      const { signal } = opts;
      if (this.#closed) return reject(namedError('States.Aborted', 'activity broker is closed'));
      if (signal?.aborted) return reject(abortReason(signal));
      const task: Task = { token, activityArn, input, heartbeatSeconds: opts.heartbeatSeconds, running: callback, resolve, reject };
      this.#tasks.set(task.token, task);
      if (opts.timeoutSeconds !== undefined) {
        const s = opts.timeoutSeconds;
        task.timeoutTimer = setTimeout(
          () => this.#timeOut(task, `${callback ? 'Task' : 'Activity'} ${activityArn} did not complete within TimeoutSeconds=${s}`),
          s * 1000,
        );
      }
      if (signal) {
        const onAbort = (): void => this.#finish(task, abortReason(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        task.unlinkSignal = () => signal.removeEventListener('abort', onAbort);
      }
      if (callback) this.#armHeartbeat(task);
      else this.#enqueue(task, false);
    });
    return { token, result };
  }

  /**
   * Long-polls for a task of `activityArn`: returns a queued task at once,
   * otherwise waits up to `waitMs`. Resolves `undefined` when nothing came or
   * `signal` aborted (the waiter is then removed, so no task is lost to it).
   */
  poll(activityArn: string, workerName: string | undefined, waitMs: number, signal: AbortSignal): Promise<ActivityTask | undefined> {
    void workerName; // accepted for API parity; not needed for dispatch
    const queued = this.#queues.get(activityArn)?.shift();
    if (queued) return Promise.resolve(this.#handOut(queued));
    if (this.#closed || signal.aborted || waitMs <= 0) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const list = this.#waiters.get(activityArn) ?? [];
      this.#waiters.set(activityArn, list);
      const done = (task: Task | undefined): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        const i = list.indexOf(waiter);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0 && this.#waiters.get(activityArn) === list) this.#waiters.delete(activityArn);
        resolve(task ? this.#handOut(task) : undefined);
      };
      const waiter: Waiter = { hand: done };
      const onAbort = (): void => done(undefined);
      const timer = setTimeout(onAbort, waitMs);
      signal.addEventListener('abort', onAbort, { once: true });
      list.push(waiter);
    });
  }

  /**
   * Puts a handed-out task back at the head of its queue, e.g. when the
   * poller disconnected before the task could be written to it.
   */
  release(taskToken: string): void {
    const task = this.#tasks.get(taskToken);
    if (!task?.running) return;
    task.running = false;
    clearTimeout(task.heartbeatTimer);
    this.#enqueue(task, true);
  }

  /**
   * Completes a task (SendTaskSuccess) with JSON text `outputJson`.
   * @throws `ValidationException` for an output over the payload quota (as AWS refuses it,
   *   before looking at the token), `TaskDoesNotExist`, `TaskTimedOut`, or `InvalidOutput` for bad JSON.
   */
  succeed(taskToken: string, outputJson: string): void {
    const tooLong = fieldTooLong('output', Buffer.byteLength(outputJson, 'utf8'), this.#quotas);
    if (tooLong) throw tooLong;
    const task = this.#lookup(taskToken);
    let output: unknown;
    try {
      output = JSON.parse(outputJson);
    } catch {
      throw namedError('InvalidOutput', 'output is not valid JSON');
    }
    this.#finish(task, undefined, output);
  }

  /** Fails a task (SendTaskFailure). @throws `TaskDoesNotExist` or `TaskTimedOut`. */
  fail(taskToken: string, error?: string, cause?: string): void {
    const task = this.#lookup(taskToken);
    this.#finish(task, namedError(error || 'States.TaskFailed', cause ?? ''));
  }

  /** Restarts the HeartbeatSeconds clock (SendTaskHeartbeat). @throws `TaskDoesNotExist` or `TaskTimedOut`. */
  heartbeat(taskToken: string): void {
    const task = this.#lookup(taskToken);
    if (task.running) this.#armHeartbeat(task);
  }

  /** Rejects every pending task, releases every waiting poller and clears all timers. */
  close(): void {
    this.#closed = true;
    for (const list of [...this.#waiters.values()]) for (const w of [...list]) w.hand(undefined);
    this.#waiters.clear();
    for (const task of [...this.#tasks.values()]) {
      this.#finish(task, namedError('States.Aborted', `activity broker closed; task for ${task.activityArn} abandoned`));
    }
    this.#queues.clear();
  }

  #enqueue(task: Task, front: boolean): void {
    const waiter = this.#waiters.get(task.activityArn)?.[0];
    if (waiter) return waiter.hand(task);
    const queue = this.#queues.get(task.activityArn) ?? [];
    this.#queues.set(task.activityArn, queue);
    if (front) queue.unshift(task);
    else queue.push(task);
  }

  #handOut(task: Task): ActivityTask {
    task.running = true;
    this.#armHeartbeat(task);
    return { taskToken: task.token, input: task.input };
  }

  #armHeartbeat(task: Task): void {
    const s = task.heartbeatSeconds;
    if (s === undefined) return;
    clearTimeout(task.heartbeatTimer);
    task.heartbeatTimer = setTimeout(() => this.#timeOut(task, `Activity ${task.activityArn} sent no heartbeat within HeartbeatSeconds=${s}`), s * 1000);
  }

  #timeOut(task: Task, message: string): void {
    this.#timedOut.add(task.token);
    if (this.#timedOut.size > TIMED_OUT_MEMORY) {
      const oldest = this.#timedOut.values().next().value;
      if (oldest !== undefined) this.#timedOut.delete(oldest);
    }
    this.#finish(task, namedError('States.Timeout', message));
  }

  #lookup(taskToken: string): Task {
    const task = this.#tasks.get(taskToken);
    if (task) return task;
    if (this.#timedOut.has(taskToken)) throw namedError('TaskTimedOut', 'task timed out');
    throw namedError('TaskDoesNotExist', 'task token is unknown or already completed');
  }

  /** Removes the task everywhere and settles its promise. */
  #finish(task: Task, err: Error | undefined, output?: unknown): void {
    if (!this.#tasks.delete(task.token)) return;
    clearTimeout(task.timeoutTimer);
    clearTimeout(task.heartbeatTimer);
    task.unlinkSignal?.();
    const queue = this.#queues.get(task.activityArn);
    const i = queue?.indexOf(task) ?? -1;
    if (queue && i >= 0) queue.splice(i, 1);
    if (err) task.reject(err);
    else task.resolve(output);
  }
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : namedError('AbortError', 'activity task aborted');
}
