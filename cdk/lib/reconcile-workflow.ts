/**
 * The Reconcile workflow: the failure path of a Backup execution that stopped without
 * running its own (StopExecution, its 24 h timeout, or the embedded stack killed under
 * it; Step Functions runs no Catch then). PlanReconcile finds what the run left: backups
 * still `running`, slots and the policy's run lease still held. Per VM the same handlers
 * and mover task as the Backup workflow's failure path: RecordFailure, ReleaseSlot, then
 * the mover's releaseSnapshot (last: it waits for a mover of the group, the catalog must
 * not). Then ReleaseRunLease.
 *
 * Started in AWS by an EventBridge rule on the Backup state machine's ABORTED and
 * TIMED_OUT status changes; in the embedded stack by the stack itself for executions it
 * finds ABORTED at start (local/stack.ts). Input: `{ executionArn, runId, error: { Error, Cause } }`.
 */
import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep, retryAnyError } from './steps.ts';

export interface ReconcileWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Activities of the mover groups that take backups, by group id (their movers hold the snapshots). */
  activities: Record<string, sfn.IActivity>;
  /** The Backup state machine whose stopped executions are reconciled. */
  backup: sfn.IStateMachine;
}

/** The error a reconciled backup is recorded with in AWS (the embedded stack names its restart instead). */
export const RUN_STOPPED = 'Backup.RunStopped';

export class ReconcileWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReconcileWorkflowProps) {
    super(scope, id);
    const fn = props.functions;
    const plan = lambdaStep(this, 'PlanReconcile', fn.PlanReconcile);
    retryAnyError(plan);

    const vmDone = new sfn.Pass(this, 'VmReconciled', { parameters: { 'vmId.$': '$.vmId', 'backupId.$': '$.backupId' } });
    const recordFailure = lambdaStep(this, 'RecordFailure', fn.RecordFailure, { resultPath: '$.outcome' });
    const releaseSlot = lambdaStep(this, 'ReleaseSlot', fn.ReleaseSlot, { resultPath: null });
    const releaseSnapshot = moverStep(this, 'ReleaseSnapshot', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'releaseSnapshot', 'job.$': '$' },
      timeout: Duration.minutes(10),
      heartbeat: Duration.minutes(2),
      resultPath: null,
      decorate: (t) => {
        t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
        t.addCatch(vmDone, { resultPath: '$.cleanupError' });
      },
    });
    for (const t of [recordFailure, releaseSlot]) retryAnyError(t);
    releaseSlot.addCatch(releaseSnapshot, { resultPath: '$.cleanupError' });
    const perVm = recordFailure.next(releaseSlot).next(releaseSnapshot).next(vmDone);
    const vms = new sfn.Map(this, 'ReconcileVms', { itemsPath: '$.vms', maxConcurrency: 8, resultPath: '$.vms' });
    vms.itemProcessor(perVm);

    const releaseRunLease = lambdaStep(this, 'ReleaseRunLease', fn.ReleaseRunLease, {
      payload: sfn.TaskInput.fromObject({ 'policyId.$': '$.policyId', 'executionArn.$': '$.executionArn' }),
      resultPath: null,
    });
    retryAnyError(releaseRunLease);

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat reconcile: the failure path of a Backup execution that stopped without its own',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(vms).next(releaseRunLease)),
      timeout: Duration.hours(1),
    });

    new events.Rule(this, 'OnBackupStopped', {
      description: 'A Backup execution aborted or timed out: its failure path did not run',
      eventPattern: {
        source: ['aws.states'],
        detailType: ['Step Functions Execution Status Change'],
        detail: { stateMachineArn: [props.backup.stateMachineArn], status: ['ABORTED', 'TIMED_OUT'] },
      },
      targets: [
        new targets.SfnStateMachine(this.stateMachine, {
          input: events.RuleTargetInput.fromObject({
            executionArn: events.EventField.fromPath('$.detail.executionArn'),
            runId: events.EventField.fromPath('$.detail.name'),
            error: {
              Error: RUN_STOPPED,
              Cause: `the Backup execution ended ${events.EventField.fromPath('$.detail.status')} without its failure path; reconciled`,
            },
          }),
        }),
      ],
    });
  }
}
