/**
 * The mover appliance's entry point. Configuration comes from the environment:
 *   LIFEBOAT_ACTIVITY_ARN   the mover group's Activity (required)
 *   LIFEBOAT_KEY_FILE       key file that unwraps the repository key (embedded stack)
 *   LIFEBOAT_SFN_ENDPOINT / LIFEBOAT_S3_ENDPOINT   endpoints (unset in AWS)
 *   LIFEBOAT_MOVER_NAME, LIFEBOAT_MOVER_SLOTS (default 2), LIFEBOAT_MOVER_PARALLELISM (default 8)
 * Logs are JSON lines on stdout. SIGTERM/SIGINT drain: finish in-flight tasks, take no new ones.
 */
import { SFNClient } from '@aws-sdk/client-sfn';
import { hostname } from 'node:os';
import { deriveKeys, type RepositoryKeys } from '../core/format.ts';
import { KeyFileWrapper, loadMasterKey } from '../core/keyring.ts';
import { S3ObjectStore, s3Client } from '../core/s3-store.ts';
import type { ObjectStore } from '../core/object-store.ts';
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
const localCreds = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
const sfnEndpoint = process.env.LIFEBOAT_SFN_ENDPOINT;
const s3Endpoint = process.env.LIFEBOAT_S3_ENDPOINT;
const sfn = new SFNClient({ region, ...(sfnEndpoint ? { endpoint: sfnEndpoint, credentials: localCreds } : {}), requestHandler: { requestTimeout: 70_000 } });
const s3 = s3Client({ region, endpoint: s3Endpoint, forcePathStyle: !!s3Endpoint, ...(s3Endpoint ? { credentials: localCreds } : {}) });
const keyFile = env('LIFEBOAT_KEY_FILE');

const repositories = new Map<string, Promise<{ store: ObjectStore; keys: RepositoryKeys }>>();
const repository = (bucket: string) => {
  let r = repositories.get(bucket);
  if (!r) {
    r = (async () => {
      const store = new S3ObjectStore(s3, bucket);
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
