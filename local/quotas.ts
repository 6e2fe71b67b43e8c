/**
 * AWS Step Functions' hard quotas, as the embedded stack enforces them, and the errors AWS
 * gives when they are exceeded. The figures are AWS's (Standard workflows), from
 * https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html
 * ("Maximum input or output size for a task, state, or execution": 256 KiB of data as a
 * UTF-8 encoded string, hard quota; "Maximum execution history size": 25,000 events, hard
 * quota) and the API reference (StartExecution `input`, SendTaskSuccess `output`: "Maximum
 * length of 262144", bytes in UTF-8). The errors are those of
 * https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html
 * (States.DataLimitExceeded: a terminal error States.ALL does not catch) and
 * https://docs.aws.amazon.com/step-functions/latest/dg/bp-history-limit.html (event 25,000
 * is ExecutionFailed unless it is ExecutionSucceeded; its error is States.Runtime).
 *
 * A test lowers them through `EmbeddedStack.start({ quotas })` to reach them cheaply; nothing
 * else (no environment variable) changes them.
 */

/** The limits one embedded stack enforces. */
export interface StepFunctionsQuotas {
  /** Largest state, task or execution input or output, in UTF-8 bytes of its JSON text. */
  readonly payloadBytes: number;
  /** Most events in one execution's history, the ExecutionSucceeded/Failed event included. */
  readonly historyEvents: number;
}

/** AWS's values. */
export const AWS_QUOTAS: StepFunctionsQuotas = Object.freeze({ payloadBytes: 262_144, historyEvents: 25_000 });

/**
 * AWS's quotas with `overrides` applied; rejects unknown keys and values that are not whole
 * numbers of at least 1 (history: at least 3, the smallest execution's history), naming them.
 */
export function resolveQuotas(overrides: Partial<StepFunctionsQuotas> = {}): StepFunctionsQuotas {
  for (const [key, value] of Object.entries(overrides)) {
    if (!Object.hasOwn(AWS_QUOTAS, key)) throw new Error(`unknown Step Functions quota '${key}'; known: ${Object.keys(AWS_QUOTAS).join(', ')}`);
    const min = key === 'historyEvents' ? 3 : 1;
    if (value !== undefined && (!Number.isInteger(value) || (value as number) < min))
      throw new Error(`Step Functions quota ${key} must be a whole number of at least ${min}, got ${String(value)}`);
  }
  return Object.freeze({ ...AWS_QUOTAS, ...Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)) });
}

/** Size of a value as Step Functions counts it: the UTF-8 bytes of its JSON text. */
export function payloadSize(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value ?? null), 'utf8');
}

/**
 * States.DataLimitExceeded. Terminal as in AWS: no `States.ALL` (or `States.TaskFailed`)
 * retrier or catcher matches it; `handledBy` lets a state that names it explicitly in
 * ErrorEquals (before any wildcard) retry or catch it, as the error-handling docs allow.
 */
export class DataLimitExceeded extends Error {
  override readonly name = 'States.DataLimitExceeded';
  /** Read by aws-local-stepfunctions' Retry and Catch matching. */
  isRetryable = false;
  isCatchable = false;

  constructor(message: string) {
    super(message);
  }

  /** Sets whether `state`'s Retry / Catch (as the runner walks them, in order) reach this error by name before a wildcard does. */
  handledBy(state: { Retry?: { ErrorEquals: string[] }[]; Catch?: { ErrorEquals: string[] }[] } | undefined): this {
    const named = (list: { ErrorEquals: string[] }[] | undefined) => {
      for (const r of list ?? []) {
        if (r.ErrorEquals.includes(this.name)) return true;
        if (r.ErrorEquals.some((e) => e === 'States.ALL' || e === 'States.TaskFailed')) return false;
      }
      return false;
    };
    this.isRetryable = named(state?.Retry);
    this.isCatchable = named(state?.Catch);
    return this;
  }
}

/** A state's or task's result over the payload quota: AWS's cause, with the figures added. */
export function resultTooLarge(stateName: string, bytes: number, quotas: StepFunctionsQuotas): DataLimitExceeded {
  return new DataLimitExceeded(
    `The state/task '${stateName}' returned a result with a size exceeding the maximum number of bytes service limit. (${bytes} bytes; the limit is ${quotas.payloadBytes})`,
  );
}

/** A state's effective input (after InputPath and Parameters) over the payload quota. */
export function inputTooLarge(stateName: string, bytes: number, quotas: StepFunctionsQuotas): DataLimitExceeded {
  return new DataLimitExceeded(
    `The state/task '${stateName}' has an input with a size exceeding the maximum number of bytes service limit. (${bytes} bytes; the limit is ${quotas.payloadBytes})`,
  );
}

/** The history quota's failure: never retried or caught, it ends the whole execution. */
export class HistoryLimitExceeded extends Error {
  override readonly name = 'States.Runtime';
  readonly isRetryable = false;
  readonly isCatchable = false;

  constructor(quotas: StepFunctionsQuotas) {
    super(`The execution reached the maximum number of history events (${quotas.historyEvents}).`);
  }
}

/**
 * The API's refusal of an over-long string field (StartExecution `input`, SendTaskSuccess
 * `output`): a ValidationException, worded as AWS words length-constraint failures of a
 * sensitive field (whose value it does not repeat).
 */
export function fieldTooLong(field: string, bytes: number, quotas: StepFunctionsQuotas): Error | undefined {
  if (bytes <= quotas.payloadBytes) return undefined;
  const e = new Error(
    `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must have length less than or equal to ${quotas.payloadBytes}`,
  );
  e.name = 'ValidationException';
  return e;
}
