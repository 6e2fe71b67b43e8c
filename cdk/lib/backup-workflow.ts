/**
 * The Backup workflow: AcquireRunLease (one run per policy) → Plan → BackupVms, one child
 * execution per VM (AcquireSlot [→ WaitForSlot when it must queue] → Snapshot → PlanDispatch → Dispatch per disk or disk
 * segment → JoinSegments → ReleaseSnapshot → Verify [→ by range past one range: verify-steps.ts] → Commit → ReleaseSlot) →
 * ReleaseRunLease → Summarize → ReplicationDue? → StartReplication. Snapshot, Dispatch and
 * ReleaseSnapshot run on the mover group that serves the VM's host. A failure inside a
 * VM's iteration releases what it took and records the failure; the other VMs go on.
 * When the policy replicates to a DR repository and the run committed a backup,
 * StartReplication starts ReplicatePolicy for the run (fire-and-forget: the run's result
 * does not wait for the WAN copy; the execution name derives from the run, so a retried
 * start does not start a second copy), then ReportReplication publishes whether it started
 * and the DR recovery point's age (a failing report never fails the run).
 *
 * No payload and no history grows with the number of VMs. Plan writes the run's VM jobs
 * under `runs/` in the stack's bucket, one JSON object per host, and the hosts' list
 * beside them. BackupHosts, a Distributed Map, reads the hosts' list (ItemReader) and runs
 * one child Standard execution per host; in it BackupVms, a Distributed Map, reads that
 * host's jobs and runs each VM's steps as a child Standard execution whose history holds
 * that VM's steps only, at most the host's backup slots at once (MaxConcurrencyPath), so
 * admission is by host and each host's line is served in order. The children's outputs go
 * to S3 (ResultWriter), not into the parents, and Summarize reads the outcomes from the
 * catalog. The run's and each host's history hold a fixed number of events (a Map Run's),
 * and the console links the run to its Map Run, that to each host's execution, and on to
 * each VM's. Chosen over an inline Map of
 * `states:startExecution.sync:2`: that Map writes every VM's iteration (about 8 events)
 * into the parent's history (25,000 events: about 3,000 VMs) and collects the children's
 * outputs into one 256 KiB payload, and it pays for two executions per VM.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { SlotMustQueue, StorageUnavailable, TaskStalled } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { acknowledgeListMap, listMap, useResultWriterV2 } from './distributed-map.ts';
import { catchAny, lambdaStep, moverStep, retryAnyError } from './steps.ts';
import { VERIFY_RANGE_LABEL, verifySteps } from './verify-steps.ts';

export interface BackupWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Activities of the mover groups that take backups, by group id: a VM's work goes to the group serving its host. */
  activities: Record<string, sfn.IActivity>;
  /** The stack's own bucket: Plan writes each run's VM list under `runs/`, the BackupVms Map reads it and writes its children's results there. */
  runBucket: s3.IBucket;
  /** VMs backed up at once in one run (default 8; the hosts' slot limits still apply). */
  vmConcurrency?: number;
  /** Disks (or disk segments) transferred at once per VM. */
  dispatchConcurrency?: number;
  /** Manifest pieces one Verify invocation checks; a backup with more is verified by range (default 64). */
  verifyRangePieces?: number;
  /** The ReplicatePolicy state machine, started after a run that committed backups of a policy with a DR repository. */
  replicatePolicy?: sfn.IStateMachine;
}

/** How long one wait in the slot queue lasts before the VM queues again (in its place, with a new token). */
export const SLOT_WAIT = Duration.minutes(5);
/** Waits before a VM gives up on a slot (Slot queue: 12.5 hours at most). */
const SLOT_WAIT_ROUNDS = 150;

/** The optimized integration's error (`StepFunctions.<StartExecution error code>`) when the name is taken by a closed execution or one with another input (a retried start). */
export const EXECUTION_ALREADY_EXISTS = 'StepFunctions.ExecutionAlreadyExists';

/**
 * Summarize's result is the run's output; with a ReplicatePolicy state machine, the
 * replication of the run's backups is started first when due, and its execution ARN is
 * added to the output (`replication`).
 */
function afterSummarize(scope: Construct, replicatePolicy: sfn.IStateMachine | undefined, report: lambda.IFunction): sfn.IChainable | undefined {
  if (!replicatePolicy) return undefined;
  const done = new sfn.Pass(scope, 'RunSummarized', { outputPath: '$.summary' });
  // Whether replication started (ReplicationStartFailed) and the DR recovery point's age, as metrics; never fails the run.
  const reported = lambdaStep(scope, 'ReportReplication', report, {
    payload: sfn.TaskInput.fromObject({ 'policyId.$': '$.policyId', 'started.$': '$.summary.replication.started' }),
    resultPath: null,
  });
  reported.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 2 });
  reported.addCatch(done, { resultPath: sfn.JsonPath.DISCARD });
  reported.next(done);
  const start = new tasks.StepFunctionsStartExecution(scope, 'StartReplication', {
    comment: "Copy the run's new backups to the policy's DR repository (ReplicatePolicy); not awaited",
    stateMachine: replicatePolicy,
    integrationPattern: sfn.IntegrationPattern.REQUEST_RESPONSE,
    // One replication per run: a start retried (or the state re-entered) finds the name taken.
    name: sfn.JsonPath.format('replicate-{}', sfn.JsonPath.hash(sfn.JsonPath.executionName, 'SHA-1')),
    input: sfn.TaskInput.fromObject({ policyId: sfn.JsonPath.stringAt('$.policyId'), runId: sfn.JsonPath.stringAt('$.runId') }),
    associateWithParent: true,
    resultSelector: { 'executionArn.$': '$.ExecutionArn', started: true },
    resultPath: '$.summary.replication',
    taskTimeout: sfn.Timeout.duration(Duration.minutes(1)),
  });
  start.addRetry({ errors: [EXECUTION_ALREADY_EXISTS], maxAttempts: 0 });
  retryAnyError(start);
  start.addCatch(
    new sfn.Pass(scope, 'ReplicationAlreadyStarted', { parameters: { started: true, alreadyStarted: true }, resultPath: '$.summary.replication' }).next(
      reported,
    ),
    { errors: [EXECUTION_ALREADY_EXISTS], resultPath: '$.replicationError' },
  );
  // The backups are committed whatever happens here: the run reports that replication did not start instead of failing.
  start.addCatch(
    new sfn.Pass(scope, 'ReplicationNotStarted', { parameters: { started: false, 'error.$': '$.replicationError' }, resultPath: '$.summary.replication' }).next(
      reported,
    ),
    { resultPath: '$.replicationError' },
  );
  return new sfn.Choice(scope, 'ReplicationDue', { comment: 'The policy replicates to a DR repository and the run committed a backup' })
    .when(sfn.Condition.and(sfn.Condition.isString('$.replicateTo'), sfn.Condition.numberGreaterThan('$.summary.committed', 0)), start.next(reported))
    .otherwise(done);
}

export class BackupWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: BackupWorkflowProps) {
    super(scope, id);
    useResultWriterV2(this);
    const fn = props.functions;
    const invoke = (name: string, f: LambdaFunctionId, opts: { payload?: sfn.TaskInput; resultPath?: string | null; outputPath?: string } = {}) =>
      lambdaStep(this, name, fn[f], opts);
    /** An activity task on the VM's mover group: a Choice on the group, one task per group (see on-mover-group.ts). */
    const onGroup = (
      name: string,
      groupPath: string,
      task: string,
      extra: Record<string, unknown>,
      timeouts: { task: Duration; heartbeat: Duration },
      resultPath: string | null | undefined,
      decorate: (t: sfn.TaskStateBase) => void,
    ) =>
      moverStep(this, name, {
        activities: props.activities,
        groupPath,
        parameters: { task, ...extra },
        timeout: timeouts.task,
        heartbeat: timeouts.heartbeat,
        resultPath,
        decorate,
      });
    const retryOnMover = (maxAttempts: number) => (t: sfn.TaskStateBase) =>
      t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code, TaskStalled.code], interval: Duration.seconds(2), backoffRate: 2, maxAttempts });

    // One run per policy: a second is refused (Run.Busy, not caught) naming the execution that holds the lease.
    const runLease = (extra: Record<string, unknown> = {}) =>
      sfn.TaskInput.fromObject({ 'policyId.$': '$.policyId', 'executionArn.$': '$$.Execution.Id', ...extra });
    const acquireRunLease = invoke('AcquireRunLease', 'AcquireRunLease', { payload: runLease(), resultPath: null });
    const releaseRunLease = invoke('ReleaseRunLease', 'ReleaseRunLease', { payload: runLease(), resultPath: null });
    // The run's failure path: the lease goes back, then the function fails the execution with the run's own error.
    const releaseRunLeaseAfterFailure = invoke('ReleaseRunLeaseAfterFailure', 'ReleaseRunLease', {
      payload: runLease({ 'error.$': '$.runError' }),
      resultPath: null,
    });
    for (const s of [releaseRunLease, releaseRunLeaseAfterFailure])
      s.addRetry({
        errors: ['Lambda.ServiceException', 'Lambda.TooManyRequestsException', 'Lambda.SdkClientException'],
        interval: Duration.seconds(2),
        backoffRate: 2,
        maxAttempts: 3,
      });

    const plan = invoke('Plan', 'Plan', {
      payload: sfn.TaskInput.fromObject({ 'request.$': '$', 'runId.$': '$$.Execution.Name', vmConcurrency: props.vmConcurrency ?? 8 }),
    });

    // --- failure path of one VM: release what was taken, record, go on -----------------
    const recordFailure = invoke('RecordFailure', 'RecordFailure', { resultPath: '$.outcome' });
    const releaseSnapshotAfterFailure = onGroup(
      'ReleaseSnapshotAfterFailure',
      '$.moverGroup',
      'releaseSnapshot',
      { 'job.$': '$' },
      { task: Duration.minutes(10), heartbeat: Duration.minutes(2) },
      null,
      (t) => {
        t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code, TaskStalled.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
        catchAny(t, recordFailure, '$.cleanupError');
      },
    );
    const releaseSlotAfterFailure = invoke('ReleaseSlotAfterFailure', 'ReleaseSlot', { resultPath: null });
    const vmFailed = new sfn.Pass(this, 'VmFailed', {
      parameters: { 'vmId.$': '$.vmId', 'backupId.$': '$.backupId', 'outcome.$': '$.outcome' },
    });
    releaseSnapshotAfterFailure.next(recordFailure);
    // Recording the failure must not fail the whole run: retry it (catalog throttling).
    retryAnyError(recordFailure);
    recordFailure.next(releaseSlotAfterFailure).next(vmFailed);
    catchAny(releaseSlotAfterFailure, vmFailed, '$.cleanupError');

    // --- the happy path of one VM -----------------------------------------------------
    // The slots: AcquireSlot's fast path takes a free slot when nobody is in line and returns it (no token, no
    // callback); otherwise it fails with Slot.MustQueue and the VM waits in the fair slot queue
    // (functions/backup/slot-queue.ts) on a task token until AcquireSlot or a ReleaseSlot sends it its slots. A wait
    // that times out queues again in its place (a slot freed by its lease running out is announced by nobody); a dead
    // waiter's token is skipped by whoever serves the line. A Catch, not a Choice: the fast path pays one transition.
    const acquireSlot = invoke('AcquireSlot', 'AcquireSlot', { payload: sfn.TaskInput.fromObject({ 'job.$': '$' }), resultPath: '$.slot' });
    const waitForSlot = new tasks.LambdaInvoke(this, 'WaitForSlot', {
      comment: "Wait in line for a backup slot of the VM's host (and datastores); answered with SendTaskSuccess",
      lambdaFunction: fn.AcquireSlot,
      integrationPattern: sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
      payload: sfn.TaskInput.fromObject({ 'job.$': '$', taskToken: sfn.JsonPath.taskToken }),
      resultPath: '$.slot',
      taskTimeout: sfn.Timeout.duration(SLOT_WAIT),
    });
    waitForSlot.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(1), backoffRate: 1, maxAttempts: SLOT_WAIT_ROUNDS });
    catchAny(waitForSlot, recordFailure, '$.error');
    acquireSlot.addCatch(waitForSlot, { errors: [SlotMustQueue.code], resultPath: sfn.JsonPath.DISCARD });
    catchAny(acquireSlot, recordFailure, '$.error');

    // Before the snapshot is released a failure must release it; after, only the slot.
    const snapshot = onGroup(
      'Snapshot',
      '$.moverGroup',
      'snapshot',
      { 'job.$': '$' },
      { task: Duration.minutes(15), heartbeat: Duration.minutes(2) },
      '$.snapshot',
      (t) => {
        retryOnMover(2)(t);
        catchAny(t, releaseSnapshotAfterFailure, '$.error');
      },
    );

    // Dispatch: one task per disk, or per segment of a large disk, spread over the group's movers.
    const planDispatch = invoke('PlanDispatch', 'PlanDispatch', { payload: sfn.TaskInput.fromObject({ 'job.$': '$' }), resultPath: '$.work' });
    const dispatchDisk = onGroup(
      'DispatchDisk',
      '$.job.moverGroup',
      'dispatch',
      { 'job.$': '$.job', 'disk.$': '$.disk', 'segment.$': '$.segment' },
      { task: Duration.hours(12), heartbeat: Duration.seconds(30) },
      undefined,
      retryOnMover(3),
    ); // the disk result is the iteration's output
    const dispatch = new sfn.Map(this, 'Dispatch', {
      itemsPath: '$.work',
      itemSelector: { 'disk.$': '$$.Map.Item.Value.disk', 'segment.$': '$$.Map.Item.Value.segment', 'job.$': '$' },
      maxConcurrency: props.dispatchConcurrency ?? 8,
      resultPath: '$.transfers',
    });
    dispatch.itemProcessor(dispatchDisk);
    const joinSegments = invoke('JoinSegments', 'JoinSegments', {
      payload: sfn.TaskInput.fromObject({ 'job.$': '$', 'transfers.$': '$.transfers' }),
      resultPath: '$.disks',
    });

    const releaseSnapshot = onGroup(
      'ReleaseSnapshot',
      '$.moverGroup',
      'releaseSnapshot',
      { 'job.$': '$' },
      { task: Duration.minutes(10), heartbeat: Duration.minutes(2) },
      null,
      (t) => {
        t.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(5), maxAttempts: 2 });
        catchAny(t, recordFailure, '$.error');
      },
    );
    const commit = invoke('Commit', 'Commit', { resultPath: '$.commit' });
    const verify = verifySteps(this, {
      functions: fn,
      runBucket: props.runBucket,
      ...(props.verifyRangePieces ? { rangePieces: props.verifyRangePieces } : {}),
      failed: recordFailure,
      next: commit,
    });
    // The VM's last state: its output is Commit's answer (the ResultWriter's file holds it; nobody reads it back), so the
    // happy path pays no shaping state. A ReleaseSlot that fails still ends the committed VM, through VmCommitted.
    const releaseSlot = invoke('ReleaseSlot', 'ReleaseSlot', { resultPath: null, outputPath: '$.commit' });
    const vmDone = new sfn.Pass(this, 'VmCommitted', {
      comment: 'The backup is committed but ReleaseSlot failed: its slot comes back when its lease runs out',
      parameters: { 'backupId.$': '$.commit.backupId', 'committedAt.$': '$.commit.committedAt', 'cleanupError.$': '$.cleanupError' },
    });

    for (const s of [planDispatch, dispatch, joinSegments]) catchAny(s, releaseSnapshotAfterFailure, '$.error');
    catchAny(commit, recordFailure, '$.error');
    catchAny(releaseSlot, vmDone, '$.cleanupError');

    waitForSlot.next(snapshot);
    const perVm = acquireSlot.next(snapshot).next(planDispatch).next(dispatch).next(joinSegments).next(releaseSnapshot).next(verify);
    commit.next(releaseSlot);
    // Admission by host: one child execution per host (BackupHosts), which runs its VMs' children (BackupVms) at most
    // its slots at once, so a host's slot that frees is taken by that host's next VM, in line order, and no VM waits in
    // a line whose host is busy while another host's slots idle. Each VM still has its own child execution; a VM's
    // failure is recorded by its own failure path, so every child succeeds unless the VM's steps broke a quota: those
    // are counted, not fatal to the run.
    const backupVms = listMap(this, 'BackupVms', {
      comment: "The host's VMs, one child execution each (its own history), at most the host's backup slots at once",
      runBucket: props.runBucket,
      keyPath: '$.vmList.key',
      label: 'BackupVm',
      maxConcurrencyPath: '$.slots',
      toleratedFailurePercentage: 100,
      resultPath: null,
    });
    backupVms.itemProcessor(perVm);
    const backupHosts = listMap(this, 'BackupHosts', {
      comment: "One child execution per host of the run, as many hosts at once as fit in the run's VM concurrency (Plan)",
      runBucket: props.runBucket,
      keyPath: '$.hostList.key',
      label: 'BackupHost',
      maxConcurrencyPath: '$.hostList.concurrency',
      toleratedFailurePercentage: 100,
      resultPath: null,
    });
    backupHosts.itemProcessor(backupVms);
    // The lease goes back on every failure, also a payload over the quota (catchAny).
    for (const s of [plan, backupHosts]) catchAny(s, releaseRunLeaseAfterFailure, '$.runError');

    const then = afterSummarize(this, props.replicatePolicy, props.functions.ReportReplication);
    const summarize = invoke('Summarize', 'Summarize', {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$.runId', 'policyId.$': '$.policyId' }),
      ...(then ? { resultPath: '$.summary' } : {}),
    });

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat backup: snapshot, dispatch to movers, verify, commit; then replication to the DR repository, if any',
      definitionBody: sfn.DefinitionBody.fromChainable(
        then
          ? acquireRunLease.next(plan).next(backupHosts).next(releaseRunLease).next(summarize).next(then)
          : acquireRunLease.next(plan).next(backupHosts).next(releaseRunLease).next(summarize),
      ),
      timeout: Duration.hours(24),
    });
    acknowledgeListMap(this.stateMachine, props.runBucket, 'BackupHost', 'BackupVm', VERIFY_RANGE_LABEL);
  }
}
