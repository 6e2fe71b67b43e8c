/**
 * The error family shared by the control plane and the movers.
 *
 * An error's `name` is a stable code: Step Functions Retry/Catch blocks match it
 * (`ErrorEquals`), so renaming one is a breaking change. `retryable` says whether a
 * workflow may try the same work again.
 */
import { z } from 'zod';

/** A Step Functions Catch result as the workflows hand it to a function: `{ Error, Cause }`. */
export const caughtError = z.looseObject({ Error: z.string(), Cause: z.string().optional().default('') });

export class LifeboatError extends Error {
  readonly retryable: boolean;
  constructor(name: string, message: string, opts: { retryable: boolean; cause?: unknown }) {
    super(message, { cause: opts.cause });
    this.name = name;
    this.retryable = opts.retryable;
  }
}

/** The VM's source (folder, disk file, hypervisor) cannot be read. */
export class SourceUnavailable extends LifeboatError {
  static readonly code = 'Mover.SourceUnavailable';
  constructor(message: string, cause?: unknown) {
    super(SourceUnavailable.code, message, { retryable: false, cause });
  }
}

/** The repository (S3 endpoint) failed or could not be reached. Retryable. */
export class StorageUnavailable extends LifeboatError {
  static readonly code = 'Mover.StorageUnavailable';
  constructor(message: string, cause?: unknown) {
    super(StorageUnavailable.code, message, { retryable: true, cause });
  }
}

/** Stored data failed an integrity check (authentication tag, id, size). */
export class Corrupt extends LifeboatError {
  static readonly code = 'Mover.Corrupt';
  constructor(message: string, cause?: unknown) {
    super(Corrupt.code, message, { retryable: false, cause });
  }
}

/** A task's input does not match its schema: a bug or version skew, never retried. */
export class BadTaskInput extends LifeboatError {
  static readonly code = 'Mover.BadTaskInput';
  constructor(message: string, cause?: unknown) {
    super(BadTaskInput.code, message, { retryable: false, cause });
  }
}

/** A task input parsed with its contract schema; what does not fit is a BadTaskInput naming every bad field. */
export function parseTaskInput<S extends z.ZodType>(what: string, schema: S, raw: unknown): z.output<S> {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  throw new BadTaskInput(`${what} input is not valid: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(input)'}: ${i.message}`).join('; ')}`);
}

/** The backup names a policy the catalog does not hold. */
export class PolicyNotFound extends LifeboatError {
  static readonly code = 'Catalog.PolicyNotFound';
  constructor(policyId: string) {
    super(PolicyNotFound.code, `policy '${policyId}' does not exist in the catalog; create it first or check the policyId in the execution input`, {
      retryable: false,
    });
  }
}

/** A Backup request names VMs the policy does not select (its `vmIds` filter). */
export class BackupRequestInvalid extends LifeboatError {
  static readonly code = 'Backup.RequestInvalid';
  constructor(message: string) {
    super(BackupRequestInvalid.code, message, { retryable: false });
  }
}

/** Verify found a chunk missing or not matching its manifest. */
export class VerifyFailed extends LifeboatError {
  static readonly code = 'Verify.Failed';
  constructor(message: string) {
    super(VerifyFailed.code, message, { retryable: false });
  }
}

/**
 * Not a failure: the backup's manifests have more pieces than one Verify invocation checks
 * in time (Lambda's 900 s), so the workflow catches this into Verify by range (a Map over
 * ranges of manifest pieces, functions/backup/verify-ranges.ts).
 */
export class VerifyMustSplit extends LifeboatError {
  static readonly code = 'Verify.MustSplit';
  constructor(backupId: string, pieces: number, perRange: number) {
    super(
      VerifyMustSplit.code,
      `backup ${backupId} has ${pieces} manifest pieces, more than the ${perRange} one Verify invocation checks: it is verified by range`,
      { retryable: false },
    );
  }
}

/** A Lambda function's input does not match its schema: a bug or version skew, never retried. */
export class BadFunctionInput extends LifeboatError {
  static readonly code = 'Function.BadInput';
  constructor(message: string, cause?: unknown) {
    super(BadFunctionInput.code, message, { retryable: false, cause });
  }
}

/**
 * A mover too old for a job could not upgrade itself: no release at or above the job's
 * minimum version, a release whose signature or checksum does not verify, or an install
 * that failed. Not retried: an operator must publish a good release (or fix the mover's
 * release public key). The mover keeps serving jobs its version can run.
 */
export class CannotUpgrade extends LifeboatError {
  static readonly code = 'Mover.CannotUpgrade';
  constructor(message: string, cause?: unknown) {
    super(CannotUpgrade.code, message, { retryable: false, cause });
  }
}

/**
 * A VM the last discovery did not find on its host (marked gone in the catalog): a backup
 * run does not try it, and reports it as failed with this error so the VmsFailed alarm fires.
 */
export class VmGone extends LifeboatError {
  static readonly code = 'Source.VmGone';
  constructor(message: string) {
    super(VmGone.code, message, { retryable: false });
  }
}

/** A Discover execution's input names a host that is not configured, or not one discovery can reach (not a libvirt host). */
export class DiscoveryRequestInvalid extends LifeboatError {
  static readonly code = 'Discovery.RequestInvalid';
  constructor(message: string) {
    super(DiscoveryRequestInvalid.code, message, { retryable: false });
  }
}

/** A HostConfigBackup execution's input names a host that is not configured, or not a libvirt host. */
export class HostConfigRequestInvalid extends LifeboatError {
  static readonly code = 'HostConfig.RequestInvalid';
  constructor(message: string) {
    super(HostConfigRequestInvalid.code, message, { retryable: false });
  }
}

/**
 * Another run of the same policy holds the policy's run lease: two runs at once would
 * back up the same VMs twice and store their data twice. Not retried: the second run is
 * refused, naming the running execution; a run that died frees the lease when its
 * failure path or the reconcile runs, or at the latest when the lease expires.
 */
export class RunBusy extends LifeboatError {
  static readonly code = 'Run.Busy';
  constructor(message: string) {
    super(RunBusy.code, message, { retryable: false });
  }
}

/** What an errno means for a mover's local file, and what to do about it. */
const ERRNO_ADVICE: Record<string, [string, string]> = {
  EEXIST: ['a file or folder of that name is already there', 'choose another target path, or move it out of the way'],
  ENOSPC: ['the file system is full', 'free space there, or restore to another file system'],
  EDQUOT: ["the user's disk quota is used up", 'free space there, or restore to another file system'],
  EACCES: ['permission denied', "give the mover's user access to it, or choose another path"],
  EPERM: ['the operation is not permitted', "give the mover's user access to it, or choose another path"],
  EROFS: ['the file system is read-only', 'choose a writable path'],
  ENOTDIR: ['a part of the path is a file, not a folder', 'choose another path'],
  EISDIR: ['it is a folder, not a file', 'name a file (a whole VM restores into a folder; --disk into a file)'],
  ENOENT: ['it does not exist', "check the path on the mover's host"],
};

/**
 * A file operation on the mover's host failed (the target of a restore, a snapshot
 * folder): names the path, the operation and what the errno means, and the next step.
 * Never retried: the same operation on the same path fails the same way.
 */
export class LocalIoFailed extends LifeboatError {
  static readonly code = 'Mover.LocalIo';
  constructor(err: NodeJS.ErrnoException & { dest?: string }) {
    const [meaning, next] = ERRNO_ADVICE[err.code ?? ''] ?? [err.message, "check the path on the mover's host"];
    const path = err.dest ? `${err.path} → ${err.dest}` : err.path;
    super(LocalIoFailed.code, `${err.syscall ?? 'file operation'} ${path ?? ''} on the mover failed (${err.code}): ${meaning}; ${next}`, {
      retryable: false,
      cause: err,
    });
  }

  /** A Node file-system error (errno code, syscall and path) as a LocalIoFailed; anything else unchanged. */
  static from(err: unknown): unknown {
    const e = err as NodeJS.ErrnoException;
    return e instanceof Error && !(e instanceof LifeboatError) && typeof e.code === 'string' && typeof e.syscall === 'string' && typeof e.path === 'string'
      ? new LocalIoFailed(e)
      : err;
  }
}

/**
 * The embedded stack cannot start: another one runs on its data folder, or its key file
 * does not open the repository. Names the folder or file and what to do.
 */
export class StackUnavailable extends LifeboatError {
  static readonly code = 'Stack.Unavailable';
  constructor(message: string, cause?: unknown) {
    super(StackUnavailable.code, message, { retryable: false, cause });
  }
}

/**
 * A mover task reported no progress for longer than the mover's stall timeout
 * (`LIFEBOAT_STALL_TIMEOUT_MS`): the mover aborted it. Retryable: the stall is usually a
 * dead connection or a hung device, and the next attempt may run on another mover.
 */
export class TaskStalled extends LifeboatError {
  static readonly code = 'Mover.TaskStalled';
  constructor(message: string, cause?: unknown) {
    super(TaskStalled.code, message, { retryable: true, cause });
  }
}

/**
 * Not a failure: AcquireSlot's fast path found a line with someone in it, or no free slot,
 * so the VM takes its place in the fair queue (the workflow catches this into WaitForSlot).
 */
export class SlotMustQueue extends LifeboatError {
  static readonly code = 'Slot.MustQueue';
  constructor(vmId: string, scope: string) {
    super(SlotMustQueue.code, `VM '${vmId}' found no free slot with an empty line in scope '${scope}': it waits in line`, { retryable: false });
  }
}

/** Every error class, by code: the contract test checks the state machines against it. */
export const errorClasses = {
  [SourceUnavailable.code]: SourceUnavailable,
  [StorageUnavailable.code]: StorageUnavailable,
  [Corrupt.code]: Corrupt,
  [BadTaskInput.code]: BadTaskInput,
  [PolicyNotFound.code]: PolicyNotFound,
  [VerifyFailed.code]: VerifyFailed,
  [CannotUpgrade.code]: CannotUpgrade,
  [TaskStalled.code]: TaskStalled,
  [BadFunctionInput.code]: BadFunctionInput,
  [RunBusy.code]: RunBusy,
  [LocalIoFailed.code]: LocalIoFailed,
  [StackUnavailable.code]: StackUnavailable,
  [VmGone.code]: VmGone,
  [DiscoveryRequestInvalid.code]: DiscoveryRequestInvalid,
  [HostConfigRequestInvalid.code]: HostConfigRequestInvalid,
  [SlotMustQueue.code]: SlotMustQueue,
  [VerifyMustSplit.code]: VerifyMustSplit,
} as const;
