/**
 * The embedded stack: Lifeboat on one machine. dynalite (DynamoDB API) and s3rver (S3
 * API) persist under the data folder; the CDK app's state machines run in process; the
 * Step Functions API that movers and the command line use is served over HTTP.
 */
import { CreateTableCommand, DescribeTableCommand, DynamoDBClient, ResourceNotFoundException } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import dynalite from 'dynalite';
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { deriveKeys, type RepositoryKeys } from '../core/format.ts';
import { KeyFileWrapper, loadMasterKey } from '../core/keyring.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { Catalog } from '../functions/catalog/catalog.ts';
import { syncConfig } from '../functions/sync-config.ts';
import { resetClients } from '../functions/commons/clients.ts';
import { startLocalS3 } from './s3-server.ts';
import { ActivityBroker } from './activities.ts';
import { LOCAL_REGION, resolveTemplate, synthesizeTemplate, type ResolvedTemplate } from './asl.ts';
import { LocalExecutions } from './executions.ts';
import { startSfnApi } from './sfn-api.ts';

export const LOCAL_CREDENTIALS = LOCAL_ENDPOINT_CREDENTIALS;
export const CATALOG_TABLE = 'lifeboat-catalog';
export const REPOSITORY_BUCKET = 'lifeboat-repository';

export interface EmbeddedStackOptions {
  dataDir: string;
  /** The deployment configuration (default: loadConfig(), i.e. lifeboat.config.json or $LIFEBOAT_CONFIG). */
  config?: LifeboatConfig;
  /** 0 picks free ports. */
  ports?: { dynamodb?: number; s3?: number; sfn?: number };
}

/** What clients of a running stack need to know (written to <dataDir>/endpoints.json). */
export interface StackEndpoints {
  dataDir: string;
  region: string;
  dynamodb: string;
  s3: string;
  sfn: string;
  table: string;
  bucket: string;
  /** The bucket of every configured repository, by repository id (the first is `bucket`). */
  buckets: Record<string, string>;
  keyFile: string;
  backupStateMachineArn: string;
  /** Every state machine's ARN by workflow name (`Backup`, `Restore`, `DeepVerify`, ...). */
  stateMachines: Record<string, string>;
  activities: Record<string, string>;
}

export class EmbeddedStack {
  readonly endpoints: StackEndpoints;
  readonly template: ResolvedTemplate;
  readonly catalog: Catalog;
  readonly config: LifeboatConfig;
  private readonly closers: (() => Promise<void>)[];

  private constructor(endpoints: StackEndpoints, template: ResolvedTemplate, catalog: Catalog, config: LifeboatConfig, closers: (() => Promise<void>)[]) {
    this.endpoints = endpoints;
    this.config = config;
    this.template = template;
    this.catalog = catalog;
    this.closers = closers;
  }

  static async start(opts: EmbeddedStackOptions): Promise<EmbeddedStack> {
    const dataDir = resolve(opts.dataDir);
    await mkdir(dataDir, { recursive: true });
    const closers: (() => Promise<void>)[] = [];
    const closeAll = async () => {
      for (const c of closers.reverse()) await c().catch(() => {});
    };
    try {
      const dyn = dynalite({ path: join(dataDir, 'dynamodb'), createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
      await new Promise<void>((ok, fail) => dyn.once('error', fail).listen(opts.ports?.dynamodb ?? 0, '127.0.0.1', ok));
      closers.push(() => new Promise((ok) => dyn.close(() => ok())));
      const dynamodb = `http://127.0.0.1:${(dyn.address() as AddressInfo).port}`;

      const config = opts.config ?? loadConfig();
      const buckets = Object.fromEntries(config.repositories.map((r, i) => [r.id, i === 0 ? REPOSITORY_BUCKET : `${REPOSITORY_BUCKET}-${r.id}`]));
      await mkdir(join(dataDir, 's3'), { recursive: true });
      const s3server = await startLocalS3({ directory: join(dataDir, 's3'), buckets: Object.values(buckets), port: opts.ports?.s3 ?? 0 });
      closers.push(() => s3server.close());
      const s3 = s3server.url;

      const template = resolveTemplate(synthesizeTemplate(join(dataDir, 'cdk.out'), config));
      const backup = Object.values(template.stateMachines).find((m) => m.logicalId.startsWith('Backup'));
      if (!backup) throw new Error('the CDK app synthesized no Backup state machine');

      const db = new DynamoDBClient({ region: LOCAL_REGION, endpoint: dynamodb, credentials: LOCAL_CREDENTIALS });
      closers.push(async () => db.destroy());
      // The catalog's key schema comes from the CDK app, like the state machines do.
      const catalogSchema = Object.entries(template.tables).find(([lid]) => lid.startsWith('Catalog'))?.[1];
      if (!catalogSchema) throw new Error('the CDK app synthesized no Catalog table');
      await ensureTable(db, CATALOG_TABLE, catalogSchema);

      const keyFile = join(dataDir, 'repository.keyfile');
      const store = new S3ObjectStore(s3Client({ region: LOCAL_REGION, endpoint: s3, forcePathStyle: true, credentials: LOCAL_CREDENTIALS }), REPOSITORY_BUCKET);
      await loadMasterKey(store, await KeyFileWrapper.load(keyFile, { create: true }), { create: true });

      // The handlers read their configuration from the environment, as in Lambda.
      Object.assign(process.env, {
        CATALOG_TABLE, AWS_REGION: LOCAL_REGION, LIFEBOAT_DYNAMODB_ENDPOINT: dynamodb, LIFEBOAT_S3_ENDPOINT: s3, LIFEBOAT_KEY_FILE: keyFile,
        // In-process handlers: no CloudWatch to send EMF to, so Powertools Metrics stays quiet.
        POWERTOOLS_METRICS_DISABLED: 'true', POWERTOOLS_SERVICE_NAME: 'lifeboat-local',
      });
      resetClients();
      const catalog = new Catalog(DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } }), CATALOG_TABLE);
      // As a deploy does in AWS (a custom resource), the configuration's hosts and policies go into the catalog.
      await syncConfig({ config, buckets }, { catalog });

      const broker = new ActivityBroker();
      closers.push(async () => broker.close());
      const executions = new LocalExecutions({ dataDir, template, broker });
      await executions.load();
      closers.push(() => executions.close());
      const api = await startSfnApi({ port: opts.ports?.sfn ?? 0, broker, executions });
      closers.push(() => api.close());

      const endpoints: StackEndpoints = {
        dataDir, region: LOCAL_REGION, dynamodb, s3, sfn: api.url, table: CATALOG_TABLE, bucket: REPOSITORY_BUCKET, buckets, keyFile,
        backupStateMachineArn: backup.arn, activities: template.activities,
        // A workflow's name is its construct id: the logical id minus `StateMachine<hash>`.
        stateMachines: Object.fromEntries(Object.values(template.stateMachines).map((m) => [m.logicalId.replace(/StateMachine[0-9A-F]{8}$/, ''), m.arn])),
      };
      return new EmbeddedStack(endpoints, template, catalog, config, closers);
    } catch (err) {
      await closeAll();
      throw err;
    }
  }

  async stop(): Promise<void> {
    for (const c of this.closers.reverse()) await c().catch(() => {});
  }
}

/** The stack's repository as a client (the CLI, a restore, a test) opens it. */
export async function openRepository(e: StackEndpoints): Promise<{ store: ObjectStore; keys: RepositoryKeys; masterKey: Buffer }> {
  const store = new S3ObjectStore(s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_CREDENTIALS }), e.bucket);
  const masterKey = await loadMasterKey(store, await KeyFileWrapper.load(e.keyFile));
  return { store, keys: deriveKeys(masterKey), masterKey };
}

async function ensureTable(db: DynamoDBClient, name: string, schema: ResolvedTemplate['tables'][string]): Promise<void> {
  try {
    await db.send(new DescribeTableCommand({ TableName: name }));
  } catch (err) {
    if (!(err instanceof ResourceNotFoundException)) throw err;
    await db.send(new CreateTableCommand({
      TableName: name,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: schema.AttributeDefinitions as never,
      KeySchema: schema.KeySchema as never,
    }));
  }
}
