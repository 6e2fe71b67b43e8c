/**
 * The Deep verify workflow: PlanDeepVerify → per disk (Map) DeepVerifyDisk on the named
 * mover group (read back all or a sample of the chunks, open them, check their ids) →
 * RecordDeepVerify (marks a damaged backup in the catalog) → when damaged, an
 * EventBridge event `Lifeboat Backup Damaged` naming the backup, disk, offsets and keys.
 *
 * Input: `{ vmId, backupId?, sample?, moverGroup }`. Schedulable like any workflow.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../core/errors.ts';
import type { LambdaFunctionId } from '../../functions/registry.ts';
import { onMoverGroup } from './on-mover-group.ts';
import { recordFailureThenFail } from './recovery-failure.ts';

export const BACKUP_DAMAGED_EVENT = { source: 'lifeboat.deep-verify', detailType: 'Lifeboat Backup Damaged' } as const;

export interface DeepVerifyWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  activities: Record<string, sfn.IActivity>;
  diskConcurrency?: number;
}

export class DeepVerifyWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: DeepVerifyWorkflowProps) {
    super(scope, id);
    const invoke = (name: string, f: LambdaFunctionId, payload?: sfn.TaskInput) =>
      new tasks.LambdaInvoke(this, name, {
        lambdaFunction: props.functions[f],
        ...(payload ? { payload } : {}),
        payloadResponseOnly: true,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(5)),
      });

    const plan = invoke('PlanDeepVerify', 'PlanDeepVerify', sfn.TaskInput.fromObject({ 'verifyId.$': '$$.Execution.Name', 'request.$': '$' }));

    const verifyDisk = onMoverGroup(this, 'DeepVerifyDisk', {
      activities: props.activities,
      groupPath: '$.verify.moverGroup',
      task: (activity, name) => {
        const t = new tasks.StepFunctionsInvokeActivity(this, name, {
          activity,
          parameters: { task: 'deepVerifyDisk', 'verify.$': '$.verify', 'disk.$': '$.disk' },
          taskTimeout: sfn.Timeout.duration(Duration.hours(12)),
          heartbeatTimeout: sfn.Timeout.duration(Duration.seconds(60)),
        });
        t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 3 });
        return t;
      },
    });
    const verifyDisks = new sfn.Map(this, 'DeepVerifyDisks', {
      itemsPath: '$.disks',
      itemSelector: { 'disk.$': '$$.Map.Item.Value', 'verify.$': '$' },
      maxConcurrency: props.diskConcurrency ?? 4,
      resultPath: '$.verified',
    });
    verifyDisks.itemProcessor(verifyDisk);
    verifyDisks.addCatch(recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'DEEPVERIFY'), { resultPath: '$.error' });

    const record = invoke('RecordDeepVerify', 'RecordDeepVerify');
    record.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });

    const emit = new tasks.EventBridgePutEvents(this, 'EmitBackupDamaged', {
      entries: [{ source: BACKUP_DAMAGED_EVENT.source, detailType: BACKUP_DAMAGED_EVENT.detailType, detail: sfn.TaskInput.fromJsonPathAt('$.event') }],
      resultPath: sfn.JsonPath.DISCARD,
    });
    emit.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    const damaged = new sfn.Choice(this, 'Damaged')
      .when(sfn.Condition.booleanEquals('$.damaged', true), emit)
      .otherwise(new sfn.Succeed(this, 'Intact'));

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat deep verify: read back a backup\'s chunks, open them, check their ids; mark damage and emit an event',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(verifyDisks).next(record).next(damaged)),
      timeout: Duration.hours(24),
    });
  }
}
