/**
 * A Distributed Map over a list a planning function wrote to the stack's run bucket: one
 * child Standard execution per item (its own history, its own quotas), the items read by
 * the Map itself (ItemReader) and the children's results written back to the bucket
 * (ResultWriter) instead of collected into the parent's payload. The shape every per-policy
 * workflow that iterates VMs or backups uses, so none of their payloads or histories grows
 * with the fleet.
 */
import { Stack, type CfnElement } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { acknowledge } from './nag.ts';

/** Where the Distributed Maps write their children's results (a manifest and result files per Map Run). */
export const RUN_RESULTS_PREFIX = 'runs/results';

export interface ListMapProps {
  runBucket: s3.IBucket;
  /** JSONPath of the list's key in the bucket, e.g. `$.vmList.key`. */
  keyPath: string;
  /** The child state machine's label (`<parent>/<label>`). */
  label: string;
  /** Children at once: a number, or (`maxConcurrencyPath`) a path to one in the state's input. */
  maxConcurrency?: number;
  maxConcurrencyPath?: string;
  comment: string;
  resultPath: string | null;
  /** Children that may fail without failing the Map (default: none). */
  toleratedFailurePercentage?: number;
}

/** The Map state; its scope must render ResultWriter v2 (`useResultWriterV2(scope)`). */
export function listMap(scope: Construct, id: string, p: ListMapProps): sfn.DistributedMap {
  return new sfn.DistributedMap(scope, id, {
    comment: p.comment,
    itemReader: new sfn.S3JsonItemReader({ bucket: p.runBucket, key: sfn.JsonPath.stringAt(p.keyPath) }),
    resultWriterV2: new sfn.ResultWriterV2({ bucket: p.runBucket, prefix: RUN_RESULTS_PREFIX }),
    mapExecutionType: sfn.StateMachineType.STANDARD,
    ...(p.maxConcurrencyPath !== undefined ? { maxConcurrencyPath: p.maxConcurrencyPath } : { maxConcurrency: p.maxConcurrency ?? 0 }),
    ...(p.toleratedFailurePercentage !== undefined ? { toleratedFailurePercentage: p.toleratedFailurePercentage } : {}),
    label: p.label,
    resultPath: p.resultPath === null ? sfn.JsonPath.DISCARD : p.resultPath,
  });
}

/** Render ResultWriter v2 (the deprecated ResultWriter prints warnings at every synth); scoped to the workflow's construct. */
export function useResultWriterV2(scope: Construct): void {
  scope.node.setContext('@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2', true);
}

/**
 * Acknowledges the grants CDK writes for a Distributed Map: its child executions (named by
 * the Map Run, so only a pattern under this state machine's own executions can name them),
 * and the run bucket's objects (the list's key is the run's, a JSONPath; results go under
 * RUN_RESULTS_PREFIX).
 */
export function acknowledgeListMap(stateMachine: sfn.StateMachine, runBucket: s3.IBucket, ...labels: string[]): void {
  const stack = Stack.of(stateMachine);
  const machine = stack.getLogicalId(stateMachine.node.defaultChild as CfnElement);
  const bucket = stack.getLogicalId(runBucket.node.defaultChild as CfnElement);
  const executions = `arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"${machine}"}]}]}`;
  acknowledge(
    stateMachine,
    'A Distributed Map starts and stops its own child executions, whose names the Map Run makes: the grant is limited to executions of this state machine. ' +
      "Its item reader reads the list its planning step wrote, whose key is the run's (a JSONPath), and its result writer writes under the run results prefix, both in the stack's run bucket.",
    `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::<${bucket}>/*]`,
    `AwsSolutions-IAM5[Resource::${executions}:*]`,
    ...labels.map((label) => `AwsSolutions-IAM5[Resource::${executions}/${label}:*]`),
  );
}
