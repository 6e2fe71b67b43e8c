/**
 * The Files workflow (file-level restore): PlanFiles resolves the backup, disk, repository
 * and mover group → ReadFiles, the `files` task on a mover of that group (by default the
 * group serving the VM's host), which reads the disk straight from the repository in a
 * sandboxed reader and either answers one page of a directory listing (`op: 'ls'`; the
 * result's `next` is the `offset` of the next page, so every page fits the 256 KiB
 * payload quota) or extracts files and trees under a folder on its host (`op: 'get'`).
 *
 * Input: `{ vmId, backupId?, diskId?, partition?, moverGroup?, op: 'ls', path, offset? }` or
 * `{ ..., op: 'get', paths, target }` (contracts/files-job.ts). Output: the task's result.
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep } from './steps.ts';

export interface FilesWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  activities: Record<string, sfn.IActivity>;
}

export class FilesWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: FilesWorkflowProps) {
    super(scope, id);
    const plan = lambdaStep(this, 'PlanFiles', props.functions.PlanFiles, {
      payload: sfn.TaskInput.fromObject({ 'filesId.$': '$$.Execution.Name', 'request.$': '$' }),
    });
    // The task's own reader time limit is an hour (FilesJob.timeoutSeconds); the state's is above it.
    const read = moverStep(this, 'ReadFiles', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'files', 'files.$': '$' },
      timeout: Duration.minutes(75),
    });
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: "Lifeboat file-level restore: list or extract files of a backup's disk, read from the repository by a mover at the VM's site",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(read)),
      timeout: Duration.hours(2),
    });
  }
}
