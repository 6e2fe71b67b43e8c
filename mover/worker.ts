/**
 * The activity worker: long-polls its group's Activity while it has a free slot, runs
 * each task with heartbeats, answers with SendTaskSuccess / SendTaskFailure carrying the
 * error's stable name. `drain()` stops taking work and waits for what is in flight, up to
 * a grace time. A task the `admit` hook finds too new for this mover is handed over to the
 * upgraded program (mover/upgrade.ts) under the same task token, heartbeated meanwhile.
 */
import { GetActivityTaskCommand, SendTaskFailureCommand, SendTaskHeartbeatCommand, SendTaskSuccessCommand, type SFNClient } from '@aws-sdk/client-sfn';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalIoFailed, TaskStalled } from '../contracts/errors.ts';

export interface TaskContext {
  /** Aborted when the task stalled, was stopped or timed out, or the mover's grace time ran out. */
  signal: AbortSignal;
  /** Says the task made real progress (bytes read, written or checked): a task that says nothing for the stall timeout is aborted. */
  progress(): void;
}

export type TaskHandler = (input: unknown, ctx: TaskContext) => Promise<unknown>;

export interface Logger {
  info(event: string, fields?: Record<string, unknown>): void;
  error(event: string, fields?: Record<string, unknown>): void;
}

/** A task passed from this process to its successor at an upgrade: same token, same input. */
export interface HandedOverTask {
  taskToken: string;
  /** JSON text of the task input. */
  input: string;
}

/** Replaces the process with the upgraded mover, handing it `tasks`; returns only by throwing. */
export type Restart = (tasks: HandedOverTask[]) => void;

export interface WorkerOptions {
  sfn: Pick<SFNClient, 'send'>;
  activityArn: string;
  workerName: string;
  slots: number;
  handler: TaskHandler;
  logger: Logger;
  heartbeatMs?: number;
  /**
   * Checked before each task runs: resolves undefined when this mover may run it, or a
   * {@link Restart} once a newer mover is installed (the task is handed over to it when
   * the other tasks in flight have finished); rejects to fail the task (e.g. Mover.CannotUpgrade).
   */
  admit?: (input: unknown) => Promise<Restart | undefined>;
  /** Tasks the previous program of this mover handed over: run first, under their tokens. */
  resume?: HandedOverTask[];
  /** How long `drain()` waits for tasks in flight before aborting them (unset: no limit). */
  shutdownGraceMs?: number;
  /**
   * How long a running task may go without calling `progress()` before it is aborted and
   * failed with Mover.TaskStalled (default 10 min). Heartbeats alone prove the mover lives,
   * not that the task moves: a stalled read would otherwise hold its slot until the task's
   * Step Functions timeout.
   */
  stallTimeoutMs?: number;
}

/** SendTaskHeartbeat answers meaning the control plane no longer waits for the task (timed out, or its execution stopped). */
const TASK_GONE = new Set(['TaskTimedOut', 'TaskDoesNotExist', 'ExecutionDoesNotExist', 'InvalidToken']);
const DEFAULT_STALL_TIMEOUT_MS = 10 * 60 * 1000;

/** Rejects with the signal's reason once it aborts: raced against a handler that may not heed its signal. */
const whenAborted = (signal: AbortSignal): Promise<never> =>
  new Promise((_, no) => {
    if (signal.aborted) no(signal.reason);
    else signal.addEventListener('abort', () => no(signal.reason), { once: true });
  });

export class MoverWorker {
  private readonly o: WorkerOptions;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopPolling = new AbortController();
  private readonly stopped = new Promise<void>((ok) => this.stopPolling.signal.addEventListener('abort', () => ok(), { once: true }));
  private readonly tokens = new Map<Promise<void>, string>();
  private readonly taskAborts = new Set<AbortController>();
  /** Tasks waiting for the restart into the upgraded mover: token → input. */
  private readonly handedOver = new Map<string, string>();
  private restarting = false;
  private restartOnce: Promise<void> | undefined;
  private pollAbort: AbortController | undefined;

  constructor(o: WorkerOptions) {
    this.o = o;
  }

  /** Polls until drained. */
  async run(): Promise<void> {
    const { o } = this;
    o.logger.info('worker.started', { activityArn: o.activityArn, slots: o.slots });
    for (const t of o.resume ?? []) {
      o.logger.info('task.resumed', {});
      this.start(t.taskToken, t.input);
    }
    while (!this.stopPolling.signal.aborted) {
      // Full, or about to restart into an upgraded mover: take nothing new.
      if (this.inFlight.size >= o.slots || this.restarting) {
        await Promise.race([...this.inFlight, this.stopped]);
        continue;
      }
      const poll = new AbortController();
      this.pollAbort = poll;
      const signal = AbortSignal.any([this.stopPolling.signal, poll.signal]);
      let task;
      try {
        task = await o.sfn.send(new GetActivityTaskCommand({ activityArn: o.activityArn, workerName: o.workerName }), { abortSignal: signal });
      } catch (err) {
        if (signal.aborted) continue;
        o.logger.error('poll.failed', { error: (err as Error).message });
        await sleep(2000).catch(() => {});
        continue;
      } finally {
        this.pollAbort = undefined;
      }
      if (!task.taskToken) continue;
      this.start(task.taskToken, task.input ?? '{}');
    }
    await Promise.all(this.inFlight);
    o.logger.info('worker.stopped', {});
  }

  /**
   * Takes no new tasks and waits for the tasks in flight. When they outlast
   * `shutdownGraceMs`, aborts them without answering (the control plane retries them after
   * their heartbeat timeout, as for a mover that died). Resolves true when all finished in time.
   */
  async drain(): Promise<boolean> {
    const { o } = this;
    this.stopPolling.abort();
    const all = Promise.all(this.inFlight).then(() => true);
    if (o.shutdownGraceMs === undefined) return all;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((ok) => {
      timer = setTimeout(() => ok(false), o.shutdownGraceMs);
    });
    const finished = await Promise.race([all, expired]);
    clearTimeout(timer);
    if (!finished) {
      o.logger.error('worker.grace_expired', { graceMs: o.shutdownGraceMs, tasks: this.inFlight.size });
      for (const a of this.taskAborts) a.abort(new Error(`the mover is shutting down and its grace time of ${o.shutdownGraceMs} ms expired`));
      await Promise.all(this.inFlight);
    }
    return finished;
  }

  private start(taskToken: string, inputText: string): void {
    const p = this.execute(taskToken, inputText).finally(() => {
      this.inFlight.delete(p);
      this.tokens.delete(p);
    });
    this.inFlight.add(p);
    this.tokens.set(p, taskToken);
  }

  /**
   * Keeps the task (its heartbeat goes on) until every other task in flight has finished,
   * then restarts into the upgraded mover with all handed-over tasks. Returns when a drain
   * called the hand-over off; throws when the restart failed.
   */
  private async handOver(taskToken: string, inputText: string, restart: Restart): Promise<void> {
    const { o } = this;
    this.handedOver.set(taskToken, inputText);
    this.restarting = true;
    this.pollAbort?.abort();
    for (;;) {
      if (this.stopPolling.signal.aborted) {
        this.handedOver.delete(taskToken);
        o.logger.info('task.abandoned', { reason: 'the mover is draining; the control plane retries the task after its heartbeat timeout' });
        return;
      }
      const others = [...this.inFlight].filter((p) => !this.handedOver.has(this.tokens.get(p) ?? ''));
      if (!others.length) break;
      o.logger.info('task.handover_waiting', { tasksInFlight: others.length });
      await Promise.race([...others, this.stopped]);
    }
    this.restartOnce ??= (async () => {
      try {
        o.logger.info('worker.restarting', { tasks: this.handedOver.size });
        restart([...this.handedOver].map(([t, input]) => ({ taskToken: t, input })));
      } finally {
        this.handedOver.clear();
        this.restarting = false;
        this.restartOnce = undefined;
      }
    })();
    await this.restartOnce;
  }

  private async execute(taskToken: string, inputText: string): Promise<void> {
    const { o } = this;
    const abort = new AbortController();
    this.taskAborts.add(abort);
    const stallMs = o.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    // Only while the handler runs: a task waiting for a hand-over makes no progress by design.
    let lastProgress: number | undefined;
    let input: unknown;
    const beat = setInterval(() => {
      const idle = lastProgress === undefined ? 0 : performance.now() - lastProgress;
      if (idle > stallMs && !abort.signal.aborted) {
        const what = JSON.stringify(about(input));
        o.logger.error('task.stalled', { ...about(input), idleMs: Math.round(idle) });
        abort.abort(
          new TaskStalled(
            `task ${what} made no progress for ${Math.round(idle / 1000)} s (LIFEBOAT_STALL_TIMEOUT_MS=${stallMs}); the mover aborted it and the workflow retries it. If it stalls again, check the mover's storage and source connections`,
          ),
        );
      }
      o.sfn.send(new SendTaskHeartbeatCommand({ taskToken })).catch((err: Error) => {
        if (!TASK_GONE.has(err.name)) return;
        o.logger.error('task.lost', { ...about(input), reason: err.name });
        abort.abort(err);
      });
    }, o.heartbeatMs ?? 5000);
    const started = performance.now();
    try {
      input = JSON.parse(inputText);
      o.logger.info('task.started', about(input));
      const restart = await o.admit?.(input);
      if (restart) {
        o.logger.info('task.handing_over', { task: (input as { task?: string }).task });
        await this.handOver(taskToken, inputText, restart);
        clearInterval(beat);
        return;
      }
      lastProgress = performance.now();
      const progress = () => {
        lastProgress = performance.now();
      };
      const work = o.handler(input, { signal: abort.signal, progress });
      work.catch(() => {}); // it may settle after an abort freed the slot
      // An aborted task frees its slot at once, even when its handler is stuck in a call that ignores the signal.
      const output = await Promise.race([work, whenAborted(abort.signal)]);
      clearInterval(beat);
      await o.sfn.send(new SendTaskSuccessCommand({ taskToken, output: JSON.stringify(output ?? null) }));
      o.logger.info('task.succeeded', { ...about(input), seconds: (performance.now() - started) / 1000 });
    } catch (err) {
      clearInterval(beat);
      // A stall names itself; a bare file-system error (EEXIST, ENOSPC, ...) says only its errno: name the path, the meaning and the next step.
      const e = (abort.signal.reason instanceof TaskStalled ? abort.signal.reason : LocalIoFailed.from(err)) as Error;
      const error = (e.name && e.name !== 'Error' ? e.name : 'Mover.Internal').slice(0, 256);
      o.logger.error('task.failed', { ...about(input), error, cause: e.message });
      // Stopped, timed out or drained: the control plane gave up on this task already (or retries it after its heartbeat timeout).
      if (abort.signal.aborted && !(abort.signal.reason instanceof TaskStalled)) return;
      await o.sfn.send(new SendTaskFailureCommand({ taskToken, error, cause: e.message.slice(0, 32_000) })).catch((sendErr: Error) => {
        o.logger.error('task.report_failed', { error: sendErr.message });
      });
    } finally {
      this.taskAborts.delete(abort);
    }
  }
}

/** What a task is about, for log lines: its kind, VM, disk and segment where it has them. */
function about(input: unknown): Record<string, unknown> {
  const t = (input ?? {}) as { task?: string; job?: { vmId?: string }; disk?: { diskId?: string }; segment?: { index?: number } | null };
  return {
    task: t.task,
    ...(t.job?.vmId ? { vmId: t.job.vmId } : {}),
    ...(t.disk?.diskId ? { diskId: t.disk.diskId } : {}),
    ...(typeof t.segment?.index === 'number' ? { segment: t.segment.index } : {}),
  };
}
