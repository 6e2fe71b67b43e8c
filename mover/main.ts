/**
 * The mover appliance's entry point. Configuration comes from the environment:
 *   LIFEBOAT_ACTIVITY_ARN   the mover group's Activity (required)
 *   LIFEBOAT_KMS_KEY_ID     KMS key (ARN) that unwraps the repository key (AWS: the stack output RepositoryKeyArn), or
 *   LIFEBOAT_KEY_FILE       key file that unwraps the repository key (embedded stack)
 *   LIFEBOAT_SFN_ENDPOINT / LIFEBOAT_S3_ENDPOINT   endpoints (unset in AWS)
 *   LIFEBOAT_MOVER_NAME, LIFEBOAT_MOVER_SLOTS (default 2), LIFEBOAT_MOVER_PARALLELISM (default 8)
 *   LIFEBOAT_CHUNK_WORKERS  worker threads hashing, sealing and opening chunks (default: one per core but one, 1-4)
 *   LIFEBOAT_PACK_MIB       pack size in MiB (default 8; smaller on slow WAN links: a pack is the unit of upload and resume)
 *   LIFEBOAT_RESTORE_IN_FLIGHT_MIB  bytes a restore reads at once, in MiB (default 24: at least the link's bandwidth times its round trip)
 *   LIFEBOAT_S3_CONCURRENCY (requests in flight, default 16), LIFEBOAT_BANDWIDTH_LIMIT (bytes/s, unset = none)
 *   LIFEBOAT_S3_TRACE=1 (logs every GET of a repository as storage.get: start, first byte, end; a debug trace)
 *   LIFEBOAT_S3_PATH_STYLE (true/false; default true with a custom endpoint)
 *   LIFEBOAT_S3_CONNECT_TIMEOUT_MS (default 10000), LIFEBOAT_S3_REQUEST_TIMEOUT_MS (longest an S3 request may
 *     go with no byte moving, default 60000): a stalled request fails as retryable and is tried again
 *   LIFEBOAT_STALL_TIMEOUT_MS (default 600000): a task that reports no progress for this long is aborted and
 *     failed with Mover.TaskStalled (retried by the workflow)
 *   LIFEBOAT_ENDPOINT_PROFILES  JSON object: AWS shared-config profile per other S3 endpoint, keyed by
 *     the endpoint URL (or `aws:<region>` for AWS S3 in another region), e.g.
 *     {"https://s3.dr.example.com":"lifeboat-dr"}. Jobs name a repository's endpoint (URL, region,
 *     path style, checksums: contracts/endpoints.ts), never credentials; an endpoint not listed uses the
 *     default credential chain (the group's role).
 *   LIFEBOAT_MOVER_GROUP (default: from the activity ARN), LIFEBOAT_BUCKET (repository bucket it registers in; unset = no registration)
 *   LIFEBOAT_REGISTRATION_SECONDS (registration heartbeat, default 60), LIFEBOAT_PROGRESS_SECONDS (how often a disk
 *   transfer writes its progress object, contracts/progress.ts; default 5), LIFEBOAT_SHUTDOWN_GRACE_MS (default 600000)
 *   LIFEBOAT_MOVER_HOME (installed releases, default ~/.lifeboat-mover)
 *   LIFEBOAT_WORK_DIR (snapshots' NBD sockets and libvirt scratch files, restore tests' throwaway folders, pool restores' records and raw copies, the repositories' deduplication indexes under repository-index/; default $LIFEBOAT_MOVER_HOME/work; on the hypervisor host)
 *   LIFEBOAT_INSTANT_SPARE=1 keeps a spare export process started (its code loaded, ~120 MB), so an instant recovery's VM
 *     starts without waiting for one to load (mover/recovery/export-process.ts); default: none
 *   LIFEBOAT_NBD_TLS_DIR    folder of the TLS credentials for reading hosts' TCP exports with TLS (`exports.tls`):
 *     ca-cert.pem (the CA of the hypervisors' backup certificates), client-cert.pem and client-key.pem (QEMU's
 *     x509 folder layout); unset: TLS exports cannot be read (plain and unix socket exports can)
 *   LIFEBOAT_RELEASE_PUBLIC_KEY_FILE or LIFEBOAT_RELEASE_PUBLIC_KEY (PEM): the key releases must be signed with
 *   LIFEBOAT_METRICS_ADDRESS  HOST:PORT of the Prometheus endpoint (GET /metrics: mover/metrics.ts); unset: none
 * Under systemd (NOTIFY_SOCKET set, Type=notify) it says READY=1 once it polls and pings the
 * watchdog (WATCHDOG_USEC) from its event loop: mover/systemd-notify.ts.
 * Logs are JSON lines on stdout. SIGTERM/SIGINT drain: finish in-flight tasks, take no new
 * ones, exit; tasks still running after the grace time are abandoned (retried elsewhere).
 * A job that needs a newer mover makes it upgrade itself first (mover/upgrade.ts).
 */
import { SFNClient } from '@aws-sdk/client-sfn';
import type { RepositoryLocation } from '../contracts/endpoints.ts';
import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import { CannotUpgrade } from '../contracts/errors.ts';
import { isMoverName } from '../core/mover-registry.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore } from '../core/s3-store.ts';
import { withRetry } from '../core/store-wrappers.ts';
import { loadTlsCredentials } from './nbd/tls.ts';
import { sourceDrivers } from './sources/drivers.ts';
import { countForTask, withTaskRetries } from './retry-accounting.ts';
import { Registration } from './registration.ts';
import { TASK_KINDS, taskHandler } from './tasks.ts';
import { installedUpgrade, reexec, releasePublicKeyFromEnv, takeHandover, upgradeNeeded, Upgrader } from './upgrade.ts';
import { MOVER_VERSION } from './version.ts';
import { MoverWorker, type Logger, type Restart } from './worker.ts';
import { repositoryAccess, type RepositoryAccess } from './repository-access.ts';
import { prepareSpareExportProcess } from './recovery/export-process.ts';
import { MoverMetrics, serveMetrics } from './metrics.ts';
import { SystemdNotifier } from './systemd-notify.ts';
import { RESTORE_DEFAULTS } from './pipeline/restore-disk.ts';

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
  info: (event, fields) =>
    process.stdout.write(JSON.stringify({ t: new Date().toISOString(), mover: name, version: MOVER_VERSION, level: 'info', event, ...fields }) + '\n'),
  error: (event, fields) =>
    process.stdout.write(JSON.stringify({ t: new Date().toISOString(), mover: name, version: MOVER_VERSION, level: 'error', event, ...fields }) + '\n'),
};
if (!isMoverName(name)) {
  process.stderr.write(
    `lifeboat-mover: LIFEBOAT_MOVER_NAME=${name} must be 1-128 letters, digits, '.', '-' or '_' (it names the mover's registration object)\n`,
  );
  process.exit(2);
}

// Self-update: the release public key, the home folder, and a restarted appliance that
// was upgraded before runs its installed release, not the program it was installed as.
let releaseKey: ReturnType<typeof releasePublicKeyFromEnv>;
try {
  releaseKey = releasePublicKeyFromEnv(process.env);
} catch (err) {
  process.stderr.write(`lifeboat-mover: ${(err as Error).message}\n`);
  process.exit(2);
}
const home = process.env.LIFEBOAT_MOVER_HOME || join(homedir(), '.lifeboat-mover');
const handover = takeHandover(process.env);
const installed = await installedUpgrade(home, MOVER_VERSION, releaseKey, logger);
if (installed) {
  logger.info('upgrade.boot', { from: MOVER_VERSION, to: installed.version, program: installed.program });
  reexec(installed, home, handover);
}
const upgrader = new Upgrader({ home, currentVersion: MOVER_VERSION, publicKey: releaseKey, logger });

const region = process.env.AWS_REGION ?? 'us-east-1';
const sfnEndpoint = process.env.LIFEBOAT_SFN_ENDPOINT;
const sfn = new SFNClient({
  region,
  ...(sfnEndpoint ? { endpoint: sfnEndpoint, credentials: LOCAL_ENDPOINT_CREDENTIALS } : {}),
  requestHandler: { requestTimeout: 70_000 },
});
const workDir = process.env.LIFEBOAT_WORK_DIR || join(home, 'work');
let access: RepositoryAccess;
try {
  // `metrics` is made below; these run only once a repository is opened.
  access = repositoryAccess(process.env, {
    logger,
    onRetry: (info) => {
      countForTask(info);
      metrics.onRetry(info);
    },
    wrapStore: (s) => metrics.store(s),
    // Repository indexes for deduplication: on local disk, ~7 bytes per chunk resident (repository/index-spill.ts).
    indexDir: join(workDir, 'repository-index'),
  });
} catch (err) {
  process.stderr.write(`lifeboat-mover: ${(err as Error).message} (see mover/main.ts for the settings)\n`);
  process.exit(2);
}
const { s3, s3For, repository } = access;

const activityArn = env('LIFEBOAT_ACTIVITY_ARN');
const group = env('LIFEBOAT_MOVER_GROUP', /-mover-([a-z0-9-]+)$/.exec(activityArn)?.[1] ?? activityArn.split(':').pop());
const slots = positiveInt('LIFEBOAT_MOVER_SLOTS', '2');
const graceMs = positiveInt('LIFEBOAT_SHUTDOWN_GRACE_MS', '600000');
const metrics = new MoverMetrics({ version: MOVER_VERSION, name, group, slots });
const metricsAddress = process.env.LIFEBOAT_METRICS_ADDRESS;
if (metricsAddress) {
  try {
    await serveMetrics(metrics, metricsAddress, logger);
  } catch (err) {
    process.stderr.write(`lifeboat-mover: ${(err as Error).message}\n`);
    process.exit(2);
  }
}
const systemd = SystemdNotifier.fromEnv({ env: process.env, logger });
const registryBucket = process.env.LIFEBOAT_BUCKET;
const registration = registryBucket
  ? new Registration({
      store: withRetry(metrics.store(new S3ObjectStore(s3, registryBucket)), { logger, onRetry: metrics.onRetry }),
      logger,
      record: {
        name,
        group,
        activityArn,
        version: MOVER_VERSION,
        capabilities: { sources: ['folder'], tasks: [...TASK_KINDS] },
        slots,
        hostname: hostname(),
        pid: process.pid,
        heartbeatSeconds: positiveInt('LIFEBOAT_REGISTRATION_SECONDS', '60'),
      },
    })
  : undefined;
if (!registration) logger.info('registration.disabled', { reason: 'LIFEBOAT_BUCKET is not set' });

// A task whose job needs a newer mover: install the signed release, then hand the task over to it.
const admit = async (input: unknown): Promise<Restart | undefined> => {
  const min = upgradeNeeded(input, MOVER_VERSION);
  if (!min) return undefined;
  const repo = (input as { job: { repository?: Partial<RepositoryLocation> } }).job.repository;
  const bucket = repo?.bucket;
  if (!bucket) throw new CannotUpgrade(`the job needs mover ${min} but names no repository bucket to fetch the release from`);
  logger.info('upgrade.needed', { from: MOVER_VERSION, min, bucket });
  await registration?.set('upgrading', { upgradingTo: min });
  try {
    const release = await upgrader.ensure(withRetry(new S3ObjectStore(s3For(repo?.endpoint), bucket), { logger }), bucket, min);
    return (tasks) => {
      try {
        reexec(release, home, tasks);
      } catch (err) {
        throw new CannotUpgrade(
          `release ${release.version} is installed at ${release.program} but the mover could not restart into it: ${(err as Error).message}`,
          err,
        );
      }
    };
  } catch (err) {
    logger.error('upgrade.refused', { min, error: (err as Error).message });
    await registration?.set('running');
    throw err;
  }
};

let running = 0;
const packMiB = positiveInt('LIFEBOAT_PACK_MIB', '8');
if (packMiB > 256) {
  process.stderr.write(`lifeboat-mover: LIFEBOAT_PACK_MIB must be at most 256, got ${packMiB}\n`);
  process.exit(2);
}
const restoreInFlightMiB = positiveInt('LIFEBOAT_RESTORE_IN_FLIGHT_MIB', String(RESTORE_DEFAULTS.inFlightBytes / 1024 / 1024));
if (restoreInFlightMiB > 4096) {
  process.stderr.write(`lifeboat-mover: LIFEBOAT_RESTORE_IN_FLIGHT_MIB must be at most 4096, got ${restoreInFlightMiB}\n`);
  process.exit(2);
}
const nbdTlsDir = process.env.LIFEBOAT_NBD_TLS_DIR;
const nbdTls = nbdTlsDir
  ? await loadTlsCredentials(nbdTlsDir).catch((err: Error) => {
      process.stderr.write(`lifeboat-mover: LIFEBOAT_NBD_TLS_DIR: ${err.message}\n`);
      process.exit(2);
    })
  : undefined;
// A mover that may run instant recoveries keeps an export process loaded and waiting: the VM starts seconds sooner.
if (process.env.LIFEBOAT_INSTANT_SPARE === '1') prepareSpareExportProcess(workDir);
const handler = taskHandler({
  drivers: sourceDrivers({ workDir, ...(nbdTls && { nbdTls }) }),
  repository,
  logger,
  parallelism: positiveInt('LIFEBOAT_MOVER_PARALLELISM', '8'),
  packBytes: packMiB * 1024 * 1024,
  restoreInFlightBytes: restoreInFlightMiB * 1024 * 1024,
  workDir,
  moverName: name,
  progressEveryMs: positiveInt('LIFEBOAT_PROGRESS_SECONDS', '5') * 1000,
});
const worker = new MoverWorker({
  sfn,
  activityArn,
  workerName: name,
  slots,
  logger,
  heartbeatMs: positiveInt('LIFEBOAT_HEARTBEAT_MS', '5000'),
  admit,
  resume: handover,
  shutdownGraceMs: graceMs,
  stallTimeoutMs: positiveInt('LIFEBOAT_STALL_TIMEOUT_MS', '600000'),
  handler: async (input, ctx) => {
    registration?.tasks(++running);
    try {
      return await metrics.task(input, () => withTaskRetries(() => handler(input, ctx)));
    } finally {
      registration?.tasks(--running);
    }
  },
});

let draining: Promise<boolean> | undefined;
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.once(sig, () => {
    logger.info('worker.draining', { signal: sig, graceMs });
    void registration?.set('draining');
    void systemd?.stopping(`draining: ${running} task(s) in flight, ${graceMs / 1000} s grace`);
    draining = worker.drain();
    // A handler that ignores its abort signal must not keep the mover alive.
    setTimeout(() => {
      logger.error('worker.forced_exit', { graceMs });
      process.exit(1);
    }, graceMs + 5000).unref();
  });
}
// Registration never holds up work: a failed write is logged and retried at the next beat.
void registration?.start();
const polling = worker.run();
void systemd?.ready(() => `${running} of ${slots} slot(s) in use`);
await polling;
const inTime = (await draining) ?? true;
await registration?.set('stopped', { tasksInFlight: 0 });
logger.info('worker.exit', { code: inTime ? 0 : 1 });
process.exit(inTime ? 0 : 1);
