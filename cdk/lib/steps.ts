/**
 * The two kinds of task every workflow is built from: a Lambda function of the control
 * plane, and an activity task on a mover group (routed by the group id in the state's
 * input, see on-mover-group.ts). One definition of their timeouts and default retries.
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type { Construct } from 'constructs';
import { StorageUnavailable, TaskStalled } from '../../contracts/errors.ts';
import { onMoverGroup } from './on-mover-group.ts';

/** `undefined`: the result replaces the state's input; `null`: the result is discarded. */
type ResultPath = string | null | undefined;
const resultPathProps = (p: ResultPath) => (p === null ? { resultPath: sfn.JsonPath.DISCARD } : p ? { resultPath: p } : {});

/** A Lambda step's own timeout when its function's is shorter: the function's timeout ends it first. */
const LAMBDA_STEP_TIMEOUT = Duration.minutes(5);

/**
 * A Lambda step's timeout: 5 minutes, or the function's own timeout and a little more when
 * that is longer, so the Task never cuts short a function still within its timeout.
 */
function lambdaStepTimeout(fn: lambda.IFunction): Duration {
  const own = (fn as { timeout?: Duration }).timeout?.toSeconds() ?? 0;
  return own + 10 > LAMBDA_STEP_TIMEOUT.toSeconds() ? Duration.seconds(own + 10) : LAMBDA_STEP_TIMEOUT;
}

/** A control-plane Lambda step: payload only, at least a 5-minute timeout (see {@link lambdaStepTimeout}). */
export function lambdaStep(
  scope: Construct,
  name: string,
  fn: lambda.IFunction,
  opts: { payload?: sfn.TaskInput; resultPath?: ResultPath; outputPath?: string } = {},
): tasks.LambdaInvoke {
  return new tasks.LambdaInvoke(scope, name, {
    lambdaFunction: fn,
    ...(opts.payload ? { payload: opts.payload } : {}),
    ...(opts.outputPath ? { outputPath: opts.outputPath } : {}),
    payloadResponseOnly: true,
    ...resultPathProps(opts.resultPath),
    taskTimeout: sfn.Timeout.duration(lambdaStepTimeout(fn)),
  });
}

export interface MoverStepOptions {
  activities: Record<string, sfn.IActivity>;
  /** JSONPath of the mover group id in the state's input. */
  groupPath: string;
  parameters: Record<string, unknown>;
  timeout: Duration;
  /** A mover that stops heartbeating for this long is taken for dead: the task is retried (default 60 s). */
  heartbeat?: Duration;
  resultPath?: ResultPath;
  /** Retry and Catch for each group's task; default: retry a dead mover or unavailable storage 3 times. */
  decorate?: (t: sfn.TaskStateBase) => void;
}

/** An activity task on the mover group the input names: a Choice with one task per group. */
export function moverStep(scope: Construct, name: string, o: MoverStepOptions) {
  return onMoverGroup(scope, name, {
    activities: o.activities,
    groupPath: o.groupPath,
    task: (activity, stateName) => {
      const t = new tasks.StepFunctionsInvokeActivity(scope, stateName, {
        activity,
        parameters: o.parameters,
        taskTimeout: sfn.Timeout.duration(o.timeout),
        heartbeatTimeout: sfn.Timeout.duration(o.heartbeat ?? Duration.seconds(60)),
        ...resultPathProps(o.resultPath),
      });
      (o.decorate ?? retryMoverTask)(t);
      return t;
    },
  });
}

/** The terminal error of a payload over 256 KiB, which `States.ALL` does not match: a Catch must name it. */
export const DATA_LIMIT_EXCEEDED = 'States.DataLimitExceeded';

/**
 * Catches any error of `state` into `handler` with the error at `resultPath`, also a payload
 * over the quota (States.DataLimitExceeded, which `States.ALL` does not match): a VM whose
 * step outgrew 256 KiB still releases its snapshot and slot, and a run its lease.
 */
export function catchAny(state: sfn.TaskStateBase | sfn.Map | sfn.DistributedMap | sfn.Choice, handler: sfn.IChainable, resultPath: string): void {
  const s = state as sfn.TaskStateBase;
  s.addCatch(handler, { errors: [DATA_LIMIT_EXCEEDED], resultPath });
  s.addCatch(handler, { resultPath });
}

/** Retries a step on any error, three times within seconds: catalog records and events, which only a passing fault stops. */
export function retryAnyError(t: sfn.TaskStateBase): void {
  t.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
}

/** The default retry of a mover task: the mover died (heartbeat timeout), storage was unavailable, or the task stalled. */
export function retryMoverTask(t: sfn.TaskStateBase, maxAttempts = 3): void {
  t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code, TaskStalled.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts });
}

/**
 * A Map over `$.disks` running one mover task per disk: each iteration gets `{ disk, <jobKey>: the state's input }`
 * and the task gets `{ task, <jobKey>, disk }`, on the group named at `$.<jobKey>.moverGroup`.
 */
export function moverDiskMap(
  scope: Construct,
  o: {
    mapName: string;
    stepName: string;
    task: string;
    jobKey: string;
    activities: Record<string, sfn.IActivity>;
    resultPath: string;
    concurrency: number;
    timeout: Duration;
  },
): sfn.Map {
  const map = new sfn.Map(scope, o.mapName, {
    itemsPath: '$.disks',
    itemSelector: { 'disk.$': '$$.Map.Item.Value', [`${o.jobKey}.$`]: '$' },
    maxConcurrency: o.concurrency,
    resultPath: o.resultPath,
  });
  map.itemProcessor(
    moverStep(scope, o.stepName, {
      activities: o.activities,
      groupPath: `$.${o.jobKey}.moverGroup`,
      parameters: { task: o.task, [`${o.jobKey}.$`]: `$.${o.jobKey}`, 'disk.$': '$.disk' },
      timeout: o.timeout,
    }),
  );
  return map;
}
