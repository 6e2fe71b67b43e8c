/**
 * Errors of the recovery workflows (restore, deep verify, prune). Same contract as
 * core/errors.ts: `name` is a stable code, `retryable` is part of the type.
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

export const recoveryErrorClasses = {
  [RecoveryRequestInvalid.code]: RecoveryRequestInvalid,
  [RestoreMismatch.code]: RestoreMismatch,
} as const;
