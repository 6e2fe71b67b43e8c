/**
 * The activity worker: long-polls its group's Activity while it has a free slot, runs
 * each task with heartbeats, answers with SendTaskSuccess / SendTaskFailure carrying the
 * error's stable name. `drain()` stops taking work and waits for what is in flight.
 */
import { GetActivityTaskCommand, SendTaskFailureCommand, SendTaskHeartbeatCommand, SendTaskSuccessCommand, type SFNClient } from '@aws-sdk/client-sfn';
import { setTimeout as sleep } from 'node:timers/promises';

export interface TaskContext {
  signal: AbortSignal;
}

export type TaskHandler = (input: unknown, ctx: TaskContext) => Promise<unknown>;

export interface Logger {
  info(event: string, fields?: Record<string, unknown>): void;
  error(event: string, fields?: Record<string, unknown>): void;
}

export interface WorkerOptions {
  sfn: Pick<SFNClient, 'send'>;
  activityArn: string;
  workerName: string;
  slots: number;
  handler: TaskHandler;
  logger: Logger;
  heartbeatMs?: number;
}

export class MoverWorker {
  private readonly o: WorkerOptions;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopPolling = new AbortController();

  constructor(o: WorkerOptions) {
    this.o = o;
  }

  /** Polls until drained. */
  async run(): Promise<void> {
    const { o } = this;
    o.logger.info('worker.started', { activityArn: o.activityArn, slots: o.slots });
    while (!this.stopPolling.signal.aborted) {
      if (this.inFlight.size >= o.slots) {
        await Promise.race(this.inFlight);
        continue;
      }
      let task;
      try {
        task = await o.sfn.send(new GetActivityTaskCommand({ activityArn: o.activityArn, workerName: o.workerName }), { abortSignal: this.stopPolling.signal });
      } catch (err) {
        if (this.stopPolling.signal.aborted) break;
        o.logger.error('poll.failed', { error: (err as Error).message });
        await sleep(2000).catch(() => {});
        continue;
      }
      if (!task.taskToken) continue;
      const p = this.execute(task.taskToken, task.input ?? '{}').finally(() => this.inFlight.delete(p));
      this.inFlight.add(p);
    }
    await Promise.all(this.inFlight);
    o.logger.info('worker.stopped', {});
  }

  /** Takes no new tasks; resolves when in-flight tasks have finished. */
  async drain(): Promise<void> {
    this.stopPolling.abort();
    await Promise.all(this.inFlight);
  }

  private async execute(taskToken: string, inputText: string): Promise<void> {
    const { o } = this;
    const abort = new AbortController();
    const beat = setInterval(() => {
      o.sfn.send(new SendTaskHeartbeatCommand({ taskToken })).catch((err: Error) => {
        if (err.name === 'TaskTimedOut' || err.name === 'TaskDoesNotExist') {
          o.logger.error('task.lost', { reason: err.name });
          abort.abort(err);
        }
      });
    }, o.heartbeatMs ?? 5000);
    const started = performance.now();
    let input: unknown;
    try {
      input = JSON.parse(inputText);
      o.logger.info('task.started', { task: (input as { task?: string }).task });
      const output = await o.handler(input, { signal: abort.signal });
      clearInterval(beat);
      await o.sfn.send(new SendTaskSuccessCommand({ taskToken, output: JSON.stringify(output ?? null) }));
      o.logger.info('task.succeeded', { task: (input as { task?: string }).task, seconds: (performance.now() - started) / 1000 });
    } catch (err) {
      clearInterval(beat);
      const e = err as Error;
      const error = (e.name && e.name !== 'Error' ? e.name : 'Mover.Internal').slice(0, 256);
      o.logger.error('task.failed', { task: (input as { task?: string } | undefined)?.task, error, cause: e.message });
      if (abort.signal.aborted) return; // the control plane gave up on this task already
      await o.sfn.send(new SendTaskFailureCommand({ taskToken, error, cause: e.message.slice(0, 32_000) })).catch((sendErr: Error) => {
        o.logger.error('task.report_failed', { error: sendErr.message });
      });
    }
  }
}
