/**
 * Puts a DispatchDisk task's progress (contracts/progress.ts) into the job's repository bucket:
 * once at the start, then at most every `everyMs` while bytes move, and once at the end
 * (`done` or `failed`). Writes go one after another, so a late write never overwrites the
 * final one; a failed write is logged and never fails the task (progress is for people).
 */
import type { ObjectStore } from '../core/object-store.ts';
import { PROGRESS_FORMAT, progressKey, type TaskProgress } from '../contracts/progress.ts';
import type { Logger } from './worker.ts';

export interface ProgressReporterOptions {
  store: Pick<ObjectStore, 'put'>;
  logger: Logger;
  task: Pick<TaskProgress, 'vmId' | 'backupId' | 'diskId' | 'segment' | 'mover' | 'bytesTotal'>;
  everyMs: number;
  now?: () => Date;
}

export class ProgressReporter {
  private readonly o: ProgressReporterOptions;
  private readonly startedAt: string;
  private last = 0;
  private bytesDone = 0;
  private bytesStored = 0;
  private finished = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(o: ProgressReporterOptions) {
    this.o = o;
    this.startedAt = this.now().toISOString();
  }

  private now(): Date {
    return this.o.now?.() ?? new Date();
  }

  start(): Promise<void> {
    this.last = performance.now();
    return this.write('transfer');
  }

  /** Records the counts; writes them when `everyMs` has passed since the last write. */
  update(bytesDone: number, bytesStored: number): void {
    this.bytesDone = bytesDone;
    this.bytesStored = bytesStored;
    if (this.finished || performance.now() - this.last < this.o.everyMs) return;
    this.last = performance.now();
    void this.write('transfer');
  }

  /** The final write: `done` (every byte of the task moved) or `failed`. */
  finish(phase: 'done' | 'failed'): Promise<void> {
    if (phase === 'done') this.bytesDone = this.o.task.bytesTotal;
    this.finished = true;
    return this.write(phase);
  }

  private write(phase: TaskProgress['phase']): Promise<void> {
    const { segment, ...task } = this.o.task;
    const p: TaskProgress = {
      format: PROGRESS_FORMAT, ...task, ...(segment === undefined ? {} : { segment }), phase,
      bytesDone: this.bytesDone, bytesStored: this.bytesStored, startedAt: this.startedAt, updatedAt: this.now().toISOString(),
    };
    const key = progressKey(p);
    this.writing = this.writing.then(() => this.o.store.put(key, Buffer.from(JSON.stringify(p)))).catch((err: Error) => {
      this.o.logger.error('progress.write_failed', { key, error: err.message });
    });
    return this.writing;
  }
}
