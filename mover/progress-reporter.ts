/**
 * Puts a task's progress (contracts/progress.ts: a backup's DispatchDisk, a restore's disk, a
 * verification's disk) into the job's repository bucket: once at the start, then at most
 * every `everyMs` while bytes move, at once when the phase changes, and once at the end
 * (`done` or `failed`). Writes go one after another, so a late write never overwrites the
 * final one; a failed write is logged and never fails the task (progress is for people).
 */
import type { ObjectStore } from '../core/object-store.ts';
import { PROGRESS_FORMAT, progressKey, type MOVING_PHASES, type TaskProgress } from '../contracts/progress.ts';
import type { Logger } from './worker.ts';

export interface ProgressReporterOptions {
  store: Pick<ObjectStore, 'put'>;
  logger: Logger;
  task: Pick<TaskProgress, 'vmId' | 'backupId' | 'diskId' | 'segment' | 'mover' | 'bytesTotal' | 'operation' | 'operationId'>;
  everyMs: number;
  now?: () => Date;
}

export class ProgressReporter {
  private readonly o: ProgressReporterOptions;
  private readonly startedAt: string;
  private phase: TaskProgress['phase'] = 'transfer';
  private phaseStartedAt: string | undefined;
  private bytesTotal: number;
  private last = 0;
  private bytesDone = 0;
  private bytesStored = 0;
  private finished = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(o: ProgressReporterOptions) {
    this.o = o;
    this.startedAt = this.now().toISOString();
    this.bytesTotal = o.task.bytesTotal;
  }

  private now(): Date {
    return this.o.now?.() ?? new Date();
  }

  start(phase: (typeof MOVING_PHASES)[number] = 'transfer'): Promise<void> {
    this.last = performance.now();
    this.phase = phase;
    return this.write(phase);
  }

  /**
   * Records the counts (and the phase, and the total where it is learnt late: a
   * verification's chunks); writes them when `everyMs` has passed since the last write, or
   * at once when the phase changed.
   */
  update(bytesDone: number, bytesStored: number, phase: (typeof MOVING_PHASES)[number] = 'transfer', bytesTotal?: number): void {
    this.bytesDone = bytesDone;
    this.bytesStored = bytesStored;
    if (bytesTotal !== undefined) this.bytesTotal = bytesTotal;
    if (this.finished) return;
    const changed = phase !== this.phase;
    if (changed) {
      this.phase = phase;
      this.phaseStartedAt = this.now().toISOString();
    }
    if (!changed && performance.now() - this.last < this.o.everyMs) return;
    this.last = performance.now();
    void this.write(phase);
  }

  /** The final write: `done` (every byte of the task moved) or `failed`. */
  finish(phase: 'done' | 'failed'): Promise<void> {
    if (phase === 'done') this.bytesDone = this.bytesTotal;
    this.finished = true;
    return this.write(phase);
  }

  private write(phase: TaskProgress['phase']): Promise<void> {
    const { segment, operation, operationId, ...task } = this.o.task;
    const p: TaskProgress = {
      format: PROGRESS_FORMAT,
      ...task,
      ...(operation ? { operation } : {}),
      ...(operationId ? { operationId } : {}),
      ...(segment === undefined ? {} : { segment }),
      phase,
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      bytesStored: this.bytesStored,
      startedAt: this.startedAt,
      ...(this.phaseStartedAt ? { phaseStartedAt: this.phaseStartedAt } : {}),
      updatedAt: this.now().toISOString(),
    };
    const key = progressKey(p);
    this.writing = this.writing
      .then(() => this.o.store.put(key, Buffer.from(JSON.stringify(p))))
      .catch((err: Error) => {
        this.o.logger.error('progress.write_failed', { key, error: err.message });
      });
    return this.writing;
  }
}
