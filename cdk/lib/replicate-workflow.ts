/**
 * Replication to a DR site, and failover to its warm standby replica.
 *
 * Replicate: PlanReplicate → ReplicateDisks (Map: a DR-site mover copies the chunks the
 * DR repository lacks, then the manifest) → VerifyReplica (every chunk is there, checked
 * through the DR repository's endpoint) → RecordReplication → with a `replicaDir`,
 * UpdateStandby (Map: the replica's raw disks get the changed chunks only) →
 * StandbyVmConfig. Input: `{ vmId, backupId?, moverGroup?, targetBucket?, replicaDir? }`.
 *
 * ReplicatePolicy: the same for every VM of a policy whose newest backup the DR site lacks
 * (with a `runId`, only VMs whose newest backup that run made: what a Backup run starts).
 * The mover group and standby folder default to the DR repository's configuration.
 *
 * Failover: PlanFailover (newest committed backup complete at the DR site) →
 * UpdateStandby → StandbyVmConfig → RecordFailover, whose output is the replica's disks,
 * its VM description and its recovery point. Input: `{ vmId, moverGroup?, replicaDir?, targetBucket? }`.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../core/errors.ts';
import type { LambdaFunctionId } from '../../functions/registry.ts';
import { lambdaStep, moverStep, retryMoverTask } from './steps.ts';
import { recordFailureThenFail } from './recovery-failure.ts';

export interface ReplicationWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  activities: Record<string, sfn.IActivity>;
}

function invoke(scope: Construct, name: string, fn: lambda.IFunction, opts: { payload?: sfn.TaskInput; resultPath?: string } = {}) {
  const t = lambdaStep(scope, name, fn, opts);
  t.addRetry({ errors: ['Lambda.TooManyRequestsException', 'Lambda.ServiceException', StorageUnavailable.code], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
  return t;
}

function moverTask(scope: Construct, activities: Record<string, sfn.IActivity>, name: string, groupPath: string, parameters: Record<string, unknown>, opts: { hours: number; resultPath?: string; catchTo?: sfn.IChainable }) {
  return moverStep(scope, name, {
    activities, groupPath, parameters, timeout: Duration.hours(opts.hours), resultPath: opts.resultPath,
    decorate: (t) => {
      retryMoverTask(t);
      if (opts.catchTo) t.addCatch(opts.catchTo, { resultPath: '$.error' });
    },
  });
}

/** UpdateStandby (Map over `$.disks`) → StandbyVmConfig: the replica equals the job's backup. */
function standbyChain(scope: Construct, activities: Record<string, sfn.IActivity>, onFailure?: sfn.IChainable): sfn.Chain {
  const update = new sfn.Map(scope, 'UpdateStandby', {
    itemsPath: '$.disks',
    itemSelector: { 'disk.$': '$$.Map.Item.Value', 'replicate.$': '$' },
    maxConcurrency: 4,
    resultPath: '$.standby',
  });
  update.itemProcessor(moverTask(scope, activities, 'UpdateStandbyDisk', '$.replicate.moverGroup', { task: 'updateStandbyDisk', 'replicate.$': '$.replicate', 'disk.$': '$.disk' }, { hours: 12 }));
  if (onFailure) update.addCatch(onFailure, { resultPath: '$.error' });
  const config = moverTask(scope, activities, 'StandbyVmConfig', '$.moverGroup', { task: 'standbyVmConfig', 'replicate.$': '$', 'disks.$': '$.standby' }, { hours: 1, resultPath: '$.vmConfig', ...(onFailure ? { catchTo: onFailure } : {}) });
  return sfn.Chain.start(update).next(config);
}

/** One backup's replication, from its ReplicateJob: ReplicateDisks → RecordReplication → the standby, if any. */
function replicateJobChain(scope: Construct, props: ReplicationWorkflowProps, onFailure?: sfn.IChainable): sfn.Chain {
  const copy = new sfn.Map(scope, 'ReplicateDisks', {
    itemsPath: '$.disks',
    itemSelector: { 'disk.$': '$$.Map.Item.Value', 'index.$': '$$.Map.Item.Index', 'replicate.$': '$' },
    maxConcurrency: 4,
    resultPath: '$.replicated',
  });
  copy.itemProcessor(moverTask(scope, props.activities, 'ReplicateDisk', '$.replicate.moverGroup', { task: 'replicateDisk', 'replicate.$': '$.replicate', 'disk.$': '$.disk', 'index.$': '$.index' }, { hours: 12 }));
  if (onFailure) copy.addCatch(onFailure, { resultPath: '$.error' });
  // The copy is checked where it landed (the DR repository's endpoint) before the catalog vouches for it.
  const verify = invoke(scope, 'VerifyReplica', props.functions.VerifyReplica, { resultPath: '$.verified' });
  if (onFailure) verify.addCatch(onFailure, { resultPath: '$.error' });
  const record = invoke(scope, 'RecordReplication', props.functions.RecordReplication, { resultPath: '$.summary' });
  const withStandby = standbyChain(scope, props.activities, onFailure).next(new sfn.Pass(scope, 'ReplicatedWithStandby', { parameters: { 'replication.$': '$.summary', 'verified.$': '$.verified', 'standby.$': '$.standby', 'vmConfig.$': '$.vmConfig' } }));
  const keepsStandby = new sfn.Choice(scope, 'KeepsStandby')
    .when(sfn.Condition.isString('$.replicaDir'), withStandby)
    .otherwise(new sfn.Pass(scope, 'Replicated', { parameters: { 'replication.$': '$.summary', 'verified.$': '$.verified' } }));
  return sfn.Chain.start(copy).next(verify).next(record).next(keepsStandby);
}

export class ReplicateWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps) {
    super(scope, id);
    const plan = invoke(this, 'PlanReplicate', props.functions.PlanReplicate, { payload: sfn.TaskInput.fromObject({ 'replicationId.$': '$$.Execution.Name', 'request.$': '$' }) });
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
 * repository does not have yet, one VM after another (Map). Input:
 * `{ policyId, runId?, moverGroup?, targetBucket?, replicaDir? }`; what the Backup workflow
 * starts after a run that committed backups (`{ policyId, runId }`).
 */
export class ReplicatePolicyWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps) {
    super(scope, id);
    const plan = invoke(this, 'PlanReplicatePolicy', props.functions.PlanReplicatePolicy, { payload: sfn.TaskInput.fromObject({ 'replicationId.$': '$$.Execution.Name', 'request.$': '$' }) });
    const vms = new sfn.Map(this, 'ReplicateVms', { itemsPath: '$.jobs', maxConcurrency: 2, resultPath: '$.replicated' });
    vms.itemProcessor(replicateJobChain(this, props));
    vms.addCatch(recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'REPLICATION'), { resultPath: '$.error' });
    const done = new sfn.Pass(this, 'PolicyReplicated', { parameters: { 'policyId.$': '$.policyId', 'runId.$': '$.runId', 'replicated.$': '$.replicated', 'skipped.$': '$.skipped' } });
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat replicate a policy: every VM\'s newest backup the DR repository lacks',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(vms).next(done)),
      timeout: Duration.hours(24),
    });
  }
}

export class FailoverWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps) {
    super(scope, id);
    const plan = invoke(this, 'PlanFailover', props.functions.PlanFailover, { payload: sfn.TaskInput.fromObject({ 'failoverId.$': '$$.Execution.Name', 'request.$': '$' }) });
    const record = invoke(this, 'RecordFailover', props.functions.RecordFailover);
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'FAILOVER');
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat failover: bring the DR standby replica to the newest backup complete at the DR site; report its recovery point',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(standbyChain(this, props.activities, failed)).next(record)),
      timeout: Duration.hours(24),
    });
  }
}
