/**
 * The Backup workflow: Plan → per VM (AcquireSlot → Snapshot → Dispatch per disk →
 * ReleaseSnapshot → Verify → Commit → ReleaseSlot) → Summarize. A failure inside a VM's
 * iteration releases what it took and records the failure; the other VMs go on.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { SlotUnavailable, StorageUnavailable } from '../../core/errors.ts';
import type { LambdaFunctionId } from '../../functions/registry.ts';

export interface BackupWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** The mover group's Activity that takes Snapshot, Dispatch and ReleaseSnapshot. */
  activity: sfn.IActivity;
  /** VMs backed up at once in one run. */
  vmConcurrency?: number;
}

export class BackupWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: BackupWorkflowProps) {
    super(scope, id);
    const fn = props.functions;
    const invoke = (name: string, f: LambdaFunctionId, opts: { payload?: sfn.TaskInput; resultPath?: string | null } = {}) =>
      new tasks.LambdaInvoke(this, name, {
        lambdaFunction: fn[f],
        ...(opts.payload ? { payload: opts.payload } : {}),
        payloadResponseOnly: true,
        resultPath: opts.resultPath === null ? sfn.JsonPath.DISCARD : opts.resultPath,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(5)),
      });
    const activityTask = (name: string, task: string, extra: Record<string, unknown>, timeouts: { task: Duration; heartbeat: Duration }, resultPath: string | null | undefined) =>
      new tasks.StepFunctionsInvokeActivity(this, name, {
        activity: props.activity,
        parameters: { task, ...extra },
        taskTimeout: sfn.Timeout.duration(timeouts.task),
        heartbeatTimeout: sfn.Timeout.duration(timeouts.heartbeat),
        resultPath: resultPath === null ? sfn.JsonPath.DISCARD : resultPath,
      });

    const plan = invoke('Plan', 'Plan', {
      payload: sfn.TaskInput.fromObject({ 'policyId.$': '$.policyId', 'runId.$': '$$.Execution.Name' }),
    });

    // --- failure path of one VM: release what was taken, record, go on -----------------
    const releaseSnapshotAfterFailure = activityTask('ReleaseSnapshotAfterFailure', 'releaseSnapshot', { 'job.$': '$' },
      { task: Duration.minutes(10), heartbeat: Duration.minutes(2) }, null);
    const recordFailure = invoke('RecordFailure', 'RecordFailure', { resultPath: '$.outcome' });
    const releaseSlotAfterFailure = invoke('ReleaseSlotAfterFailure', 'ReleaseSlot', { resultPath: null });
    const vmFailed = new sfn.Pass(this, 'VmFailed', {
      parameters: { 'vmId.$': '$.vmId', 'backupId.$': '$.backupId', 'outcome.$': '$.outcome' },
    });
    releaseSnapshotAfterFailure.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
    releaseSnapshotAfterFailure.addCatch(recordFailure, { resultPath: '$.cleanupError' });
    releaseSnapshotAfterFailure.next(recordFailure);
    // Recording the failure must not fail the whole run: retry it (catalog throttling).
    recordFailure.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    recordFailure.next(releaseSlotAfterFailure).next(vmFailed);
    releaseSlotAfterFailure.addCatch(vmFailed, { resultPath: '$.cleanupError' });

    // --- the happy path of one VM -----------------------------------------------------
    const acquireSlot = invoke('AcquireSlot', 'AcquireSlot', { resultPath: '$.slot' });
    acquireSlot.addRetry({ errors: [SlotUnavailable.code], interval: Duration.seconds(2), backoffRate: 1.5, maxDelay: Duration.seconds(60), maxAttempts: 200, jitterStrategy: sfn.JitterType.FULL });
    acquireSlot.addCatch(recordFailure, { resultPath: '$.error' });

    const snapshot = activityTask('Snapshot', 'snapshot', { 'job.$': '$' }, { task: Duration.minutes(15), heartbeat: Duration.minutes(2) }, '$.snapshot');
    snapshot.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });

    const dispatchDisk = activityTask('DispatchDisk', 'dispatch', { 'job.$': '$.job', 'disk.$': '$.disk' },
      { task: Duration.hours(12), heartbeat: Duration.seconds(30) }, undefined); // the disk result is the iteration's output
    dispatchDisk.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    const dispatch = new sfn.Map(this, 'Dispatch', {
      itemsPath: '$.snapshot.disks',
      itemSelector: { 'disk.$': '$$.Map.Item.Value', 'job.$': '$' },
      maxConcurrency: 8,
      resultPath: '$.disks',
    });
    dispatch.itemProcessor(dispatchDisk);

    const releaseSnapshot = activityTask('ReleaseSnapshot', 'releaseSnapshot', { 'job.$': '$' }, { task: Duration.minutes(10), heartbeat: Duration.minutes(2) }, null);
    releaseSnapshot.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(5), maxAttempts: 2 });
    const verify = invoke('Verify', 'Verify', { resultPath: '$.verify' });
    const commit = invoke('Commit', 'Commit', { resultPath: '$.commit' });
    const releaseSlot = invoke('ReleaseSlot', 'ReleaseSlot', { resultPath: null });
    const vmDone = new sfn.Pass(this, 'VmCommitted', {
      parameters: { 'vmId.$': '$.vmId', 'backupId.$': '$.backupId', 'disks.$': '$.disks', 'commit.$': '$.commit' },
    });

    // Before the snapshot is released a failure must release it; after, only the slot.
    snapshot.addCatch(releaseSnapshotAfterFailure, { resultPath: '$.error' });
    dispatch.addCatch(releaseSnapshotAfterFailure, { resultPath: '$.error' });
    for (const s of [releaseSnapshot, verify, commit]) s.addCatch(recordFailure, { resultPath: '$.error' });
    releaseSlot.addCatch(vmDone, { resultPath: '$.cleanupError' });

    const perVm = acquireSlot.next(snapshot).next(dispatch).next(releaseSnapshot).next(verify).next(commit).next(releaseSlot).next(vmDone);
    const backupVms = new sfn.Map(this, 'BackupVms', {
      itemsPath: '$.vms',
      maxConcurrency: props.vmConcurrency ?? 4,
      resultPath: '$.results',
    });
    backupVms.itemProcessor(perVm);

    const summarize = invoke('Summarize', 'Summarize', {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$.runId', 'policyId.$': '$.policyId', 'results.$': '$.results' }),
    });

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat backup: snapshot, dispatch to movers, verify, commit',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(backupVms).next(summarize)),
      timeout: Duration.hours(24),
    });
  }
}
