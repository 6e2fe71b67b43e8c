/**
 * Replication to a DR site, and failover to its warm standby replica.
 *
 * Replicate: PlanReplicate → AcquireReplicaLease (one replication or failover of a VM into
 * a DR repository at a time) → ReplicateDisks (Map: a DR-site mover copies the chunks the
 * DR repository lacks, then the manifest) → VerifyReplica (every chunk is there, checked
 * through the DR repository's endpoint) → RecordReplication → with a `replicaDir`,
 * UpdateStandby (Map: the replica's raw disks get the changed chunks only) →
 * StandbyVmConfig → ReleaseReplicaLease (also on every failure path; a lease of a dead
 * execution runs out). Input: `{ vmId, backupId?, moverGroup?, targetBucket?, replicaDir? }`.
 *
 * ReplicatePolicy: the same for every VM of a policy whose newest backup the DR site lacks
 * (with a `runId`, only VMs whose newest backup that run made: what a Backup run starts),
 * one child execution per VM (a Distributed Map over the jobs its plan wrote to S3), then
 * ReportReplication: the DR recovery point's age, as a metric and in the output.
 * The mover group and standby folder default to the DR repository's configuration.
 *
 * Failover: PlanFailover (newest committed backup complete at the DR site) →
 * AcquireReplicaLease → UpdateStandby → StandbyVmConfig → ReleaseReplicaLease → RecordFailover, whose output is the replica's disks,
 * its VM description and its recovery point. Input: `{ vmId, moverGroup?, replicaDir?, targetBucket? }`.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import { ReplicaBusy } from '../../contracts/recovery-errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep, retryMoverTask } from './steps.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { acknowledgeListMap, listMap, useResultWriterV2 } from './distributed-map.ts';

export interface ReplicationWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  activities: Record<string, sfn.IActivity>;
}

export function invoke(scope: Construct, name: string, fn: lambda.IFunction, opts: { payload?: sfn.TaskInput; resultPath?: string | null } = {}) {
  const t = lambdaStep(scope, name, fn, opts);
  t.addRetry({
    errors: ['Lambda.TooManyRequestsException', 'Lambda.ServiceException', StorageUnavailable.code],
    interval: Duration.seconds(2),
    backoffRate: 2,
    maxAttempts: 3,
  });
  return t;
}

export function moverTask(
  scope: Construct,
  activities: Record<string, sfn.IActivity>,
  name: string,
  groupPath: string,
  parameters: Record<string, unknown>,
  opts: { hours: number; resultPath?: string; catchTo?: sfn.IChainable },
) {
  return moverStep(scope, name, {
    activities,
    groupPath,
    parameters,
    timeout: Duration.hours(opts.hours),
    resultPath: opts.resultPath,
    decorate: (t) => {
      retryMoverTask(t);
      if (opts.catchTo) t.addCatch(opts.catchTo, { resultPath: '$.error' });
    },
  });
}

/**
 * AcquireReplicaLease: the VM's replica in the DR repository is this execution's until
 * released (one replication or failover at a time writes a standby replica); while another
 * holds it, `Replication.Busy` is retried with backoff for up to about a day.
 */
function acquireLease(scope: Construct, props: ReplicationWorkflowProps, onFailure: sfn.IChainable): sfn.TaskStateBase {
  const acquire = invoke(scope, 'AcquireReplicaLease', props.functions.AcquireReplicaLease);
  acquire.addRetry({
    errors: [ReplicaBusy.code],
    interval: Duration.seconds(5),
    backoffRate: 1.5,
    maxDelay: Duration.minutes(10),
    maxAttempts: 160,
    jitterStrategy: sfn.JitterType.FULL,
  });
  acquire.addCatch(onFailure, { resultPath: '$.error' });
  return acquire;
}

/** A failure path: give the lease back (if held), then `then` (record and fail, or fail the iteration). */
function releaseAfterFailure(scope: Construct, props: ReplicationWorkflowProps, then: sfn.IChainable): sfn.IChainable {
  const release = invoke(scope, 'ReleaseReplicaLeaseAfterFailure', props.functions.ReleaseReplicaLease, { resultPath: null });
  release.addCatch(then, { resultPath: '$.releaseError' }); // the lease then runs out by itself
  return release.next(then);
}

/** UpdateStandby (Map over `$.disks`) → StandbyVmConfig: the replica equals the job's backup. */
function standbyChain(scope: Construct, activities: Record<string, sfn.IActivity>, onFailure?: sfn.IChainable): sfn.Chain {
  const update = new sfn.Map(scope, 'UpdateStandby', {
    itemsPath: '$.disks',
    itemSelector: { 'disk.$': '$$.Map.Item.Value', 'replicate.$': '$' },
    maxConcurrency: 4,
    resultPath: '$.standby',
  });
  update.itemProcessor(
    moverTask(
      scope,
      activities,
      'UpdateStandbyDisk',
      '$.replicate.moverGroup',
      { task: 'updateStandbyDisk', 'replicate.$': '$.replicate', 'disk.$': '$.disk' },
      { hours: 12 },
    ),
  );
  if (onFailure) update.addCatch(onFailure, { resultPath: '$.error' });
  const config = moverTask(
    scope,
    activities,
    'StandbyVmConfig',
    '$.moverGroup',
    { task: 'standbyVmConfig', 'replicate.$': '$', 'disks.$': '$.standby' },
    { hours: 1, resultPath: '$.vmConfig', ...(onFailure ? { catchTo: onFailure } : {}) },
  );
  return sfn.Chain.start(update).next(config);
}

/**
 * One backup's replication, from its ReplicateJob: AcquireReplicaLease → ReplicateDisks →
 * VerifyReplica → RecordReplication → the standby, if any → ReleaseReplicaLease. Every
 * failure gives the lease back, then goes to `onFailure`.
 */
function replicateJobChain(scope: Construct, props: ReplicationWorkflowProps, onFailure: sfn.IChainable): sfn.Chain {
  const failed = releaseAfterFailure(scope, props, onFailure);
  const acquire = acquireLease(scope, props, failed);
  const copy = new sfn.Map(scope, 'ReplicateDisks', {
    itemsPath: '$.disks',
    itemSelector: { 'disk.$': '$$.Map.Item.Value', 'index.$': '$$.Map.Item.Index', 'replicate.$': '$' },
    maxConcurrency: 4,
    resultPath: '$.replicated',
  });
  copy.itemProcessor(
    moverTask(
      scope,
      props.activities,
      'ReplicateDisk',
      '$.replicate.moverGroup',
      { task: 'replicateDisk', 'replicate.$': '$.replicate', 'disk.$': '$.disk', 'index.$': '$.index' },
      { hours: 12 },
    ),
  );
  copy.addCatch(failed, { resultPath: '$.error' });
  // The copy is checked where it landed (the DR repository's endpoint) before the catalog vouches for it.
  const verify = invoke(scope, 'VerifyReplica', props.functions.VerifyReplica, { resultPath: '$.verified' });
  verify.addCatch(failed, { resultPath: '$.error' });
  const record = invoke(scope, 'RecordReplication', props.functions.RecordReplication, { resultPath: '$.summary' });
  record.addCatch(failed, { resultPath: '$.error' });
  const withStandby = standbyChain(scope, props.activities, failed).next(
    new sfn.Pass(scope, 'ReplicatedWithStandby', {
      parameters: { 'replication.$': '$.summary', 'verified.$': '$.verified', 'standby.$': '$.standby', 'vmConfig.$': '$.vmConfig' },
      resultPath: '$.result',
    }),
  );
  // A libvirt VM whose DR repository keeps replica VMs: the replica is a VM, brought to the backup as a new restore point.
  const withReplicaVm = sfn.Chain.start(
    moverTask(
      scope,
      props.activities,
      'UpdateReplicaVm',
      '$.moverGroup',
      { task: 'updateReplicaVm', 'replicate.$': '$' },
      { hours: 12, resultPath: '$.replicaVm', catchTo: failed },
    ),
  ).next(
    new sfn.Pass(scope, 'ReplicatedWithReplicaVm', {
      parameters: { 'replication.$': '$.summary', 'verified.$': '$.verified', 'replicaVm.$': '$.replicaVm' },
      resultPath: '$.result',
    }),
  );
  const keepsStandby = new sfn.Choice(scope, 'KeepsStandby')
    .when(sfn.Condition.and(sfn.Condition.isString('$.replicaDir'), sfn.Condition.isPresent('$.replica')), withReplicaVm)
    .when(sfn.Condition.isString('$.replicaDir'), withStandby)
    .otherwise(
      new sfn.Pass(scope, 'ReplicatedWithoutStandby', { parameters: { 'replication.$': '$.summary', 'verified.$': '$.verified' }, resultPath: '$.result' }),
    );
  const release = invoke(scope, 'ReleaseReplicaLease', props.functions.ReleaseReplicaLease, { resultPath: null });
  return sfn.Chain.start(acquire)
    .next(copy)
    .next(verify)
    .next(record)
    .next(keepsStandby.afterwards())
    .next(release)
    .next(new sfn.Pass(scope, 'Replicated', { outputPath: '$.result' }));
}

export class ReplicateWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps) {
    super(scope, id);
    const plan = invoke(this, 'PlanReplicate', props.functions.PlanReplicate, {
      payload: sfn.TaskInput.fromObject({ 'replicationId.$': '$$.Execution.Name', 'request.$': '$' }),
    });
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'REPLICATION');
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat replicate: copy a backup to the DR repository (missing chunks only) and bring the warm standby replica to it',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(replicateJobChain(this, props, failed))),
      timeout: Duration.hours(24),
    });
  }
}

/**
 * ReplicatePolicy: the newest committed backup of every VM of a policy that the DR
 * repository does not have yet. Input: `{ policyId, runId?, moverGroup?, targetBucket?,
 * replicaDir? }`; what the Backup workflow starts after a run that committed backups
 * (`{ policyId, runId }`).
 *
 * PlanReplicatePolicy writes one job per VM to the stack's bucket (`runs/replicate/`);
 * ReplicateVms, a Distributed Map, reads them and runs each VM's replication (the chain
 * Replicate runs after its plan) as a child execution with its own history; a VM whose
 * replication fails gives its lease back and fails its own child only.
 * RecordReplicatePolicy sums the children's results from the Map Run's result files,
 * ReportReplication publishes the DR recovery point; when a VM failed, the execution then
 * records and fails with `Replication.VmsFailed`. No payload or history grows with the
 * number of VMs.
 */
export class ReplicatePolicyWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps & { runBucket: s3.IBucket }) {
    super(scope, id);
    useResultWriterV2(this);
    const plan = invoke(this, 'PlanReplicatePolicy', props.functions.PlanReplicatePolicy, {
      payload: sfn.TaskInput.fromObject({ 'replicationId.$': '$$.Execution.Name', 'request.$': '$' }),
    });
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'REPLICATION');
    const vms = listMap(this, 'ReplicateVms', {
      comment: 'One child execution per VM (its own history), the jobs read from the list PlanReplicatePolicy wrote to S3',
      runBucket: props.runBucket,
      keyPath: '$.jobList.key',
      label: 'ReplicateVm',
      maxConcurrency: 2,
      // A VM's failure is its own child's: the others go on; RecordReplicatePolicy counts it and the run then fails.
      toleratedFailurePercentage: 100,
      resultPath: '$.replicated',
    });
    // A VM's replication that fails gives its lease back and fails its child execution.
    vms.itemProcessor(replicateJobChain(this, props, new sfn.Fail(this, 'VmReplicationFailed', { errorPath: '$.error.Error', causePath: '$.error.Cause' })));
    vms.addCatch(failed, { resultPath: '$.error' });
    const record = invoke(this, 'RecordReplicatePolicy', props.functions.RecordReplicatePolicy);
    // The DR recovery point after this replication, as a metric (DrRecoveryPointAgeHours) and in the output.
    const report = invoke(this, 'ReportReplication', props.functions.ReportReplication, {
      payload: sfn.TaskInput.fromObject({ 'policyId.$': '$.policyId' }),
      resultPath: '$.dr',
    });
    const done = new sfn.Pass(this, 'PolicyReplicated', {
      parameters: {
        'replicationId.$': '$.replicationId',
        'policyId.$': '$.policyId',
        'runId.$': '$.runId',
        'vms.$': '$.vms',
        'replicatedCount.$': '$.replicatedCount',
        'failedCount.$': '$.failedCount',
        'replicated.$': '$.replicated',
        'failed.$': '$.failed',
        'skipped.$': '$.skipped',
        'skippedCount.$': '$.skippedCount',
        'results.$': '$.results',
        'drRecoveryPointAgeHours.$': '$.dr.drRecoveryPointAgeHours',
      },
    });
    const anyFailed = new sfn.Choice(this, 'AnyVmFailed', { comment: "A VM's replication failed: record it and fail the run with its error" })
      .when(sfn.Condition.isPresent('$.error'), failed)
      .otherwise(done);
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: "Lifeboat replicate a policy: every VM's newest backup the DR repository lacks, one child execution per VM",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(vms).next(record).next(report).next(anyFailed)),
      timeout: Duration.hours(24),
    });
    acknowledgeListMap(this.stateMachine, props.runBucket, 'ReplicateVm');
  }
}

export class FailoverWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps) {
    super(scope, id);
    const plan = invoke(this, 'PlanFailover', props.functions.PlanFailover, {
      payload: sfn.TaskInput.fromObject({ 'failoverId.$': '$$.Execution.Name', 'request.$': '$' }),
    });
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'FAILOVER');
    const released = releaseAfterFailure(this, props, failed);
    const release = invoke(this, 'ReleaseReplicaLease', props.functions.ReleaseReplicaLease, { resultPath: null });
    const record = invoke(this, 'RecordFailover', props.functions.RecordFailover);
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat failover: bring the DR standby replica to the newest backup complete at the DR site; report its recovery point',
      definitionBody: sfn.DefinitionBody.fromChainable(
        plan
          .next(acquireLease(this, props, released))
          .next(standbyChain(this, props.activities, released))
          .next(release)
          .next(record),
      ),
      timeout: Duration.hours(24),
    });
  }
}
