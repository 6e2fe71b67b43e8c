/**
 * The Backup workflow's Verify, for disks of any size. Verify checks a backup in one
 * invocation when its manifests have at most `rangePieces` pieces in all (the usual case: it
 * pays no state more than a Verify always did); a larger backup fails it with
 * `Verify.MustSplit`, caught into Verify by range (functions/backup/verify-ranges.ts):
 * PlanVerifyRanges lists the ranges in the run bucket, VerifyRanges (a Distributed Map reading
 * that list) runs VerifyRange once per range as a child execution, and JoinVerifyRanges sums
 * the children's counts from the Map Run's result files into what Verify answers, for Commit.
 * A Catch, not a Choice, routes the rare large backup, as AcquireSlot's queue does. No payload
 * or history grows with the disk: the list and the results stay in S3.
 */
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';
import { DEFAULT_VERIFY_RANGE_PIECES } from '../../contracts/backup-steps.ts';
import { VerifyMustSplit } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { listMap } from './distributed-map.ts';
import { catchAny, lambdaStep } from './steps.ts';

/** The child executions' label of the VerifyRanges Map (`<state machine>/VerifyRange`). */
export const VERIFY_RANGE_LABEL = 'VerifyRange';

/** Ranges verified at once per backup: each is one invocation HEADing 16 objects at a time. */
const RANGE_CONCURRENCY = 8;

export interface VerifyStepsProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  runBucket: s3.IBucket;
  /** Manifest pieces one invocation checks (default DEFAULT_VERIFY_RANGE_PIECES). */
  rangePieces?: number;
  /** Where any failure goes, with the error at `$.error`. */
  failed: sfn.IChainable;
  /** What follows a verified backup, with Verify's answer at `$.verify`. */
  next: sfn.IChainable;
}

/** The Verify state, its ranged path caught from it; both go on to `next`. */
export function verifySteps(scope: Construct, p: VerifyStepsProps): sfn.TaskStateBase {
  const fn = p.functions;
  const request = sfn.TaskInput.fromObject({ 'job.$': '$', rangePieces: p.rangePieces ?? DEFAULT_VERIFY_RANGE_PIECES });
  const verify = lambdaStep(scope, 'Verify', fn.Verify, { payload: request, resultPath: '$.verify' });
  const plan = lambdaStep(scope, 'PlanVerifyRanges', fn.PlanVerifyRanges, { payload: request, resultPath: '$.verifyRanges' });
  const ranges = listMap(scope, 'VerifyRanges', {
    comment: "The backup's ranges of manifest pieces, one child execution each, read from the list PlanVerifyRanges wrote",
    runBucket: p.runBucket,
    keyPath: '$.verifyRanges.key',
    label: VERIFY_RANGE_LABEL,
    maxConcurrency: RANGE_CONCURRENCY,
    // A failed range is reported by JoinVerifyRanges with its own error (the object, the disk, the range).
    toleratedFailurePercentage: 100,
    resultPath: '$.verifyRangeResults',
  });
  ranges.itemProcessor(lambdaStep(scope, 'VerifyRange', fn.VerifyRange));
  const join = lambdaStep(scope, 'JoinVerifyRanges', fn.JoinVerifyRanges, {
    payload: sfn.TaskInput.fromObject({
      'backupId.$': '$.backupId',
      'vmId.$': '$.vmId',
      'ranges.$': '$.verifyRanges',
      'results.$': '$.verifyRangeResults',
    }),
    resultPath: '$.verify',
  });
  verify.addCatch(plan, { errors: [VerifyMustSplit.code], resultPath: sfn.JsonPath.DISCARD });
  for (const s of [verify, plan, ranges, join]) catchAny(s, p.failed, '$.error');
  verify.next(p.next);
  plan.next(ranges).next(join).next(p.next);
  return verify;
}
