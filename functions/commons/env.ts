/**
 * The handlers' configuration. In AWS the CDK app sets it in the environment, read once
 * into a frozen object at the Lambda entry (`readEnv`); the embedded stack builds its own
 * and passes it to `createClients` (local/stack.ts).
 */
export interface FunctionEnv {
  tableName: string;
  /** The stack's own bucket, where Plan writes each Backup run's VM list (`runs/`); unset for functions that do not need it. */
  runBucket?: string;
  region: string;
  /** Local endpoints (embedded stack); unset in AWS. */
  dynamodbEndpoint?: string;
  s3Endpoint?: string;
  /** The embedded stack's Step Functions API (SendTaskSuccess of the slot queue, OperatorApi's reads); unset in AWS. */
  sfnEndpoint?: string;
  /** Key file wrapping the repository key (embedded stack); KMS key id in AWS. */
  keyFile?: string;
  kmsKeyId?: string;
  /** OperatorApi: the primary repository and the Backup workflow (it reads executions through `sfnEndpoint` in the embedded stack). */
  repositoryBucket?: string;
  backupStateMachineArn?: string;
}

function required(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set; the function's deployment must define it`);
  return v;
}

export function readEnv(): FunctionEnv {
  return Object.freeze({
    tableName: required('CATALOG_TABLE'),
    runBucket: process.env.LIFEBOAT_RUN_BUCKET,
    region: process.env.AWS_REGION ?? 'us-east-1',
    dynamodbEndpoint: process.env.LIFEBOAT_DYNAMODB_ENDPOINT,
    s3Endpoint: process.env.LIFEBOAT_S3_ENDPOINT,
    sfnEndpoint: process.env.LIFEBOAT_SFN_ENDPOINT,
    keyFile: process.env.LIFEBOAT_KEY_FILE,
    kmsKeyId: process.env.REPOSITORY_KMS_KEY_ID,
    repositoryBucket: process.env.REPOSITORY_BUCKET,
    backupStateMachineArn: process.env.BACKUP_STATE_MACHINE_ARN,
  });
}
