/**
 * The recovery side of the control plane, added to the stack in one call: the Restore,
 * Deep verify and Prune workflows (with their outputs). Kept apart from lifeboat-stack.ts so
 * the stack file stays a list of parts.
 */
import { CfnOutput, type Stack } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { LambdaFunctionId } from '../../functions/registry.ts';
import { DeepVerifyWorkflow } from './deep-verify-workflow.ts';
import { PruneWorkflow } from './prune-workflow.ts';
import { RestoreWorkflow } from './restore-workflow.ts';

export interface RecoveryWorkflowsProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Every mover group's Activity: a restore or verification names the group that does it. */
  activities: Record<string, sfn.IActivity>;
}

export interface RecoveryWorkflows {
  restore: RestoreWorkflow;
  deepVerify: DeepVerifyWorkflow;
  prune: PruneWorkflow;
}

export function addRecoveryWorkflows(stack: Stack, props: RecoveryWorkflowsProps): RecoveryWorkflows {
  const restore = new RestoreWorkflow(stack, 'Restore', props);
  new CfnOutput(stack, 'RestoreStateMachineArn', { value: restore.stateMachine.stateMachineArn });
  const deepVerify = new DeepVerifyWorkflow(stack, 'DeepVerify', props);
  new CfnOutput(stack, 'DeepVerifyStateMachineArn', { value: deepVerify.stateMachine.stateMachineArn });
  const prune = new PruneWorkflow(stack, 'Prune', props);
  new CfnOutput(stack, 'PruneStateMachineArn', { value: prune.stateMachine.stateMachineArn });
  return { restore, deepVerify, prune };
}
