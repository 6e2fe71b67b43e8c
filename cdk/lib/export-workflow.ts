/**
 * The Export workflow: PlanExport (the backup, its disks and repository, and the mover
 * group of the VM's host) → ServeExport (the `export` activity task on that group: the
 * backup's disks served over NBD, read-only, straight from the repository, until no
 * client has been connected for the idle timeout, or the execution is stopped).
 *
 * Input: `{ vmId, backupId?, moverGroup?, listen?, idleTimeoutSeconds?, fromBucket? }`;
 * the export's id is the execution's name. Where to connect is known while the task still
 * runs: the mover writes the endpoint record `exports/<exportId>.json` in the repository
 * bucket when it listens (contracts/export-job.ts `exportEndpoint`). Ends: idle (the output is
 * the export's result, `closed: 'idle'`); StopExecution (the mover's next heartbeat is
 * refused, the task is aborted and the export closed, its record says `closed`); the
 * mover dies (heartbeat timeout: the execution fails with States.Timeout; not retried,
 * since a retry on another mover would listen at another address the caller does not know).
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep } from './steps.ts';

export interface ExportWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Every mover group's Activity: the export runs on the group of the VM's host, or the one the input names. */
  activities: Record<string, sfn.IActivity>;
}

export class ExportWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ExportWorkflowProps) {
    super(scope, id);
    const plan = lambdaStep(this, 'PlanExport', props.functions.PlanExport, {
      payload: sfn.TaskInput.fromObject({ 'exportId.$': '$$.Execution.Name', 'request.$': '$' }),
    });
    const serve = moverStep(this, 'ServeExport', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'export', 'export.$': '$.export' },
      // An export in use runs until stopped; at most a week (the job's idle timeout's cap, and
      // under the 24.8 days a Node timer can count, which the embedded runner uses).
      timeout: Duration.days(7),
      // Opening the manifests before it listens is the only retry-safe part: storage that was unavailable then.
      decorate: (t) => t.addRetry({ errors: [StorageUnavailable.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 3 }),
    });
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment:
        "Lifeboat export: a backup's disks served over NBD by a mover of the VM's site, until idle or stopped; where to connect: exports/<execution name>.json in the repository",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(serve)),
      timeout: Duration.days(8),
    });
  }
}
