/**
 * How a mover process reaches repositories, from its environment (the settings are listed
 * in mover/main.ts): one S3 client per endpoint a job names, with the mover's own
 * credentials and deadlines, and each repository opened once (store wrapped in retries, a
 * request limit and the bandwidth cap; keys unwrapped by KMS or the key file). The mover
 * and the processes it leaves behind (the instant recovery's export process) share it, so
 * both read the repository the same way.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { endpointKey, locationKey, type RepositoryLocation, type StorageEndpoint } from '../contracts/endpoints.ts';
import { DEFAULT_S3_TIMEOUTS, LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, endpointSettings, s3Client } from '../core/s3-store.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { withBandwidthLimit, withConcurrencyLimit, withRetry, type RetryInfo } from '../core/store-wrappers.ts';
import { openRepository, type KeySource, type Repository } from '../repository/open.ts';
import type { Logger } from './worker.ts';

/** A setting of the environment that is missing or wrong: the message names it. */
export class SettingInvalid extends Error {}

export interface RepositoryAccess {
  /** The stack's own S3 (LIFEBOAT_S3_ENDPOINT, or AWS). */
  s3: S3Client;
  /** The client for a job's endpoint (the stack's own when absent). */
  s3For(e: StorageEndpoint | undefined): S3Client;
  /** The repository at `location`, opened once per process (its index kept in the mover's work folder when one is set). */
  repository(location: RepositoryLocation): Promise<Repository>;
}

export function positiveIntSetting(env: NodeJS.ProcessEnv, name: string, fallback: string): number {
  const v = Number(env[name] || fallback);
  if (!Number.isInteger(v) || v < 1) throw new SettingInvalid(`${name}=${env[name]} must be a positive whole number`);
  return v;
}

/** Throws {@link SettingInvalid} naming a bad setting. */
export function repositoryAccess(
  env: NodeJS.ProcessEnv,
  o: {
    logger: Logger;
    onRetry?: (info: RetryInfo) => void;
    /** Wraps each repository's S3 store first, inside the retries (the mover's request metrics). */
    wrapStore?: (store: ObjectStore) => ObjectStore;
    /** A local folder for the repositories' indexes (a folder per repository below it); without one they are kept in memory. */
    indexDir?: string;
  },
): RepositoryAccess {
  const region = env.AWS_REGION ?? 'us-east-1';
  const localCreds = LOCAL_ENDPOINT_CREDENTIALS;
  const s3Endpoint = env.LIFEBOAT_S3_ENDPOINT;
  const pathStyle = env.LIFEBOAT_S3_PATH_STYLE ? env.LIFEBOAT_S3_PATH_STYLE === 'true' : !!s3Endpoint;
  // Every S3 request has deadlines: a stalled one fails (and is retried) instead of hanging the task.
  // One retry layer: the SDK tries each request once (its own retries would be invisible: no
  // storage.retry line, not counted in stats.storageRetries) and withRetry does the retrying.
  const s3Timeouts = {
    connectTimeoutMs: positiveIntSetting(env, 'LIFEBOAT_S3_CONNECT_TIMEOUT_MS', String(DEFAULT_S3_TIMEOUTS.connectTimeoutMs)),
    requestTimeoutMs: positiveIntSetting(env, 'LIFEBOAT_S3_REQUEST_TIMEOUT_MS', String(DEFAULT_S3_TIMEOUTS.requestTimeoutMs)),
    maxAttempts: 1,
  };
  const s3 = s3Client({ region, endpoint: s3Endpoint, forcePathStyle: pathStyle, ...s3Timeouts, ...(s3Endpoint ? { credentials: localCreds } : {}) });
  let endpointProfiles: Record<string, string>;
  try {
    endpointProfiles = JSON.parse(env.LIFEBOAT_ENDPOINT_PROFILES || '{}') as Record<string, string>;
    if (typeof endpointProfiles !== 'object' || endpointProfiles === null || Object.values(endpointProfiles).some((v) => typeof v !== 'string' || !v))
      throw new Error('must map endpoint URLs to profile names');
  } catch (err) {
    throw new SettingInvalid(`LIFEBOAT_ENDPOINT_PROFILES must be a JSON object of endpoint URL (or aws:<region>) to profile name: ${(err as Error).message}`);
  }
  /** One client per S3 endpoint a job names; the stack's own S3 is `s3`. Credentials are the mover's own, never the job's. */
  const s3Clients = new Map<string, S3Client>([['', s3]]);
  const s3For = (e: StorageEndpoint | undefined): S3Client => {
    const key = endpointKey(e);
    let c = s3Clients.get(key);
    if (!c && e) {
      const profile = endpointProfiles[e.url ?? `aws:${e.region ?? region}`];
      c = s3Client({
        ...endpointSettings(e, { region }),
        ...s3Timeouts,
        // The embedded stack's servers take its fixed local pair; elsewhere the endpoint's profile, or the default chain.
        ...(s3Endpoint ? { credentials: localCreds } : profile ? { profile } : {}),
      });
      s3Clients.set(key, c);
    }
    return c!;
  };
  const s3Concurrency = positiveIntSetting(env, 'LIFEBOAT_S3_CONCURRENCY', '16');
  // A debug trace: every GET's start, first byte and end logged as storage.get (finds requests made one after another).
  const trace = env.LIFEBOAT_S3_TRACE === '1';
  const bandwidth = env.LIFEBOAT_BANDWIDTH_LIMIT ? positiveIntSetting(env, 'LIFEBOAT_BANDWIDTH_LIMIT', '1') : undefined;
  const kmsKeyId = env.LIFEBOAT_KMS_KEY_ID;
  const keyFile = env.LIFEBOAT_KEY_FILE;
  if (!kmsKeyId && !keyFile) throw new SettingInvalid('LIFEBOAT_KMS_KEY_ID or LIFEBOAT_KEY_FILE is not set: the repository keys cannot be unwrapped');
  /**
   * How repository keys are unwrapped: KMS in AWS, the key file in the embedded stack. The KMS
   * client is loaded when first needed (a process that starts often, the export process, does
   * not pay for loading it otherwise).
   */
  let keySource: Promise<KeySource> | undefined;
  const keys = () =>
    (keySource ??= kmsKeyId
      ? import('@aws-sdk/client-kms').then(({ KMSClient }) => ({ kms: new KMSClient({ region }), kmsKeyId }))
      : Promise.resolve({ keyFile: keyFile! }));

  const repositories = new Map<string, ReturnType<RepositoryAccess['repository']>>();
  const repository = ({ bucket, endpoint }: RepositoryLocation) => {
    const id = locationKey({ bucket, endpoint });
    let r = repositories.get(id);
    if (!r) {
      r = (async () => {
        // Retry innermost (a retried request keeps its slot), then the request limit, then bandwidth.
        const s3Store = new S3ObjectStore(s3For(endpoint), bucket, trace ? { onGet: (t) => o.logger.info('storage.get', { ...t }) } : {});
        let store: ObjectStore = withConcurrencyLimit(
          withRetry(o.wrapStore ? o.wrapStore(s3Store) : s3Store, { logger: o.logger, ...(o.onRetry ? { onRetry: o.onRetry } : {}) }),
          s3Concurrency,
        );
        if (bandwidth) store = withBandwidthLimit(store, bandwidth);
        // The index's listings on local disk, not in memory (repository/index-spill.ts): one folder per repository.
        const indexDir = o.indexDir && join(o.indexDir, createHash('sha256').update(id).digest('hex').slice(0, 16));
        return openRepository({ store, bucket, keys: await keys(), ...(indexDir ? { indexDir } : {}) });
      })();
      r.catch(() => repositories.delete(id));
      repositories.set(id, r);
    }
    return r;
  };
  return { s3, s3For, repository };
}
