/**
 * The Deep verify workflow: PlanDeepVerify → per disk (Map) DeepVerifyDisk on the named
 * mover group (read back all or a sample of the chunks, open them, check their ids) →
 * RecordDeepVerify (marks a damaged backup in the catalog; a full verification finding a
 * damaged backup intact again marks it healthy) → when damaged, QuarantineDamage (moves
 * damaged chunks aside so later backups upload them again) and an EventBridge event
 * `Lifeboat Backup Damaged` naming the backup, disk, offsets and keys. A restore test
 * that fails puts `Lifeboat Restore Test Failed` (vmId, backupId, verifyId, reason, seconds).
 *
 * Input: `{ vmId, backupId?, sample?, moverGroup }`. Schedulable like any workflow.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { StorageUnavailable } from '../../contracts/errors.ts';
import { lambdaStep, moverDiskMap, moverStep, retryAnyError, retryMoverTask } from './steps.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { acknowledgeListMap, listMap, useResultWriterV2 } from './distributed-map.ts';

export const BACKUP_DAMAGED_EVENT = { source: 'lifeboat.deep-verify', detailType: 'Lifeboat Backup Damaged' } as const;
export const RESTORE_TEST_FAILED_EVENT = { source: 'lifeboat.deep-verify', detailType: 'Lifeboat Restore Test Failed' } as const;

export interface DeepVerifyWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  activities: Record<string, sfn.IActivity>;
  diskConcurrency?: number;
}

function invoke(scope: Construct, name: string, fn: lambda.IFunction, payload?: sfn.TaskInput) {
  return lambdaStep(scope, name, fn, payload ? { payload } : {});
}

/** One backup's verification from its DeepVerifyJob: disks (Map) → RecordDeepVerify → the event when damaged. */
function verifyJobChain(scope: Construct, props: DeepVerifyWorkflowProps, onFailure?: sfn.IChainable): sfn.Chain {
  const verifyDisks = moverDiskMap(scope, {
    mapName: 'DeepVerifyDisks',
    stepName: 'DeepVerifyDisk',
    task: 'deepVerifyDisk',
    jobKey: 'verify',
    activities: props.activities,
    resultPath: '$.verified',
    concurrency: props.diskConcurrency ?? 4,
    timeout: Duration.hours(12),
  });
  if (onFailure) verifyDisks.addCatch(onFailure, { resultPath: '$.error' });

  const record = invoke(scope, 'RecordDeepVerify', props.functions.RecordDeepVerify);
  retryAnyError(record);

  const emit = new tasks.EventBridgePutEvents(scope, 'EmitBackupDamaged', {
    entries: [{ source: BACKUP_DAMAGED_EVENT.source, detailType: BACKUP_DAMAGED_EVENT.detailType, detail: sfn.TaskInput.fromJsonPathAt('$.event') }],
    resultPath: sfn.JsonPath.DISCARD,
  });
  retryAnyError(emit);
  // Damaged chunks are moved aside and recorded, so the next backups upload them again.
  const quarantine = lambdaStep(scope, 'QuarantineDamage', props.functions.QuarantineDamage, { resultPath: '$.quarantine' });
  // Idempotent (the record first, a copy and a delete that may repeat): any failure is retried.
  quarantine.addRetry({ errors: [StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 4 });
  quarantine.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 2 });
  const damaged = new sfn.Choice(scope, 'Damaged')
    .when(sfn.Condition.booleanEquals('$.damaged', true), quarantine.next(emit))
    // RecordDeepVerify passes the restore test on only when one is due and the backup verified clean.
    .when(sfn.Condition.isPresent('$.restoreTestJob'), restoreTestChain(scope, props))
    .otherwise(new sfn.Succeed(scope, 'Intact'));
  return sfn.Chain.start(verifyDisks).next(record).next(damaged);
}

/**
 * RestoreTest on a mover of the group serving the VM's host (restore into a throwaway
 * folder, define, boot, wait for the sign of life, remove) → RecordRestoreTest → when the
 * test failed, the event RecordRestoreTest shaped. A test that fails as a task (after the
 * retries of a dead mover or unavailable storage) is recorded as a failed test with the
 * error as its reason; the verification still succeeds.
 */
function restoreTestChain(scope: Construct, props: DeepVerifyWorkflowProps): sfn.Chain {
  const recordTest = invoke(scope, 'RecordRestoreTest', props.functions.RecordRestoreTest);
  retryAnyError(recordTest);
  const test = moverStep(scope, 'RestoreTest', {
    activities: props.activities,
    groupPath: '$.restoreTestJob.moverGroup',
    parameters: { task: 'restoreTest', 'test.$': '$.restoreTestJob' },
    // Restoring the disks takes as long as a restore; the boot wait is at most an hour.
    timeout: Duration.hours(12),
    resultPath: '$.restoreTestResult',
    decorate: (t) => {
      retryMoverTask(t);
      t.addCatch(recordTest, { resultPath: '$.restoreTestError' });
    },
  });
  const emit = new tasks.EventBridgePutEvents(scope, 'EmitRestoreTestFailed', {
    entries: [
      {
        source: RESTORE_TEST_FAILED_EVENT.source,
        detailType: RESTORE_TEST_FAILED_EVENT.detailType,
        detail: sfn.TaskInput.fromJsonPathAt('$.restoreTestFailed'),
      },
    ],
    resultPath: sfn.JsonPath.DISCARD,
  });
  retryAnyError(emit);
  const failed = new sfn.Choice(scope, 'RestoreTestFailed')
    .when(sfn.Condition.isPresent('$.restoreTestFailed'), emit)
    .otherwise(new sfn.Succeed(scope, 'RestoreTestPassed'));
  return test.next(recordTest).next(failed);
}

export class DeepVerifyWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: DeepVerifyWorkflowProps) {
    super(scope, id);
    const plan = invoke(
      this,
      'PlanDeepVerify',
      props.functions.PlanDeepVerify,
      sfn.TaskInput.fromObject({ 'verifyId.$': '$$.Execution.Name', 'request.$': '$' }),
    );
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'DEEPVERIFY');
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: "Lifeboat deep verify: read back a backup's chunks, open them, check their ids; mark damage and emit an event",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(verifyJobChain(this, props, failed))),
      timeout: Duration.hours(24),
    });
  }
}

/**
 * DeepVerifyPolicy: the newest committed backup of every VM of a policy, each by the
 * mover group serving the VM's host, each restore-tested when due. Input: `{ policyId,
 * sample?, restoreTest? }`; scheduled weekly.
 *
 * PlanDeepVerifyPolicy writes one job per VM to the stack's bucket (`runs/deep-verify/`);
 * DeepVerifyVms, a Distributed Map, reads them and runs each VM's verification (the chain
 * DeepVerify runs after its plan) as a child execution with its own history; a VM whose
 * verification fails fails its own child only. RecordDeepVerifyPolicy sums the children's
 * results from the Map Run's result files; when a VM failed, the execution then records
 * and fails with `DeepVerify.VmsFailed`, naming the first and where every result is. No
 * payload or history grows with the number of VMs.
 */
export class DeepVerifyPolicyWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: DeepVerifyWorkflowProps & { runBucket: s3.IBucket }) {
    super(scope, id);
    useResultWriterV2(this);
    const plan = invoke(
      this,
      'PlanDeepVerifyPolicy',
      props.functions.PlanDeepVerifyPolicy,
      sfn.TaskInput.fromObject({ 'verifyId.$': '$$.Execution.Name', 'request.$': '$' }),
    );
    const failed = recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'DEEPVERIFY');
    const vms = listMap(this, 'DeepVerifyVms', {
      comment: 'One child execution per VM (its own history), the jobs read from the list PlanDeepVerifyPolicy wrote to S3',
      runBucket: props.runBucket,
      keyPath: '$.jobList.key',
      label: 'DeepVerifyVm',
      maxConcurrency: 2,
      // A VM's failure is its own child's: the others go on; RecordDeepVerifyPolicy counts it and the run then fails.
      toleratedFailurePercentage: 100,
      resultPath: '$.verified',
    });
    vms.itemProcessor(verifyJobChain(this, props));
    vms.addCatch(failed, { resultPath: '$.error' });
    const record = invoke(this, 'RecordDeepVerifyPolicy', props.functions.RecordDeepVerifyPolicy);
    retryAnyError(record);
    const anyFailed = new sfn.Choice(this, 'AnyVmFailed', { comment: "A VM's verification failed: record it and fail the run with its error" })
      .when(sfn.Condition.isPresent('$.error'), failed)
      .otherwise(new sfn.Succeed(this, 'PolicyVerified'));
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat deep verify a policy: the newest backup of each of its VMs, one child execution per VM',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(vms).next(record).next(anyFailed)),
      timeout: Duration.hours(24),
    });
    acknowledgeListMap(this.stateMachine, props.runBucket, 'DeepVerifyVm');
  }
}
