/**
 * Errors of the recovery workflows (restore, deep verify, prune). Same contract as
 * contracts/errors.ts: `name` is a stable code, `retryable` is part of the type.
 */
import { LifeboatError } from './errors.ts';

/** A restore, verification or prune request names something that does not exist or is unusable. */
export class RecoveryRequestInvalid extends LifeboatError {
  static readonly code = 'Recovery.RequestInvalid';
  constructor(message: string) {
    super(RecoveryRequestInvalid.code, message, { retryable: false });
  }
}

/** What the mover wrote does not read back as the backup's data. */
export class RestoreMismatch extends LifeboatError {
  static readonly code = 'Restore.Mismatch';
  constructor(message: string) {
    super(RestoreMismatch.code, message, { retryable: false });
  }
}

/**
 * Another replication (or failover) of the VM into the same DR repository holds its lease:
 * its standby replica must not be written by two at once. Retryable: the workflow waits.
 */
export class ReplicaBusy extends LifeboatError {
  static readonly code = 'Replication.Busy';
  constructor(message: string) {
    super(ReplicaBusy.code, message, { retryable: true });
  }
}

/**
 * Another garbage collection of the repository holds its lease: two at once would race on
 * its index (each rewriting and merging the objects the other reads). Retryable: the
 * workflow waits.
 */
export class GcBusy extends LifeboatError {
  static readonly code = 'Gc.Busy';
  constructor(message: string) {
    super(GcBusy.code, message, { retryable: true });
  }
}

export const recoveryErrorClasses = {
  [RecoveryRequestInvalid.code]: RecoveryRequestInvalid,
  [RestoreMismatch.code]: RestoreMismatch,
  [ReplicaBusy.code]: ReplicaBusy,
  [GcBusy.code]: GcBusy,
} as const;
