/**
 * Logging and tracing for every state machine of the stack, whoever built it: execution
 * history to CloudWatch Logs at level ALL without execution data (inputs and outputs
 * carry VM names and paths; the console's execution view keeps them), and X-Ray tracing.
 * Applied to the L1 resource so a workflow construct does not have to remember it.
 */
import { RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { acknowledge, arnWildcardFinding } from './nag.ts';
import type { Construct, IConstruct } from 'constructs';

/** Every L2 state machine under `scope`. */
export function stateMachinesIn(scope: IConstruct): sfn.StateMachine[] {
  return scope.node.findAll().filter((c): c is sfn.StateMachine => c instanceof sfn.StateMachine);
}

/** Logs (ALL, no execution data) and X-Ray for one state machine; a no-op if it already logs. */
export function observeStateMachine(scope: Construct, sm: sfn.StateMachine, retention = logs.RetentionDays.ONE_YEAR): void {
  const cfn = sm.node.defaultChild as sfn.CfnStateMachine;
  if (!cfn.loggingConfiguration) {
    const id = sm.node.path.replace(/^[^/]+\//, '').replace(/[^A-Za-z0-9]/g, '');
    const group = new logs.LogGroup(scope, `${id}Logs`, {
      logGroupName: `/aws/vendedlogs/states/${Stack.of(scope).stackName}-${id}`,
      retention,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    cfn.loggingConfiguration = {
      level: sfn.LogLevel.ALL,
      includeExecutionData: false,
      destinations: [{ cloudWatchLogsLogGroup: { logGroupArn: group.logGroupArn } }],
    };
    // What CDK grants for `logs:` on a StateMachine: log delivery APIs take no resource ARN.
    sm.addToRolePolicy(
      new iam.PolicyStatement({
        actions: [
          'logs:CreateLogDelivery',
          'logs:GetLogDelivery',
          'logs:UpdateLogDelivery',
          'logs:DeleteLogDelivery',
          'logs:ListLogDeliveries',
          'logs:PutResourcePolicy',
          'logs:DescribeResourcePolicies',
          'logs:DescribeLogGroups',
        ],
        resources: ['*'],
      }),
    );
  }
  if (!cfn.tracingConfiguration) {
    cfn.tracingConfiguration = { enabled: true };
    sm.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['xray:PutTraceSegments', 'xray:PutTelemetryRecords', 'xray:GetSamplingRules', 'xray:GetSamplingTargets'],
        resources: ['*'],
      }),
    );
  }
  acknowledge(
    sm.role,
    'CloudWatch Logs vended log delivery and X-Ray trace APIs take no resource ARN; Lambda invoke grants end in :* to cover the versions of each function the workflow calls (CDK default).',
    'AwsSolutions-IAM5[Resource::*]',
    ...Stack.of(sm)
      .node.findAll()
      .filter((c) => c instanceof lambda.Function)
      .map((f) => arnWildcardFinding(f, ':*')),
  );
}
