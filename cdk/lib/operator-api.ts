/**
 * The read-only operator API in AWS: the `OperatorApi` function (functions/operator/api.ts)
 * behind a Lambda function URL with IAM auth (callers sign with SigV4, service `lambda`;
 * `lifeboat --stack` does, with the operator's own credentials), reading the catalog, the
 * mover records and progress objects of the primary repository, and the Backup workflow's
 * executions. Its URL is the stack output `OperatorApiUrl`.
 */
import { CfnOutput, Stack } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';

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
    props.backup.grantRead(fn);
    this.url = fn.addFunctionUrl({ authType: lambda.FunctionUrlAuthType.AWS_IAM });
    new CfnOutput(Stack.of(this), 'OperatorApiUrl', { value: this.url.url, description: 'The read-only operator API (IAM auth): `lifeboat --stack` reads VMs, backups, runs and alerts from it' });
  }
}
