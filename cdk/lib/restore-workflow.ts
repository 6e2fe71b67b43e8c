/**
 * The Restore workflow: PlanRestore → per disk (Map) RestoreDisk on the named mover
 * group (download, write, re-read and re-hash) → RestoreVmConfig for a whole VM →
 * RecordRestore. A failure records the restore as failed and fails the execution with
 * the mover's error and cause; a restore into a libvirt storage pool (`define.pool`) first
 * deletes the volumes it created (DiscardRestoreVolumes).
 *
 * Instant recovery (`instant` with `define`): InstantRecover on the mover group instead of
 * the disk copies (mover/recovery/instant.ts) → RecordRestore.
 *
 * Input: `{ vmId, backupId?, diskId?, target, moverGroup, fromBucket?, define?, force?, instant? }`. Without
 * `force`, a restore that would overwrite (a file holding data, a folder that is not empty,
 * the VM's own folder) fails with Recovery.RequestInvalid; each disk is written under
 * `<target>.partial` and renamed into place once re-hashed.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverDiskMap, moverStep, retryAnyError, retryMoverTask } from './steps.ts';

export interface RestoreWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Activities by mover group id: the execution names the group that restores. */
  activities: Record<string, sfn.IActivity>;
  /** Disks restored at once. */
  diskConcurrency?: number;
}

export class RestoreWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: RestoreWorkflowProps) {
    super(scope, id);
    const invoke = (name: string, f: LambdaFunctionId, opts: { payload?: sfn.TaskInput; resultPath?: string } = {}) =>
      lambdaStep(this, name, props.functions[f], opts);

    const plan = invoke('PlanRestore', 'PlanRestore', {
      payload: sfn.TaskInput.fromObject({ 'restoreId.$': '$$.Execution.Name', 'request.$': '$' }),
    });

    const recordFailure = invoke('RecordRestoreFailure', 'RecordRestoreFailure', { resultPath: '$.record' });
    retryAnyError(recordFailure);
    const failed = new sfn.Fail(this, 'RestoreFailed', { errorPath: '$.error.Error', causePath: '$.error.Cause' });
    recordFailure.next(failed);

    // A restore into a storage pool that fails before its domain is defined deletes the
    // volumes it created (the disks that did finish, too); the mover knows which are its own.
    const discardVolumes = moverStep(this, 'DiscardRestoreVolumes', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'discardPoolVolumes', 'restore.$': '$' },
      timeout: Duration.minutes(10),
      resultPath: '$.discardedVolumes',
      decorate: (t) => {
        retryMoverTask(t);
        t.addCatch(recordFailure, { resultPath: '$.discardError' });
      },
    });
    const onFailure = new sfn.Choice(this, 'PoolVolumesToDiscard')
      .when(sfn.Condition.isPresent('$.define.pool'), discardVolumes.next(recordFailure))
      .otherwise(recordFailure);

    const restoreDisks = moverDiskMap(this, {
      mapName: 'RestoreDisks',
      stepName: 'RestoreDisk',
      task: 'restoreDisk',
      jobKey: 'restore',
      activities: props.activities,
      resultPath: '$.restored',
      concurrency: props.diskConcurrency ?? 4,
      timeout: Duration.hours(12),
    });
    restoreDisks.addCatch(onFailure, { resultPath: '$.error' });

    const restoreVmConfig = moverStep(this, 'RestoreVmConfig', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'restoreVmConfig', 'restore.$': '$', 'disks.$': '$.restored' },
      timeout: Duration.minutes(10),
      resultPath: '$.vmConfig',
      decorate: (t) => {
        retryMoverTask(t);
        t.addCatch(onFailure, { resultPath: '$.error' });
      },
    });

    const record = invoke('RecordRestore', 'RecordRestore');
    retryAnyError(record);
    const wholeVm = new sfn.Choice(this, 'WholeVm').when(sfn.Condition.isNull('$.diskId'), restoreVmConfig.next(record)).otherwise(record);

    // Instant recovery: one task runs the VM on the backup's exports and moves it to the
    // target while it runs. A mover that dies is replaced: the retry takes the recovery up
    // (same restore id: exports served again at the same socket, the move started over).
    const instant = moverStep(this, 'InstantRecover', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'instantRecover', 'restore.$': '$' },
      timeout: Duration.days(7),
      resultPath: '$.instantResult',
      decorate: (t) => {
        retryMoverTask(t);
        t.addCatch(recordFailure, { resultPath: '$.error' });
      },
    });
    const mode = new sfn.Choice(this, 'InstantOrCopy').when(sfn.Condition.isPresent('$.instant'), instant.next(record)).otherwise(restoreDisks.next(wholeVm));

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment:
        'Lifeboat restore: a VM or one disk, through a mover group, re-hashed after writing; or an instant recovery (the VM runs on the backup at once and moves to its disks while it runs)',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(mode)),
      timeout: Duration.hours(24),
    });
  }
}
