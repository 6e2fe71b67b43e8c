/**
 * The embedded stack: Lifeboat on one machine. dynalite (DynamoDB API) and s3rver (S3
 * API) persist under the data folder; the CDK app's state machines run in process; the
 * Step Functions API that movers and the command line use is served over HTTP.
 */
import { CreateTableCommand, DescribeTableCommand, DynamoDBClient, ResourceNotFoundException } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import dynalite from 'dynalite';
import { unwatchFile, watchFile } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { openRepository as openRepositoryOf, type Repository } from '../repository/open.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, endpointSettings, s3Client } from '../core/s3-store.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { endpointKey, location, type RepositoryLocation } from '../contracts/endpoints.ts';
import { Catalog } from '../functions/catalog/catalog.ts';
import { createClients, type ClientWiring } from '../functions/commons/clients.ts';
import type { FunctionEnv } from '../functions/commons/env.ts';
import { LocalFunctions } from './lambdas.ts';
import { loadEndpointPorts, saveEndpointPorts, startOnSavedPort } from './endpoint-ports.ts';
import { startLocalS3, type LocalS3 } from './s3-server.ts';
import { lockDataDir } from './stack-lock.ts';
import { StackUnavailable } from '../contracts/errors.ts';
import { ActivityBroker } from './activities.ts';
import { LOCAL_REGION, resolveTemplate, synthesizeTemplate, type ResolvedTemplate } from './asl.ts';
import { LocalExecutions } from './executions.ts';
import { localizeConfig } from './localize-config.ts';
import { reconcileStoppedRuns } from './reconcile-stopped.ts';
import { startSfnApi } from './sfn-api.ts';
import { startOperator } from './operator.ts';
import { resolveQuotas, type StepFunctionsQuotas } from './quotas.ts';

/** The functions' AWS calls as the embedded stack runs them (the IAM coverage test and the cost bench count them). */
export { observeSdkCalls, type SdkCall } from '../functions/commons/clients.ts';

export const LOCAL_CREDENTIALS = LOCAL_ENDPOINT_CREDENTIALS;
export const CATALOG_TABLE = 'lifeboat-catalog';
export const REPOSITORY_BUCKET = 'lifeboat-repository';
/**
 * Every invocation in this process shares the functions' clients; in AWS each runs in its
 * own container with its own clients, so no socket pool is shared: no cap here either.
 */
export const FUNCTION_CLIENT_WIRING: ClientWiring = { maxSockets: Infinity };

/** The control plane's functions on a DynamoDB endpoint alone, wired as the stack wires them (benches of the catalog's functions without a whole stack). */
export function catalogFunctions(dynamodbEndpoint: string, tableName: string): LocalFunctions {
  return new LocalFunctions(createClients({ tableName, region: LOCAL_REGION, dynamodbEndpoint }, FUNCTION_CLIENT_WIRING));
}

export interface EmbeddedStackOptions {
  dataDir: string;
  /** The deployment configuration (default: loadConfig(), i.e. lifeboat.config.json or $LIFEBOAT_CONFIG). */
  config?: LifeboatConfig;
  /** 0 picks free ports. */
  ports?: { dynamodb?: number; s3?: number; sfn?: number; console?: number };
  /** Told of each alert delivered to (or failing to reach) the configured webhook (local/alert-notifier.ts). */
  onAlert?: (event: string, fields: Record<string, unknown>) => void;
  /**
   * Told when the repository key file changes while the stack runs: the problem (a
   * Stack.Unavailable naming the file and what to do) when the new file does not open the
   * repository, undefined when it does (again). The stack and its movers keep the key they
   * loaded, but the next start would be refused, so this is said at once, not at restart.
   */
  onKeyFile?: (problem: StackUnavailable | undefined) => void;
  /** How often the key file is looked at (default 2000 ms). */
  keyFileCheckMs?: number;
  /**
   * Puts something in front of the S3 server of a repository on another endpoint (the
   * reliability suite's fault proxy): given the repository id and the server's URL, returns
   * the URL every client (jobs, functions, movers) is given for that endpoint.
   */
  endpointFront?: (repositoryId: string, serverUrl: string) => Promise<string>;
  /**
   * Step Functions' hard quotas to enforce (local/quotas.ts): AWS's unless a test lowers one
   * to reach it cheaply. Deliberately not read from the environment.
   */
  quotas?: Partial<StepFunctionsQuotas>;
  /** The clock the local S3 front judges Object Lock retention by (tests move it; default: the system's). */
  s3Clock?: () => Date;
}

/** What clients of a running stack need to know (written to <dataDir>/endpoints.json). */
export interface StackEndpoints {
  dataDir: string;
  region: string;
  dynamodb: string;
  s3: string;
  sfn: string;
  /** The operator endpoint: the web console, and the read-only API under /api/ (local/console/server.ts). */
  console: string;
  table: string;
  bucket: string;
  /** The bucket of every configured repository, by repository id (the first is `bucket`). */
  buckets: Record<string, string>;
  /**
   * Every configured repository by id: its bucket and, for one configured on another
   * endpoint, that endpoint as the stack serves it (a second s3rver of its own).
   */
  repositories: Record<string, RepositoryLocation>;
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
  private readonly s3Servers: LocalS3[];
  private readonly functions: { local: LocalFunctions; env: FunctionEnv };

  private constructor(
    endpoints: StackEndpoints,
    template: ResolvedTemplate,
    catalog: Catalog,
    config: LifeboatConfig,
    closers: (() => Promise<void>)[],
    s3Servers: LocalS3[],
    functions: { local: LocalFunctions; env: FunctionEnv },
  ) {
    this.s3Servers = s3Servers;
    this.functions = functions;
    this.endpoints = endpoints;
    this.config = config;
    this.template = template;
    this.catalog = catalog;
    this.closers = closers;
  }

  /** S3 requests by kind (PUT, LIST, GET, HEAD, DELETE) the stack's S3 servers answered since it started, from every client. */
  s3RequestKinds(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.s3Servers) for (const [k, n] of s.requestKinds) out[k] = (out[k] ?? 0) + n;
    return out;
  }

  /** Sends the functions' requests to the stack's own S3 through `url` (a fault proxy in front of it); undefined: straight to it again. */
  routeFunctionsS3(url: string | undefined): void {
    this.functions.local.useClients(createClients({ ...this.functions.env, ...(url ? { s3Endpoint: url } : {}) }, FUNCTION_CLIENT_WIRING));
  }

  static async start(opts: EmbeddedStackOptions): Promise<EmbeddedStack> {
    const dataDir = resolve(opts.dataDir);
    const quotas = resolveQuotas(opts.quotas);
    await mkdir(dataDir, { recursive: true });
    const closers: (() => Promise<void>)[] = [await lockDataDir(dataDir)];
    const closeAll = async () => {
      for (const c of closers.reverse()) await c().catch(() => {});
    };
    try {
      const dyn = dynalite({ path: join(dataDir, 'dynamodb'), createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
      await new Promise<void>((ok, fail) => dyn.once('error', fail).listen(opts.ports?.dynamodb ?? 0, '127.0.0.1', ok));
      closers.push(() => new Promise((ok) => dyn.close(() => ok())));
      const dynamodb = `http://127.0.0.1:${(dyn.address() as AddressInfo).port}`;

      const configured = opts.config ?? loadConfig();
      // The stack's own buckets in one s3rver; a repository on another endpoint keeps its bucket name, on that endpoint.
      const buckets = Object.fromEntries(
        configured.repositories.map((r, i) => [r.id, r.endpoint ? (r.bucket ?? r.id) : i === 0 ? REPOSITORY_BUCKET : `${REPOSITORY_BUCKET}-${r.id}`]),
      );
      // A repository configured with Object Lock gets it on the local S3 front too (local/s3-object-lock.ts).
      const objectLock = Object.fromEntries(configured.repositories.filter((r) => r.objectLock && !r.endpoint).map((r) => [buckets[r.id]!, r.objectLock!]));
      const s3Servers: LocalS3[] = [];
      const startS3 = async (dir: string, names: string[], port = 0) => {
        await mkdir(dir, { recursive: true });
        const server = await startLocalS3({ directory: dir, buckets: names, port, objectLock, ...(opts.s3Clock ? { now: opts.s3Clock } : {}) });
        s3Servers.push(server);
        closers.push(() => server.close());
        return server.url;
      };
      const s3 = await startS3(
        join(dataDir, 's3'),
        configured.repositories.filter((r) => !r.endpoint).map((r) => buckets[r.id]!),
        opts.ports?.s3,
      );
      // Every other endpoint the configuration names becomes an s3rver of its own (own data folder), on the
      // port it had before (endpoint-ports.ts): its URL is in catalog records and execution histories.
      const endpointUrls = new Map<string, string>();
      const ports = await loadEndpointPorts(dataDir);
      for (const r of configured.repositories) {
        if (!r.endpoint || endpointUrls.has(endpointKey(r.endpoint))) continue;
        const on = configured.repositories.filter((x) => x.endpoint && endpointKey(x.endpoint) === endpointKey(r.endpoint));
        const folder = `s3-${r.id}`;
        const { server: url } = await startOnSavedPort(ports[folder], (port) =>
          startS3(
            join(dataDir, folder),
            on.map((x) => buckets[x.id]!),
            port,
          ),
        );
        ports[folder] = Number(new URL(url).port);
        endpointUrls.set(endpointKey(r.endpoint), opts.endpointFront ? await opts.endpointFront(r.id, url) : url);
      }
      if (endpointUrls.size > 0) await saveEndpointPorts(dataDir, ports);
      const config = localizeConfig(configured, dataDir, (e) => endpointUrls.get(endpointKey(e))!);
      const repositories = Object.fromEntries(config.repositories.map((r) => [r.id, location(buckets[r.id]!, r.endpoint)]));

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
      const localS3 = s3Client({ region: LOCAL_REGION, endpoint: s3, forcePathStyle: true, credentials: LOCAL_CREDENTIALS });
      const store = new S3ObjectStore(localS3, REPOSITORY_BUCKET);
      await openRepositoryOf({ store, bucket: REPOSITORY_BUCKET, keys: { keyFile }, create: true }).catch((err: unknown) => {
        throw new StackUnavailable(`the embedded stack cannot start on ${dataDir}: ${(err as Error).message}`, err);
      });

      const onKeyFile = opts.onKeyFile;
      if (onKeyFile) {
        let checking = Promise.resolve();
        watchFile(keyFile, { interval: opts.keyFileCheckMs ?? 2000 }, (now, before) => {
          if (now.mtimeMs === before.mtimeMs && now.ino === before.ino && now.size === before.size) return;
          checking = checking.then(async () => {
            try {
              await openRepositoryOf({ store, bucket: REPOSITORY_BUCKET, keys: { keyFile } });
              onKeyFile(undefined);
            } catch (err) {
              onKeyFile(
                new StackUnavailable(
                  `the repository key file ${keyFile} changed while the stack runs, and ${(err as Error).message}. ` +
                    'The running stack and its movers keep the key they loaded at start, but the next start will be refused: put back the original key file now',
                  err,
                ),
              );
            }
          });
        });
        closers.push(async () => {
          unwatchFile(keyFile);
          await checking;
        });
      }

      // The functions get the stack's own clients, as the Lambda entry builds them from its environment in AWS.
      // In-process handlers: no CloudWatch to send EMF to, so Powertools Metrics stays quiet.
      Object.assign(process.env, { POWERTOOLS_METRICS_DISABLED: 'true', POWERTOOLS_SERVICE_NAME: 'lifeboat-local' });
      const functionEnv: FunctionEnv = {
        tableName: CATALOG_TABLE,
        region: LOCAL_REGION,
        dynamodbEndpoint: dynamodb,
        s3Endpoint: s3,
        keyFile,
        runBucket: REPOSITORY_BUCKET,
        repositoryBucket: REPOSITORY_BUCKET,
      };
      const functions = new LocalFunctions(createClients(functionEnv, FUNCTION_CLIENT_WIRING), { timeoutSeconds: template.functionTimeouts });
      const catalog = new Catalog(DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } }), CATALOG_TABLE);
      // As a deploy does in AWS (a custom resource), the configuration's hosts and policies go into the catalog: the SyncConfig function does it.
      await functions.invoke('SyncConfig', { config, buckets });

      const broker = new ActivityBroker({ quotas });
      closers.push(async () => broker.close());
      const reconcileArn = Object.values(template.stateMachines).find((m) => m.logicalId.startsWith('Reconcile'))?.arn;
      const executions: LocalExecutions = new LocalExecutions({
        dataDir,
        template,
        broker,
        quotas,
        functions,
        // The Backup workflow's Distributed Map reads and writes the stack's own bucket, named by its logical id in the ASL.
        objects: (bucket) => new S3ObjectStore(localS3, bucket === template.primaryBucket ? REPOSITORY_BUCKET : bucket),
        onStopped: (r) => {
          if (r.stateMachineArn === backup.arn && reconcileArn) void reconcileStoppedRuns(executions, backup.arn, reconcileArn);
        },
      });
      await executions.load();
      closers.push(() => executions.close());
      // Runs the last stop of the stack cut off: their records, slots, run lease and snapshots (once a mover polls).
      if (reconcileArn) await reconcileStoppedRuns(executions, backup.arn, reconcileArn);
      const api = await startSfnApi({ port: opts.ports?.sfn ?? 0, broker, executions });
      closers.push(() => api.close());
      // The functions answer waiting tasks (the slot queue) on this API; the OperatorApi function reads the Backup workflow's
      // executions through it, and the primary repository's records.
      const operatorEnv: FunctionEnv = { ...functionEnv, backupStateMachineArn: backup.arn, sfnEndpoint: api.url };
      functions.useClients(createClients(operatorEnv, FUNCTION_CLIENT_WIRING));
      const operator = await startOperator({
        dataDir,
        config,
        sfn: api.url,
        functions,
        template,
        port: opts.ports?.console ?? 0,
        ...(opts.onAlert ? { onAlert: opts.onAlert } : {}),
      });
      closers.push(() => operator.close());

      const endpoints: StackEndpoints = {
        dataDir,
        region: LOCAL_REGION,
        dynamodb,
        s3,
        sfn: api.url,
        console: operator.url,
        table: CATALOG_TABLE,
        bucket: REPOSITORY_BUCKET,
        buckets,
        repositories,
        keyFile,
        backupStateMachineArn: backup.arn,
        activities: template.activities,
        // A workflow's name is its construct id: the logical id minus `StateMachine<hash>`.
        stateMachines: Object.fromEntries(Object.values(template.stateMachines).map((m) => [m.logicalId.replace(/StateMachine[0-9A-F]{8}$/, ''), m.arn])),
      };
      return new EmbeddedStack(endpoints, template, catalog, config, closers, s3Servers, { local: functions, env: operatorEnv });
    } catch (err) {
      await closeAll();
      throw err;
    }
  }

  async stop(): Promise<void> {
    for (const c of this.closers.reverse()) await c().catch(() => {});
  }
}

/** A repository's objects as a client (the CLI, a restore, a test) opens them: the stack's own bucket by default. */
export function repositoryStore(e: StackEndpoints, repositoryId?: string): ObjectStore {
  const r = repositoryId ? e.repositories[repositoryId] : { bucket: e.bucket };
  if (!r) throw new Error(`the stack has no repository '${repositoryId}'; it has ${Object.keys(e.repositories).join(', ')}`);
  return new S3ObjectStore(s3Client({ ...endpointSettings(r.endpoint, { region: e.region, url: e.s3 }), credentials: LOCAL_CREDENTIALS }), r.bucket);
}

/** The stack's repository (or a configured one, by id) as a client opens it. */
export function openRepository(e: StackEndpoints, repositoryId?: string): Promise<Repository> {
  return openRepositoryOf({
    store: repositoryStore(e, repositoryId),
    bucket: repositoryId ? e.repositories[repositoryId]!.bucket : e.bucket,
    keys: { keyFile: e.keyFile },
  });
}

async function ensureTable(db: DynamoDBClient, name: string, schema: ResolvedTemplate['tables'][string]): Promise<void> {
  try {
    await db.send(new DescribeTableCommand({ TableName: name }));
  } catch (err) {
    if (!(err instanceof ResourceNotFoundException)) throw err;
    await db.send(
      new CreateTableCommand({
        TableName: name,
        BillingMode: 'PAY_PER_REQUEST',
        AttributeDefinitions: schema.AttributeDefinitions as never,
        KeySchema: schema.KeySchema as never,
      }),
    );
  }
}
