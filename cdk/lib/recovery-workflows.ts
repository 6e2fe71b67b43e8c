/**
 * The recovery side of the control plane, added to the stack in one call: the Restore, Files (file-level restore),
 * Deep verify, Prune, Garbage collection, Replicate and Failover workflows (with their outputs). Kept apart from lifeboat-stack.ts so
 * the stack file stays a list of parts.
 */
import { CfnOutput, Duration, TimeZone, type Stack } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as targets from 'aws-cdk-lib/aws-scheduler-targets';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { PolicyConfig } from '../../core/config.ts';
import type { StorageEndpoint } from '../../contracts/endpoints.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { DeepVerifyPolicyWorkflow, DeepVerifyWorkflow } from './deep-verify-workflow.ts';
import { ExportWorkflow } from './export-workflow.ts';
import { GcWorkflow } from './gc-workflow.ts';
import { PruneWorkflow } from './prune-workflow.ts';
import { FailoverWorkflow, ReplicatePolicyWorkflow, ReplicateWorkflow } from './replicate-workflow.ts';
import { FailoverPlanWorkflow } from './failover-plan-workflow.ts';
import { RestoreWorkflow } from './restore-workflow.ts';
import { FilesWorkflow } from './files-workflow.ts';

export interface RecoveryWorkflowsProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Every mover group's Activity: a restore or verification names the group that does it. */
  activities: Record<string, sfn.IActivity>;
  /** The stack's own bucket: per-policy workflows keep their lists and their Distributed Maps' results under `runs/`. */
  runBucket: s3.IBucket;
  /** Policies: each gets a daily Prune schedule in its time zone. */
  policies?: PolicyConfig[];
  /** When Prune runs for every policy (EventBridge Scheduler expression, policy's time zone). */
  pruneSchedule?: string;
  /** When each policy's newest backups are deep-verified (EventBridge Scheduler expression, policy's time zone). */
  deepVerifySchedule?: string;
  /** Fraction of chunks the scheduled deep verification reads back (default 0.1). */
  deepVerifySample?: number;
  /** Every repository (the stack's own and those on another endpoint): each gets a weekly garbage collection (endpoint and Object Lock days passed on). */
  repositories?: { id: string; bucket: string; endpoint?: StorageEndpoint; objectLockDays?: number }[];
  /** When garbage collection runs (EventBridge Scheduler expression, UTC). */
  gcSchedule?: string;
}

export interface RecoveryWorkflows {
  restore: RestoreWorkflow;
  files: FilesWorkflow;
  deepVerify: DeepVerifyWorkflow;
  deepVerifyPolicy: DeepVerifyPolicyWorkflow;
  prune: PruneWorkflow;
  gc: GcWorkflow;
  replicate: ReplicateWorkflow;
  replicatePolicy: ReplicatePolicyWorkflow;
  failover: FailoverWorkflow;
  failoverPlan: FailoverPlanWorkflow;
  testFailover: FailoverPlanWorkflow;
  export: ExportWorkflow;
}

export function addRecoveryWorkflows(stack: Stack, props: RecoveryWorkflowsProps): RecoveryWorkflows {
  const restore = new RestoreWorkflow(stack, 'Restore', props);
  new CfnOutput(stack, 'RestoreStateMachineArn', { value: restore.stateMachine.stateMachineArn });
  const exportWorkflow = new ExportWorkflow(stack, 'Export', props);
  new CfnOutput(stack, 'ExportStateMachineArn', { value: exportWorkflow.stateMachine.stateMachineArn });
  const files = new FilesWorkflow(stack, 'Files', props);
  new CfnOutput(stack, 'FilesStateMachineArn', { value: files.stateMachine.stateMachineArn });
  const deepVerify = new DeepVerifyWorkflow(stack, 'DeepVerify', props);
  new CfnOutput(stack, 'DeepVerifyStateMachineArn', { value: deepVerify.stateMachine.stateMachineArn });
  const deepVerifyPolicy = new DeepVerifyPolicyWorkflow(stack, 'DeepVerifyPolicy', props);
  new CfnOutput(stack, 'DeepVerifyPolicyStateMachineArn', { value: deepVerifyPolicy.stateMachine.stateMachineArn });
  const prune = new PruneWorkflow(stack, 'Prune', props);
  new CfnOutput(stack, 'PruneStateMachineArn', { value: prune.stateMachine.stateMachineArn });
  for (const p of props.policies ?? []) {
    new scheduler.Schedule(stack, `Prune-${p.id}`, {
      description: `Lifeboat: apply policy '${p.id}' retention (Prune workflow)`,
      schedule: scheduler.ScheduleExpression.expression(props.pruneSchedule ?? 'cron(0 5 * * ? *)', TimeZone.of(p.schedule.timeZone)),
      target: new targets.StepFunctionsStartExecution(prune.stateMachine, {
        // Periods (days, ISO weeks, months) are counted in the policy's own time zone.
        input: scheduler.ScheduleTargetInput.fromObject({ policyId: p.id, timeZone: p.schedule.timeZone }),
        retryAttempts: 5,
        maxEventAge: Duration.hours(6),
      }),
    });
  }
  const gc = new GcWorkflow(stack, 'Gc', props);
  new CfnOutput(stack, 'GcStateMachineArn', { value: gc.stateMachine.stateMachineArn });
  for (const p of props.policies ?? []) {
    new scheduler.Schedule(stack, `DeepVerify-${p.id}`, {
      description: `Lifeboat: deep-verify a sample of the newest backups of policy '${p.id}'`,
      schedule: scheduler.ScheduleExpression.expression(props.deepVerifySchedule ?? 'cron(0 4 ? * SAT *)', TimeZone.of(p.schedule.timeZone)),
      target: new targets.StepFunctionsStartExecution(deepVerifyPolicy.stateMachine, {
        input: scheduler.ScheduleTargetInput.fromObject({ policyId: p.id, sample: props.deepVerifySample ?? 0.1 }),
        retryAttempts: 5,
        maxEventAge: Duration.hours(6),
      }),
    });
  }
  for (const r of props.repositories ?? []) {
    new scheduler.Schedule(stack, `Gc-${r.id}`, {
      description: `Lifeboat: garbage-collect repository '${r.id}'`,
      schedule: scheduler.ScheduleExpression.expression(props.gcSchedule ?? 'cron(0 3 ? * SUN *)', TimeZone.ETC_UTC),
      target: new targets.StepFunctionsStartExecution(gc.stateMachine, {
        input: scheduler.ScheduleTargetInput.fromObject({
          bucket: r.bucket,
          ...(r.endpoint ? { endpoint: r.endpoint } : {}),
          ...(r.objectLockDays ? { objectLockDays: r.objectLockDays } : {}),
        }),
        retryAttempts: 5,
        maxEventAge: Duration.hours(6),
      }),
    });
  }
  const replicate = new ReplicateWorkflow(stack, 'Replicate', props);
  new CfnOutput(stack, 'ReplicateStateMachineArn', { value: replicate.stateMachine.stateMachineArn });
  const replicatePolicy = new ReplicatePolicyWorkflow(stack, 'ReplicatePolicy', props);
  new CfnOutput(stack, 'ReplicatePolicyStateMachineArn', { value: replicatePolicy.stateMachine.stateMachineArn });
  const failover = new FailoverWorkflow(stack, 'Failover', props);
  new CfnOutput(stack, 'FailoverStateMachineArn', { value: failover.stateMachine.stateMachineArn });
  const failoverPlan = new FailoverPlanWorkflow(stack, 'FailoverPlan', { ...props, test: false });
  new CfnOutput(stack, 'FailoverPlanStateMachineArn', { value: failoverPlan.stateMachine.stateMachineArn });
  const testFailover = new FailoverPlanWorkflow(stack, 'TestFailover', { ...props, test: true });
  new CfnOutput(stack, 'TestFailoverStateMachineArn', { value: testFailover.stateMachine.stateMachineArn });
  return { restore, files, deepVerify, deepVerifyPolicy, prune, gc, replicate, replicatePolicy, failover, failoverPlan, testFailover, export: exportWorkflow };
}
