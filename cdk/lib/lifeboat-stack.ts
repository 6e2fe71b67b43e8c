/**
 * The Lifeboat control plane: catalog table, repository bucket, the Lambda functions,
 * one Activity per mover group and the Backup workflow.
 */
import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct } from 'constructs';
import { fileURLToPath } from 'node:url';
import { lambdaFunctions, type LambdaFunctionId } from '../../functions/registry.ts';
import type { LifeboatConfig } from '../../core/config.ts';
import { BackupWorkflow } from './backup-workflow.ts';
import { addRecoveryWorkflows } from './recovery-workflows.ts';

const projectRoot = fileURLToPath(new URL('../../', import.meta.url));

export interface LifeboatStackProps extends StackProps {
  /** The validated deployment configuration (core/config.ts): groups, hosts, repositories, policies. */
  config: LifeboatConfig;
}

export class LifeboatStack extends Stack {
  readonly table: dynamodb.TableV2;
  readonly bucket: s3.Bucket;
  readonly backup: BackupWorkflow;
  readonly activities: Record<string, sfn.Activity>;

  constructor(scope: Construct, id: string, props: LifeboatStackProps) {
    super(scope, id, props);
    const moverGroups = props.config.moverGroups.map((g) => g.id);

    this.table = new dynamodb.TableV2(this, 'Catalog', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billing: dynamodb.Billing.onDemand(),
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.bucket = new s3.Bucket(this, 'Repository', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      encryption: s3.BucketEncryption.S3_MANAGED,
      versioned: true,
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [{ abortIncompleteMultipartUploadAfter: Duration.days(7) }],
    });

    const functions = {} as Record<LambdaFunctionId, lambda.IFunction>;
    for (const [fid, def] of Object.entries(lambdaFunctions) as [LambdaFunctionId, (typeof lambdaFunctions)[LambdaFunctionId]][]) {
      const f = new nodejs.NodejsFunction(this, fid, {
        entry: `${projectRoot}${def.entry}`,
        handler: def.handler,
        runtime: lambda.Runtime.NODEJS_24_X,
        architecture: lambda.Architecture.ARM_64,
        projectRoot,
        depsLockFilePath: `${projectRoot}package-lock.json`,
        bundling: { format: nodejs.OutputFormat.ESM, target: 'node24', minify: true, sourceMap: true },
        environment: { CATALOG_TABLE: this.table.tableName, LIFEBOAT_FUNCTION: fid },
      });
      this.table.grantReadWriteData(f);
      functions[fid] = f;
    }
    this.bucket.grantRead(functions.Verify);

    this.activities = Object.fromEntries(moverGroups.map((g) => [g, new sfn.Activity(this, `MoverGroup-${g}`, { activityName: `${this.stackName}-mover-${g}` })]));
    // Only groups that serve hosts take backups; a DR-only group restores and replicates.
    const backupGroups = Object.fromEntries(props.config.moverGroups.filter((g) => g.hosts.length > 0).map((g) => [g.id, this.activities[g.id]!]));
    this.backup = new BackupWorkflow(this, 'Backup', { functions, activities: backupGroups });
    // Restore, deep verify (and prune): any group may restore or verify, the execution names it.
    addRecoveryWorkflows(this, { functions, activities: this.activities });

    new CfnOutput(this, 'CatalogTableName', { value: this.table.tableName });
    new CfnOutput(this, 'RepositoryBucketName', { value: this.bucket.bucketName });
    new CfnOutput(this, 'BackupStateMachineArn', { value: this.backup.stateMachine.stateMachineArn });
    for (const [g, a] of Object.entries(this.activities)) new CfnOutput(this, `ActivityArn${g.replace(/[^A-Za-z0-9]/g, '')}`, { value: a.activityArn });
  }
}

