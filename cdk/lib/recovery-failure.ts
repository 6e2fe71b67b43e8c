/**
 * The failure path every recovery workflow shares: record the failure (RecordRecoveryFailure)
 * and fail the execution with the caught error and cause (`$.error`).
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type { Construct } from 'constructs';
import { retryAnyError } from './steps.ts';

export function recordFailureThenFail(
  scope: Construct,
  fn: lambda.IFunction,
  kind: 'DEEPVERIFY' | 'REPLICATION' | 'FAILOVER' | 'FAILBACK' | 'PRUNE' | 'GC',
): sfn.TaskStateBase {
  const record = new tasks.LambdaInvoke(scope, 'RecordFailure', {
    lambdaFunction: fn,
    payload: sfn.TaskInput.fromObject({ kind, 'id.$': '$$.Execution.Name', 'error.$': '$.error' }),
    payloadResponseOnly: true,
    resultPath: sfn.JsonPath.DISCARD,
    taskTimeout: sfn.Timeout.duration(Duration.minutes(1)),
  });
  retryAnyError(record);
  record.next(new sfn.Fail(scope, 'Failed', { errorPath: '$.error.Error', causePath: '$.error.Cause' }));
  return record;
}
