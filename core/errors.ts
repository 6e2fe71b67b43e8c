/**
 * The error family shared by the control plane and the movers.
 *
 * An error's `name` is a stable code: Step Functions Retry/Catch blocks match it
 * (`ErrorEquals`), so renaming one is a breaking change. `retryable` says whether a
 * workflow may try the same work again.
 */
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

/** The backup names a policy the catalog does not hold. */
export class PolicyNotFound extends LifeboatError {
  static readonly code = 'Catalog.PolicyNotFound';
  constructor(policyId: string) {
    super(PolicyNotFound.code, `policy '${policyId}' does not exist in the catalog; create it first or check the policyId in the execution input`, { retryable: false });
  }
}

/** Every concurrency slot of the host is taken: retried with backoff by the workflow. */
export class SlotUnavailable extends LifeboatError {
  static readonly code = 'Slot.Unavailable';
  /** `scope` is `host:<id>` or `datastore:<host>/<id>` (see functions/slots.ts). */
  constructor(scope: string, limit: number) {
    super(SlotUnavailable.code, `all ${limit} backup slots of ${scope.replace(':', ' ')} are in use`, { retryable: true });
  }
}

/** Verify found a chunk missing or not matching its manifest. */
export class VerifyFailed extends LifeboatError {
  static readonly code = 'Verify.Failed';
  constructor(message: string) {
    super(VerifyFailed.code, message, { retryable: false });
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

/** Every error class, by code: the contract test checks the state machines against it. */
export const errorClasses = {
  [SourceUnavailable.code]: SourceUnavailable,
  [StorageUnavailable.code]: StorageUnavailable,
  [Corrupt.code]: Corrupt,
  [BadTaskInput.code]: BadTaskInput,
  [PolicyNotFound.code]: PolicyNotFound,
  [SlotUnavailable.code]: SlotUnavailable,
  [VerifyFailed.code]: VerifyFailed,
  [CannotUpgrade.code]: CannotUpgrade,
  [BadFunctionInput.code]: BadFunctionInput,
  [VmGone.code]: VmGone,
  [DiscoveryRequestInvalid.code]: DiscoveryRequestInvalid,
} as const;
