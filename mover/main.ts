/**
 * The mover appliance's entry point. Configuration comes from the environment:
 *   LIFEBOAT_ACTIVITY_ARN   the mover group's Activity (required)
 *   LIFEBOAT_KEY_FILE       key file that unwraps the repository key (embedded stack)
 *   LIFEBOAT_SFN_ENDPOINT / LIFEBOAT_S3_ENDPOINT   endpoints (unset in AWS)
 *   LIFEBOAT_MOVER_NAME, LIFEBOAT_MOVER_SLOTS (default 2), LIFEBOAT_MOVER_PARALLELISM (default 8)
 *   LIFEBOAT_S3_CONCURRENCY (requests in flight, default 16), LIFEBOAT_BANDWIDTH_LIMIT (bytes/s, unset = none)
 *   LIFEBOAT_S3_PATH_STYLE (true/false; default true with a custom endpoint)
 * Logs are JSON lines on stdout. SIGTERM/SIGINT drain: finish in-flight tasks, take no new ones.
 */
import { SFNClient } from '@aws-sdk/client-sfn';
import { hostname } from 'node:os';
import { deriveKeys, type RepositoryKeys } from '../core/format.ts';
import { KeyFileWrapper, loadMasterKey } from '../core/keyring.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { withBandwidthLimit, withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';
import { FolderDriver } from './sources/folder.ts';
import { taskHandler } from './tasks.ts';
import { MoverWorker, type Logger } from './worker.ts';

function env(name: string, fallback?: string): string {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    process.stderr.write(`lifeboat-mover: ${name} is not set (see mover/main.ts for the settings)\n`);
    process.exit(2);
  }
  return v;
}

function positiveInt(name: string, fallback: string): number {
  const v = Number(env(name, fallback));
  if (!Number.isInteger(v) || v < 1) {
    process.stderr.write(`lifeboat-mover: ${name}=${process.env[name]} must be a positive whole number\n`);
    process.exit(2);
  }
  return v;
}

const name = env('LIFEBOAT_MOVER_NAME', `${hostname()}-${process.pid}`);
const logger: Logger = {
  info: (event, fields) => process.stdout.write(JSON.stringify({ t: new Date().toISOString(), mover: name, level: 'info', event, ...fields }) + '\n'),
  error: (event, fields) => process.stdout.write(JSON.stringify({ t: new Date().toISOString(), mover: name, level: 'error', event, ...fields }) + '\n'),
};

const region = process.env.AWS_REGION ?? 'us-east-1';
const localCreds = LOCAL_ENDPOINT_CREDENTIALS;
const sfnEndpoint = process.env.LIFEBOAT_SFN_ENDPOINT;
const s3Endpoint = process.env.LIFEBOAT_S3_ENDPOINT;
const sfn = new SFNClient({ region, ...(sfnEndpoint ? { endpoint: sfnEndpoint, credentials: localCreds } : {}), requestHandler: { requestTimeout: 70_000 } });
const pathStyle = process.env.LIFEBOAT_S3_PATH_STYLE ? process.env.LIFEBOAT_S3_PATH_STYLE === 'true' : !!s3Endpoint;
const s3 = s3Client({ region, endpoint: s3Endpoint, forcePathStyle: pathStyle, ...(s3Endpoint ? { credentials: localCreds } : {}) });
const s3Concurrency = positiveInt('LIFEBOAT_S3_CONCURRENCY', '16');
const bandwidth = process.env.LIFEBOAT_BANDWIDTH_LIMIT ? positiveInt('LIFEBOAT_BANDWIDTH_LIMIT', '1') : undefined;
const keyFile = env('LIFEBOAT_KEY_FILE');

const repositories = new Map<string, Promise<{ store: ObjectStore; keys: RepositoryKeys }>>();
const repository = (bucket: string) => {
  let r = repositories.get(bucket);
  if (!r) {
    r = (async () => {
      // Retry innermost (a retried request keeps its slot), then the request limit, then bandwidth.
      let store: ObjectStore = withConcurrencyLimit(withRetry(new S3ObjectStore(s3, bucket), {
        onRetry: (i) => logger.info('storage.retry', { op: i.op, key: i.key, attempt: i.attempt, delayMs: Math.round(i.delayMs), error: (i.error as Error).message }),
      }), s3Concurrency);
      if (bandwidth) store = withBandwidthLimit(store, bandwidth);
      return { store, keys: deriveKeys(await loadMasterKey(store, await KeyFileWrapper.load(keyFile))) };
    })();
    r.catch(() => repositories.delete(bucket));
    repositories.set(bucket, r);
  }
  return r;
};

const worker = new MoverWorker({
  sfn,
  activityArn: env('LIFEBOAT_ACTIVITY_ARN'),
  workerName: name,
  slots: positiveInt('LIFEBOAT_MOVER_SLOTS', '2'),
  logger,
  heartbeatMs: positiveInt('LIFEBOAT_HEARTBEAT_MS', '5000'),
  handler: taskHandler({ driver: new FolderDriver(), repository, logger, parallelism: positiveInt('LIFEBOAT_MOVER_PARALLELISM', '8') }),
});

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.once(sig, () => {
    logger.info('worker.draining', { signal: sig });
    void worker.drain();
  });
}
await worker.run();
