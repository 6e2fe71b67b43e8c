/**
 * SDK clients, created once per Lambda container (or embedded process) at the entry
 * point and handed to the logic modules as narrow interfaces.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KMSClient } from '@aws-sdk/client-kms';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { KeyWrapper } from '../../repository/keyring.ts';
import { keyWrapper, openRepository, type KeySource, type Repository } from '../../repository/open.ts';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { powertools } from './lambda.ts';
import { storageMetrics } from '../../contracts/metric-names.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, endpointSettings, s3Client } from '../../core/s3-store.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { S3RepositoryAdmin, type RepositoryAdmin } from '../../repository/admin.ts';
import { S3ObjectLocks, type LockExtender } from '../../repository/object-lock.ts';
import { endpointKey, locationKey, type StorageEndpoint } from '../../contracts/endpoints.ts';
import type { S3Client } from '@aws-sdk/client-s3';
import { Catalog } from '../catalog/catalog.ts';
import { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { HostConfigCatalog } from '../catalog/host-config-catalog.ts';
import { RunCatalog } from '../catalog/run-catalog.ts';
import { LockCatalog } from '../catalog/lock-catalog.ts';
import { SlotQueueCatalog } from '../catalog/slot-queue-catalog.ts';
import { SFNClient } from '@aws-sdk/client-sfn';
import type { TaskCallbacks } from '../backup/slot-queue.ts';
import { sfnTaskCallbacks } from './task-callbacks.ts';
import { readEnv, type FunctionEnv } from './env.ts';

export interface Clients {
  env: FunctionEnv;
  catalog: Catalog;
  /** Records of restores, deep verifications and prunes (functions/catalog/recovery-catalog.ts). */
  recovery: RecoveryCatalog;
  /** Which VMs a Backup run backs up (functions/catalog/run-catalog.ts). */
  runs: RunCatalog;
  /** Records of host configuration backups (functions/catalog/host-config-catalog.ts). */
  hostConfigs: HostConfigCatalog;
  /** How far lock extension has locked each backup's objects (functions/catalog/lock-catalog.ts). */
  lockRecords: LockCatalog;
  /** The fair slot queue's waiters and lines (functions/catalog/slot-queue-catalog.ts). */
  slotQueue: SlotQueueCatalog;
  /** SendTaskSuccess to tasks waiting on a token (the slot queue's AcquireSlot). */
  tasks: TaskCallbacks;
  /** A repository's objects; `endpoint` names its S3-compatible endpoint when it is not the stack's own S3. */
  store(bucket: string, endpoint?: StorageEndpoint): ObjectStore;
  /** Listing and deleting in a repository (Prune, garbage collection): the control plane only. */
  admin(bucket: string, endpoint?: StorageEndpoint): RepositoryAdmin;
  /** Object Lock retention of a repository's objects (repository/object-lock.ts); extending it is granted to ExtendLocks alone. */
  locks(bucket: string, endpoint?: StorageEndpoint): LockExtender;
  /** The wrapper of a repository's master key: KMS in AWS, the key file in the embedded stack. */
  keyWrapper(bucket: string): Promise<KeyWrapper>;
  /** The repository, opened once per container and bucket (its key unwrapped once). */
  repository(bucket: string, endpoint?: StorageEndpoint): Promise<Repository>;
}

/** How repository keys are unwrapped: KMS in AWS (REPOSITORY_KMS_KEY_ID), a key file in the embedded stack. */
function keySourceOf(env: FunctionEnv): () => KeySource {
  let kms: KMSClient | undefined;
  return () => {
    if (env.kmsKeyId) return { kms: (kms ??= new KMSClient({ region: env.region })), kmsKeyId: env.kmsKeyId };
    if (env.keyFile) return { keyFile: env.keyFile };
    throw new Error('no repository key wrapper configured: set REPOSITORY_KMS_KEY_ID (AWS; the CDK app does) or LIFEBOAT_KEY_FILE (embedded stack)');
  };
}

/** One AWS API call made through these clients: the service, the API operation and its input. */
export interface SdkCall {
  service: 'dynamodb' | 's3';
  /** The API operation, e.g. `PutItem`, `HeadObject`. */
  operation: string;
  input: Record<string, unknown>;
  /** The answer, when the call succeeded (the cost bench sizes DynamoDB's read units from it). */
  output?: Record<string, unknown>;
}

let sdkCallListener: ((call: SdkCall) => void) | undefined;

/**
 * Calls `listener` for every DynamoDB and S3 call the functions make (unset: nothing).
 * Tests use it to check each function's IAM grants against what it really calls.
 */
export function observeSdkCalls(listener: ((call: SdkCall) => void) | undefined): void {
  sdkCallListener = listener;
}

let sdkCallGate: (() => void) | undefined;

/**
 * Runs `gate` before every DynamoDB and S3 call the functions make; a throw fails the call
 * before it is sent. The embedded stack refuses the calls of an invocation past its
 * function's timeout (local/lambdas.ts), which in AWS would be frozen with its sandbox.
 */
export function gateSdkCalls(gate: (() => void) | undefined): void {
  sdkCallGate = gate;
}

type MiddlewareClient = { middlewareStack: { add(mw: unknown, opts: { step: 'initialize'; name: string }): void } };
function observe(client: MiddlewareClient, service: SdkCall['service']): void {
  client.middlewareStack.add(
    (next: (args: { input: Record<string, unknown> }) => Promise<unknown>, context: { commandName?: string }) =>
      async (args: { input: Record<string, unknown> }) => {
        const call = { service, operation: (context.commandName ?? 'Unknown').replace(/Command$/, ''), input: args.input };
        let result: { output?: Record<string, unknown> } | undefined;
        sdkCallGate?.();
        try {
          result = (await next(args)) as typeof result;
          return result;
        } finally {
          sdkCallListener?.({ ...call, ...(result?.output ? { output: result.output } : {}) });
        }
      },
    { step: 'initialize', name: 'lifeboatObserveSdkCalls' },
  );
}

/** Retries of the control plane's S3 requests, and requests that failed after their last attempt, since the process started. */
const storageRetries = { retries: 0, exhausted: 0 };
/** What `logRetries` counted so far (the embedded stack's tests compare it with the faults they injected). */
export function controlPlaneStorageRetries(): Readonly<typeof storageRetries> {
  return { ...storageRetries };
}

/**
 * The functions' one retry layer is the SDK's own (standard mode, 3 attempts): they hold no
 * long transfers to resume. Its retries are made visible here: a `storage.retry` line per
 * request that needed more than one attempt (operation, bucket, key, attempts, wait), a
 * count and the ControlPlaneStorageRetries metric, read from the attempts the retry
 * middleware records in `$metadata`.
 */
function logRetries(client: MiddlewareClient): void {
  client.middlewareStack.add(
    (
      next: (args: {
        input: Record<string, unknown>;
      }) => Promise<{ output?: { $metadata?: { attempts?: number; totalRetryDelay?: number; httpStatusCode?: number } } }>,
      context: { commandName?: string },
    ) =>
      async (args: { input: Record<string, unknown> }) => {
        type Meta = { attempts?: number; totalRetryDelay?: number; httpStatusCode?: number };
        const note = (meta: Meta | undefined, error?: unknown) => {
          const retries = (meta?.attempts ?? 1) - 1;
          // A request that failed for a reason the SDK retries (no answer, 5xx), after its last attempt; not a 404 or a 403.
          if (error !== undefined && (meta?.httpStatusCode === undefined || meta.httpStatusCode >= 500)) storageRetries.exhausted++;
          if (retries <= 0) return;
          storageRetries.retries += retries;
          powertools().metrics.addMetric(storageMetrics.controlPlaneStorageRetries, MetricUnit.Count, retries);
          powertools().logger.info('storage.retry', {
            op: (context.commandName ?? 'Unknown').replace(/Command$/, ''),
            bucket: args.input.Bucket,
            key: args.input.Key ?? args.input.Prefix,
            attempts: meta!.attempts,
            retries,
            delayMs: meta!.totalRetryDelay,
            ...(error !== undefined ? { failed: (error as Error).name } : {}),
          });
        };
        try {
          const out = await next(args);
          note(out.output?.$metadata);
          return out;
        } catch (err) {
          note((err as { $metadata?: Meta }).$metadata, err);
          throw err;
        }
      },
    { step: 'initialize', name: 'lifeboatLogRetries' },
  );
}

/** How the clients are wired where they are not one Lambda container's. */
export interface ClientWiring {
  /**
   * Sockets each DynamoDB and Step Functions client may open at once (unset: the SDK's 50).
   * A Lambda container serves one invocation at a time, so in AWS 50 is never shared; the
   * embedded stack serves every invocation through one set of clients, and gives them no
   * such cap (`Infinity`), as AWS's separate containers share no pool.
   */
  maxSockets?: number;
}

/** The functions' clients for one configuration: the Lambda entry makes them from the environment (`fromEnvironment`), the embedded stack from its own servers. */
export function createClients(env: FunctionEnv, wiring: ClientWiring = {}): Clients {
  const keySource = keySourceOf(env);
  const repositories = new Map<string, Promise<Repository>>();
  const local = env.dynamodbEndpoint ? { credentials: LOCAL_ENDPOINT_CREDENTIALS } : {};
  const pool = wiring.maxSockets !== undefined ? { requestHandler: { httpAgent: { maxSockets: wiring.maxSockets } } } : {};
  const dynamodb = new DynamoDBClient({
    region: env.region,
    ...(env.dynamodbEndpoint ? { endpoint: env.dynamodbEndpoint } : {}),
    ...local,
    ...pool,
  });
  observe(dynamodb as unknown as MiddlewareClient, 'dynamodb');
  const db = DynamoDBDocumentClient.from(dynamodb, { marshallOptions: { removeUndefinedValues: true } });
  /**
   * One S3 client per endpoint: the stack's own S3, or a repository's other endpoint
   * (its URL, region, path style and checksum settings come with the job; credentials
   * are this function's own — the role in AWS, the local servers' pair in the embedded stack).
   */
  const s3Clients = new Map<string, S3Client>();
  let sfn: SFNClient | undefined;
  const s3 = (endpoint: StorageEndpoint | undefined): S3Client => {
    const key = endpointKey(endpoint);
    let c = s3Clients.get(key);
    if (!c) {
      c = s3Client({ ...endpointSettings(endpoint, { region: env.region, url: env.s3Endpoint }), ...local });
      observe(c as unknown as MiddlewareClient, 's3');
      logRetries(c as unknown as MiddlewareClient);
      s3Clients.set(key, c);
    }
    return c;
  };
  const clients: Clients = {
    env,
    catalog: new Catalog(db, env.tableName),
    recovery: new RecoveryCatalog(db, env.tableName),
    runs: new RunCatalog(db, env.tableName),
    hostConfigs: new HostConfigCatalog(db, env.tableName),
    lockRecords: new LockCatalog(db, env.tableName),
    slotQueue: new SlotQueueCatalog(db, env.tableName),
    // Created at first use: most functions never answer a task.
    tasks: sfnTaskCallbacks(
      () => (sfn ??= new SFNClient({ region: env.region, ...(env.sfnEndpoint ? { endpoint: env.sfnEndpoint } : {}), ...local, ...pool })),
    ),
    store: (bucket, endpoint) => new S3ObjectStore(s3(endpoint), bucket),
    admin: (bucket, endpoint) => new S3RepositoryAdmin(s3(endpoint), bucket),
    locks: (bucket, endpoint) => new S3ObjectLocks(s3(endpoint), bucket),
    keyWrapper: async (bucket) => keyWrapper(keySource(), bucket),
    repository: (bucket, endpoint) => {
      const id = locationKey({ bucket, endpoint });
      let r = repositories.get(id);
      if (!r) {
        r = openRepository({ store: clients.store(bucket, endpoint), bucket, keys: keySource() });
        r.catch(() => repositories.delete(id)); // a failure is not cached
        repositories.set(id, r);
      }
      return r;
    },
  };
  return clients;
}

/**
 * A module's handlers as its Lambda entry exports them: `factory` gets clients that are
 * built from the environment at the first call that uses them, once per container (the
 * embedded stack imports these modules without that environment and calls the factory itself).
 */
export function fromEnvironment<H>(factory: (c: Clients) => H): H {
  let built: Clients | undefined;
  const lazy = new Proxy({} as Clients, { get: (_target, key) => (built ??= createClients(readEnv()))[key as keyof Clients] });
  return factory(lazy);
}
