/**
 * The embedded stack's operator side: the console server (read-only API, pages, actions)
 * and, when the configuration names a webhook, the alert notifier, both over the same
 * read model the `OperatorApi` Lambda function uses in AWS, reading through the stack's
 * own DynamoDB, S3 and Step Functions endpoints.
 */
import { DescribeExecutionCommand, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { LifeboatConfig } from '../core/config.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, s3Client } from '../core/s3-store.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { operatorDeps } from '../functions/operator/api.ts';
import { AlertNotifier } from './alert-notifier.ts';
import { LOCAL_REGION, type ResolvedTemplate } from './asl.ts';
import { startConsoleServer, type ConsoleWorkflow } from './console/server.ts';

export interface OperatorOptions {
  dataDir: string;
  config: LifeboatConfig;
  catalog: Catalog;
  db: DynamoDBClient;
  s3: string;
  /** The primary repository's bucket: movers register and report progress there. */
  bucket: string;
  sfn: string;
  backupStateMachineArn: string;
  template: ResolvedTemplate;
  port: number;
  onAlert?: (event: string, fields: Record<string, unknown>) => void;
}

export async function startOperator(o: OperatorOptions): Promise<{ url: string; close(): Promise<void> }> {
  const sfn = new SFNClient({ region: LOCAL_REGION, endpoint: o.sfn, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  const s3 = s3Client({ region: LOCAL_REGION, endpoint: o.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  const recovery = new RecoveryCatalog(DynamoDBDocumentClient.from(o.db, { marshallOptions: { removeUndefinedValues: true } }), o.catalog.table);
  const deps = operatorDeps({ catalog: o.catalog, recovery, s3, bucket: o.bucket, sfn, backupStateMachineArn: o.backupStateMachineArn });
  const arn = (workflow: ConsoleWorkflow) => {
    const m = Object.values(o.template.stateMachines).find((x) => x.logicalId.replace(/StateMachine[0-9A-F]{8}$/, '') === workflow);
    if (!m) throw new Error(`the stack has no ${workflow} workflow`);
    return m.arn;
  };
  const server = await startConsoleServer({
    port: o.port, deps, catalog: o.catalog, groups: o.config.moverGroups.map((g) => g.id),
    start: async (workflow, input) => {
      const { executionArn } = await sfn.send(new StartExecutionCommand({ stateMachineArn: arn(workflow), input: JSON.stringify(input) }));
      return { name: executionArn!.split(':').pop()! };
    },
    describe: async (workflow, name) => {
      try {
        const d = await sfn.send(new DescribeExecutionCommand({ executionArn: `${arn(workflow).replace(':stateMachine:', ':execution:')}:${name}` }));
        return { status: d.status!, ...(d.output ? { output: d.output } : {}), ...(d.error ? { error: d.error } : {}), ...(d.cause ? { cause: d.cause } : {}) };
      } catch (err) {
        if ((err as Error).name === 'ExecutionDoesNotExist') return undefined;
        throw err;
      }
    },
  });
  const webhook = o.config.notifications?.webhook;
  const notifier = webhook ? new AlertNotifier({ dataDir: o.dataDir, url: webhook.url, checkSeconds: webhook.checkSeconds ?? 60, deps, ...(o.onAlert ? { onEvent: o.onAlert } : {}) }) : undefined;
  notifier?.start();
  return {
    url: server.url,
    close: async () => {
      await notifier?.stop();
      await server.close();
      sfn.destroy();
      s3.destroy();
    },
  };
}
