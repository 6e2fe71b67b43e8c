/**
 * Failback: back from the DR site to production after a real failover (contracts/failback.ts).
 *
 * PlanFailback → SyncDisks (Map: a production mover brings each production disk from the
 * failover's recovery point B to the DR VM's newest backup D, hashing every production
 * chunk and writing only where it differs; the DR VM keeps running) → StopDrVm (a DR-site
 * mover shuts it down cleanly, within `shutdownTimeoutSeconds`: the outage starts) →
 * StartFinalBackup (the DR-site policy's Backup workflow, for the DR VM only: `vmIds`) → WaitForFinalBackup /
 * CheckFinalBackup until the DR VM's backup of that run is committed → FinalDelta (Map: the
 * manifests' difference between D and the final backup, written without reading) →
 * StartProductionVm (started, its sign of life awaited: the outage ends) → ReleaseReplica
 * (when the production VM has a replica VM: a DR mover clears its failed-over state and
 * puts it back on its newest restore point, for the next replication) → RecordFailback.
 * Any failure records the failback as failed, with the error, and fails the execution.
 * Input: `{ vmId, drVmId, baseBackupId?, shutdownTimeoutSeconds?, readiness? }`.
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { catchAny, lambdaStep, moverStep, retryAnyError, retryMoverTask } from './steps.ts';

export interface FailbackWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Every mover group's Activity: the production site's group writes and starts, the DR site's stops. */
  activities: Record<string, sfn.IActivity>;
  /** The Backup workflow: the final DR-site backup is one of its runs. */
  backup: sfn.IStateMachine;
}

export class FailbackWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: FailbackWorkflowProps) {
    super(scope, id);
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'FAILBACK');
    const lambdaTask = (name: string, fn: lambda.IFunction, payload: Record<string, unknown> | undefined, resultPath: string) => {
      const t = lambdaStep(this, name, fn, { ...(payload ? { payload: sfn.TaskInput.fromObject(payload) } : {}), resultPath });
      t.addRetry({ errors: ['Lambda.TooManyRequestsException', 'Lambda.ServiceException'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
      catchAny(t, failed, '$.error');
      return t;
    };
    const deltaMap = (name: string, from: string, to: Record<string, unknown>, mode: 'hash' | 'trust', resultPath: string) => {
      const map = new sfn.Map(this, name, {
        itemsPath: '$.job.disks',
        itemSelector: { 'disk.$': '$$.Map.Item.Value', 'job.$': '$.job', 'finalBackupId.$': '$.final.backupId' },
        maxConcurrency: 4,
        resultPath,
      });
      map.itemProcessor(
        moverStep(this, `${name}Disk`, {
          activities: props.activities,
          groupPath: '$.job.productionGroup',
          timeout: Duration.hours(12),
          parameters: { task: 'failbackDisk', 'failback.$': '$.job', 'disk.$': '$.disk', 'from.$': from, to, mode },
        }),
      );
      catchAny(map, failed, '$.error');
      return map;
    };
    const domainTask = (name: string, task: string, groupPath: string, resultPath: string) => {
      return moverStep(this, name, {
        activities: props.activities,
        groupPath,
        timeout: Duration.hours(1),
        parameters: { task, 'failback.$': '$.job' },
        resultPath,
        decorate: (t) => {
          retryMoverTask(t);
          catchAny(t, failed, '$.error');
        },
      });
    };

    const plan = lambdaTask('PlanFailback', props.functions.PlanFailback, { 'failbackId.$': '$$.Execution.Name', 'request.$': '$' }, '$.job');
    // Before the first Map: its item selector names `$.final`, which exists only after the final backup.
    const noFinalYet = new sfn.Pass(this, 'NoFinalBackupYet', { result: sfn.Result.fromObject({ backupId: null }), resultPath: '$.final' });
    const sync = deltaMap('SyncDisks', '$.job.base', { 'backupId.$': '$.job.target.backupId', 'repository.$': '$.job.target.repository' }, 'hash', '$.sync');
    const stop = domainTask('StopDrVm', 'stopDrVm', '$.job.drGroup', '$.stopped');
    const startFinal = new tasks.StepFunctionsStartExecution(this, 'StartFinalBackup', {
      stateMachine: props.backup,
      name: sfn.JsonPath.format('{}-final', sfn.JsonPath.stringAt('$$.Execution.Name')),
      // Only the DR VM: the DR-site policy may protect other VMs, which must not lengthen the outage.
      input: sfn.TaskInput.fromObject({
        policyId: sfn.JsonPath.stringAt('$.job.drPolicyId'),
        vmIds: sfn.JsonPath.array(sfn.JsonPath.stringAt('$.job.drVmId')),
      }),
      resultSelector: { 'startDate.$': '$.StartDate' },
      resultPath: '$.finalRun',
      taskTimeout: sfn.Timeout.duration(Duration.minutes(1)),
    });
    retryAnyError(startFinal);
    catchAny(startFinal, failed, '$.error');
    const wait = new sfn.Wait(this, 'WaitForFinalBackup', { time: sfn.WaitTime.duration(Duration.seconds(3)) });
    const check = lambdaTask(
      'CheckFinalBackup',
      props.functions.CheckFinalBackup,
      {
        'job.$': '$.job',
        runId: sfn.JsonPath.format('{}-final', sfn.JsonPath.stringAt('$$.Execution.Name')),
        'startedAt.$': '$.finalRun.startDate',
      },
      '$.final',
    );
    const finalDelta = deltaMap(
      'FinalDelta',
      '$.job.target',
      { 'backupId.$': '$.finalBackupId', 'repository.$': '$.job.target.repository' },
      'trust',
      '$.finalDelta',
    );
    const start = domainTask('StartProductionVm', 'startProductionVm', '$.job.productionGroup', '$.started');
    const record = lambdaTask(
      'RecordFailback',
      props.functions.RecordFailback,
      {
        'job.$': '$.job',
        'finalBackupId.$': '$.final.backupId',
        'sync.$': '$.sync',
        'final.$': '$.finalDelta',
        'stopped.$': '$.stopped',
        'started.$': '$.started',
        'replica.$': '$.replicaReleased',
      },
      '$.report',
    );
    const done = new sfn.Pass(this, 'FailedBack', { outputPath: '$.report' });
    // The replica VM that ran as the VM at the DR site: released (no longer failed over, back on its newest point) for the next replication.
    const release = domainTask('ReleaseReplica', 'releaseReplica', '$.job.replica.moverGroup', '$.replicaReleased');
    const noReplica = new sfn.Pass(this, 'NoReplicaVm', {
      result: sfn.Result.fromObject({ domain: null, failoverRunId: null, backupId: null, checkpointsRemoved: 0 }),
      resultPath: '$.replicaReleased',
    });
    const releaseIfReplica = new sfn.Choice(this, 'HasReplicaVm').when(sfn.Condition.isPresent('$.job.replica'), release).otherwise(noReplica);
    release.next(record);
    noReplica.next(record);
    record.next(done);
    const finalDone = new sfn.Choice(this, 'FinalBackupCommitted')
      .when(sfn.Condition.booleanEquals('$.final.done', true), finalDelta.next(start).next(releaseIfReplica))
      .otherwise(wait);
    wait.next(check).next(finalDone);

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat failback: send what changed at the DR site to the production VM, then switch back with a short outage and report it',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(noFinalYet).next(sync).next(stop).next(startFinal).next(wait)),
      timeout: Duration.hours(24),
    });
    props.backup.grantStartExecution(this.stateMachine);
  }
}
