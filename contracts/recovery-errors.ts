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

/**
 * An instant recovery's move to final storage failed (target full or gone, the copy
 * aborted): the VM is paused, its writes kept in its overlays; the message says where they
 * are and how to resume. Not retried by the workflow: what stopped it must be fixed first.
 */
export class InstantMoveFailed extends LifeboatError {
  static readonly code = 'Recovery.InstantMoveFailed';
  constructor(message: string, cause?: unknown) {
    super(InstantMoveFailed.code, message, { retryable: false, cause });
  }
}

/**
 * Lock extension (functions/gc/extend-locks.ts) could not lock some objects of retained
 * backups until their expiry (the store refused PutObjectRetention, or it failed): the
 * collection stops before deleting anything, naming the objects. Not retryable: a refusal
 * is a permission or a lock mode to fix; the backups whose objects all held are recorded,
 * the rest are tried again by the next collection.
 */
export class LocksNotExtended extends LifeboatError {
  static readonly code = 'Gc.LocksNotExtended';
  constructor(message: string) {
    super(LocksNotExtended.code, message, { retryable: false });
  }
}

/**
 * A failover plan's VM did not show its readiness (serial console line, guest agent) within
 * the group's timeout, or stopped first: the message names the VM, its domain and what it
 * printed last. Not retryable: booting it again would wait as long again.
 */
export class FailoverNotReady extends LifeboatError {
  static readonly code = 'Failover.NotReady';
  constructor(message: string) {
    super(FailoverNotReady.code, message, { retryable: false });
  }
}

export const recoveryErrorClasses = {
  [FailoverNotReady.code]: FailoverNotReady,
  [InstantMoveFailed.code]: InstantMoveFailed,
  [RecoveryRequestInvalid.code]: RecoveryRequestInvalid,
  [RestoreMismatch.code]: RestoreMismatch,
  [ReplicaBusy.code]: ReplicaBusy,
  [GcBusy.code]: GcBusy,
  [LocksNotExtended.code]: LocksNotExtended,
} as const;

/** File-level restore: the path, partition or file system asked for is not on the backup's disk. */
export class FilesNotFound extends LifeboatError {
  static readonly code = 'Files.NotFound';
  constructor(message: string) {
    super(FilesNotFound.code, message, { retryable: false });
  }
}

/**
 * File-level restore: the guest's partition table or file system is damaged or hostile
 * (the sandboxed reader refused it, crashed, or ran out of time); nothing more was read.
 */
export class FilesUnreadable extends LifeboatError {
  static readonly code = 'Files.Unreadable';
  constructor(message: string) {
    super(FilesUnreadable.code, message, { retryable: false });
  }
}
