/**
 * The operator API in AWS: the `OperatorApi` function (functions/operator/api.ts) behind a
 * Lambda function URL with IAM auth (callers sign with SigV4, service `lambda`;
 * `lifeboat --stack` and `lifeboat console --stack` do, with the operator's own
 * credentials), reading the catalog, the mover records and progress objects of the primary
 * repository, and the Backup workflow's executions; its one write is a VM put into the
 * inventory (`POST /api/vms`, `lifeboat vm add`). Its URL is the stack output `OperatorApiUrl`.
 */
import { ArnFormat, CfnOutput, Fn, Stack, type CfnElement } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { acknowledge } from './nag.ts';

export interface OperatorApiProps {
  fn: lambda.IFunction;
  bucket: s3.IBucket;
  backup: sfn.IStateMachine;
}

export class OperatorApi extends Construct {
  readonly url: lambda.FunctionUrl;

  constructor(scope: Construct, id: string, props: OperatorApiProps) {
    super(scope, id);
    const fn = props.fn as lambda.Function;
    fn.addEnvironment('REPOSITORY_BUCKET', props.bucket.bucketName);
    fn.addEnvironment('BACKUP_STATE_MACHINE_ARN', props.backup.stateMachineArn);
    // Exactly what the API reads of the workflow (cdk/lib/function-access.ts, backupExecutions).
    fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['states:ListExecutions'], resources: [props.backup.stateMachineArn] }));
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['states:DescribeExecution'],
        resources: [
          Stack.of(this).formatArn({
            service: 'states',
            resource: 'execution',
            resourceName: `${Fn.select(6, Fn.split(':', props.backup.stateMachineArn))}:*`,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          }),
        ],
      }),
    );
    const backupLid = Stack.of(this).getLogicalId(props.backup.node.defaultChild as CfnElement);
    acknowledge(
      fn,
      "The operator API describes any execution of the Backup workflow (a run is named by its execution): execution names are not known in advance, so only that state machine's executions (:*) are allowed.",
      `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"${backupLid}"}]}]}:*]`,
    );
    this.url = fn.addFunctionUrl({ authType: lambda.FunctionUrlAuthType.AWS_IAM });
    new CfnOutput(Stack.of(this), 'OperatorApiUrl', {
      value: this.url.url,
      description: 'The operator API (IAM auth): `lifeboat --stack` reads VMs, backups, runs, progress and alerts from it, and adds VMs (POST /api/vms)',
    });
  }
}
