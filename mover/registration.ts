/**
 * Keeps this mover's registration record (core/mover-registry.ts) in the repository
 * bucket up to date: on start, on every state change and every `heartbeatSeconds`.
 * A failed write is logged and retried at the next beat; it never stops the mover.
 */
import type { ObjectStore } from '../core/object-store.ts';
import { MOVER_RECORD_FORMAT, moverRecordKey, type MoverRegistration, type MoverState } from '../core/mover-registry.ts';
import type { Logger } from './worker.ts';

export interface RegistrationOptions {
  store: Pick<ObjectStore, 'put'>;
  record: Omit<MoverRegistration, 'format' | 'state' | 'seenAt' | 'startedAt' | 'tasksInFlight'>;
  logger: Logger;
  now?: () => Date;
}

export class Registration {
  private readonly o: RegistrationOptions;
  private readonly startedAt: string;
  private state: MoverState = 'running';
  private upgradingTo: string | undefined;
  private inFlight = 0;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(o: RegistrationOptions) {
    this.o = o;
    this.startedAt = (o.now?.() ?? new Date()).toISOString();
  }

  /** Writes the record now and then every `heartbeatSeconds`. */
  start(): Promise<void> {
    this.timer = setInterval(() => void this.write(), this.o.record.heartbeatSeconds * 1000);
    this.timer.unref();
    return this.write();
  }

  /** Records a new state (and the task count) at once. */
  set(state: MoverState, extra: { upgradingTo?: string; tasksInFlight?: number } = {}): Promise<void> {
    this.state = state;
    this.upgradingTo = state === 'upgrading' ? extra.upgradingTo : undefined;
    if (extra.tasksInFlight !== undefined) this.inFlight = extra.tasksInFlight;
    if (state === 'stopped') clearInterval(this.timer);
    return this.write();
  }

  /** The task count goes out with the next beat. */
  tasks(n: number): void {
    this.inFlight = n;
  }

  private write(): Promise<void> {
    const record: MoverRegistration = {
      format: MOVER_RECORD_FORMAT,
      ...this.o.record,
      state: this.state,
      ...(this.upgradingTo ? { upgradingTo: this.upgradingTo } : {}),
      tasksInFlight: this.inFlight,
      startedAt: this.startedAt,
      seenAt: (this.o.now?.() ?? new Date()).toISOString(),
    };
    // Writes go one after another, so a late beat never overwrites a newer state.
    this.writing = this.writing
      .then(() => this.o.store.put(moverRecordKey(record.name), Buffer.from(JSON.stringify(record, null, 2))))
      .catch((err: Error) => {
        this.o.logger.error('registration.failed', { key: moverRecordKey(record.name), error: err.message });
      });
    return this.writing;
  }
}
