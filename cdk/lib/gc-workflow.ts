/**
 * The Garbage collection workflow: first ExtendLocks (a no-op on a bucket without Object
 * Lock) locks every object a retained backup references until that backup's expiry
 * (functions/gc/extend-locks.ts), called again while it says `more`; then CollectGarbage marks every chunk object and pack the
 * repository's manifests reference and sweeps the rest older than the grace period (packs
 * taken out of the index first), never touching objects under Object Lock retention
 * (functions/gc/gc.ts), then merges small index objects into few (repository/maintenance/consolidate.ts).
 * While backups run the sweep is deferred: the workflow waits and
 * collects again. One collection of a repository runs at a time (a lease in the catalog):
 * another waits on `Gc.Busy`. A failed collection's lease is given back (ReleaseGcLease, for
 * a function killed before it could). A sweep that raced a backup into needing a deleted
 * chunk object or pack fails the execution, naming it.
 *
 * Input: `{ bucket, endpoint?, graceHours?, objectLockDays?, dryRun?, deferSeconds? }`.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import { GC_DEFER_MAX_SECONDS, GC_INVOCATION_MS } from '../../core/gc-timing.ts';
import { GcBusy } from '../../contracts/recovery-errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { lambdaStep } from './steps.ts';

export interface GcWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** How long a sweep deferred by running backups waits before collecting again (default 120 s). */
  deferSeconds?: number;
}

export class GcWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: GcWorkflowProps) {
    super(scope, id);
    // Each invocation's GC lease covers the longest wait before the next (core/gc-timing.ts).
    if (props.deferSeconds !== undefined && !(Number.isInteger(props.deferSeconds) && props.deferSeconds >= 1 && props.deferSeconds <= GC_DEFER_MAX_SECONDS)) {
      throw new RangeError(
        `GcWorkflow deferSeconds must be a whole number of seconds from 1 to ${GC_DEFER_MAX_SECONDS} (the GC lease covers at most an hour's wait), got ${props.deferSeconds}`,
      );
    }
    const start = new sfn.Pass(this, 'Start', { parameters: { 'request.$': '$' } });
    // Locks first: what retained backups reference is locked before anything is swept, and GC reads the retain-until it set.
    const extend = new tasks.LambdaInvoke(this, 'ExtendLocks', {
      lambdaFunction: props.functions.ExtendLocks,
      payload: sfn.TaskInput.fromObject({ 'gcId.$': '$$.Execution.Name', 'request.$': '$.request' }),
      payloadResponseOnly: true,
      resultPath: '$.locks',
      taskTimeout: sfn.Timeout.duration(Duration.millis(GC_INVOCATION_MS)),
    });
    extend.addRetry({
      errors: [StorageUnavailable.code, 'Lambda.TooManyRequestsException', 'Lambda.ServiceException'],
      interval: Duration.seconds(10),
      backoffRate: 2,
      maxAttempts: 3,
    });
    const collect = new tasks.LambdaInvoke(this, 'CollectGarbage', {
      lambdaFunction: props.functions.CollectGarbage,
      payload: sfn.TaskInput.fromObject({ 'gcId.$': '$$.Execution.Name', 'request.$': '$.request' }),
      payloadResponseOnly: true,
      resultPath: '$.report',
      // Past the function's own 15 min: a function killed at its timeout then fails the task
      // as a Lambda error (its lease given back below), not as States.Timeout.
      taskTimeout: sfn.Timeout.duration(Duration.millis(GC_INVOCATION_MS)),
    });
    collect.addRetry({
      errors: [StorageUnavailable.code, 'Lambda.TooManyRequestsException', 'Lambda.ServiceException'],
      interval: Duration.seconds(10),
      backoffRate: 2,
      maxAttempts: 3,
    });
    // Another collection of this repository holds its lease: wait for it (5 min, growing to ~4 h in all), then fail naming it.
    collect.addRetry({ errors: [GcBusy.code], interval: Duration.minutes(5), backoffRate: 1.5, maxAttempts: 8 });
    // A failed collection gives the lease back itself, unless it was killed (its timeout,
    // out of memory): ReleaseGcLease then does. Not after States.Timeout, where the function
    // may still be running: its lease then runs out by itself (gc-lease.ts).
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'GC');
    const release = lambdaStep(this, 'ReleaseGcLease', props.functions.ReleaseGcLease, {
      payload: sfn.TaskInput.fromObject({ 'gcId.$': '$$.Execution.Name', 'request.$': '$.request' }),
      resultPath: null,
    });
    release.addRetry({
      errors: ['Lambda.TooManyRequestsException', 'Lambda.ServiceException', 'Lambda.Unknown'],
      interval: Duration.seconds(2),
      backoffRate: 2,
      maxAttempts: 3,
    });
    release.addCatch(failed, { resultPath: '$.releaseError' });
    release.next(failed);
    collect.addCatch(failed, { errors: ['States.Timeout'], resultPath: '$.error' });
    // Locks that cannot be extended fail the collection before it takes its lease: the workflow's failure names why.
    extend.addCatch(failed, { resultPath: '$.error' });
    const lockedAll = new sfn.Choice(this, 'LocksExtended').when(sfn.Condition.booleanEquals('$.locks.more', true), extend).otherwise(collect);
    extend.next(lockedAll);
    collect.addCatch(release, { resultPath: '$.error' });
    // Nothing is deleted while backups run: a deferred sweep waits, then collects again from a fresh mark.
    const wait = new sfn.Wait(this, 'WaitForBackups', {
      time: sfn.WaitTime.duration(props.deferSeconds ? Duration.seconds(props.deferSeconds) : Duration.minutes(2)),
    });
    wait.next(collect);
    const waitAsAsked = new sfn.Wait(this, 'WaitForBackupsAsAsked', { time: sfn.WaitTime.secondsPath('$.request.deferSeconds') });
    waitAsAsked.next(collect);
    const raced = new sfn.Fail(this, 'SweepRacedABackup', {
      error: 'Gc.LateReferences',
      cause: 'a manifest written during the sweep references a chunk object or pack the sweep deleted; the GC record lists them: back those VMs up again',
    });
    const check = new sfn.Choice(this, 'Outcome')
      .when(sfn.Condition.and(sfn.Condition.isPresent('$.report.deferred.backups'), sfn.Condition.isPresent('$.request.deferSeconds')), waitAsAsked)
      .when(sfn.Condition.isPresent('$.report.deferred.backups'), wait)
      .when(sfn.Condition.isPresent('$.report.lateReferences[0]'), raced)
      .otherwise(new sfn.Succeed(this, 'Collected', { outputPath: '$.report' }));
    collect.next(check);
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat garbage collection: mark chunk objects and packs referenced by any manifest, sweep the rest past the grace period, skip Object Lock',
      // A dry run changes nothing, locks included.
      definitionBody: sfn.DefinitionBody.fromChainable(
        start.next(
          new sfn.Choice(this, 'DryRun')
            .when(sfn.Condition.and(sfn.Condition.isPresent('$.request.dryRun'), sfn.Condition.booleanEquals('$.request.dryRun', true)), collect)
            .otherwise(extend),
        ),
      ),
      timeout: Duration.hours(12),
    });
  }
}
