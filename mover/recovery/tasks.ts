/** The mover's recovery tasks: restore, deep verification, replication, the standby replica, NBD exports of backups and file-level restore. Each job names its repositories (bucket and endpoint). */
import { parseTaskInput } from '../../contracts/errors.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { recoveryTask, recoveryTaskNames } from '../../contracts/recovery-jobs.ts';
import type { TaskContext } from '../worker.ts';
import { ProgressReporter } from '../progress-reporter.ts';
import type { MOVING_PHASES } from '../../contracts/progress.ts';
import { deepVerifyDisk } from './deep-verify.ts';
import { replicateDisk } from './replicate.ts';
import { discardPoolVolumes } from './pool-volumes.ts';
import { restoreDiskTask, restoreVmConfigTask } from './restore-tasks.ts';
import { restoreTestTask } from './restore-test.ts';
import { runExportTask } from './export-task.ts';
import { instantRecoverTask } from './instant.ts';
import { runFilesTask } from '../files/files-task.ts';
import { standbyPaths, updateStandbyDisk } from './standby.ts';
import { runFailbackTask } from './failback-task.ts';
import type { RecoveryTaskDeps } from './task-deps.ts';

/** Whether a task input names a recovery task kind (then `runRecoveryTask` parses it). */
export function isRecoveryTask(raw: unknown): boolean {
  return !!raw && typeof raw === 'object' && recoveryTaskNames.includes((raw as { task?: string }).task ?? '');
}

/** Logs at most every `ms`, and always the last call. */
function throttled(ms: number) {
  let last = 0;
  return (final: boolean, log: () => void) => {
    const now = performance.now();
    if (!final && now - last < ms) return;
    last = now;
    log();
  };
}

/** A progress report is also the task's liveness (the worker's stall timeout), whether logged or not. */
function progressed(ctx: TaskContext, log: ReturnType<typeof throttled>): ReturnType<typeof throttled> {
  return (final, line) => {
    ctx.progress();
    log(final, line);
  };
}

/** A progress reporter (mover/progress-reporter.ts) for one disk of a restore or a verification. */
function reporter(
  store: ObjectStore,
  deps: RecoveryTaskDeps,
  task: Omit<ConstructorParameters<typeof ProgressReporter>[0]['task'], 'mover'>,
  phase: (typeof MOVING_PHASES)[number] = 'transfer',
) {
  return {
    phase,
    r: new ProgressReporter({ store, logger: deps.logger, everyMs: deps.progressEveryMs ?? 5000, task: { ...task, mover: deps.moverName ?? 'mover' } }),
  };
}

/** Runs `work` between the reporter's first write and its last (`done`, or `failed` when it throws). */
async function reported<T>(o: ReturnType<typeof reporter>, work: (r: ProgressReporter) => Promise<T>): Promise<T> {
  await o.r.start(o.phase);
  try {
    const out = await work(o.r);
    await o.r.finish('done');
    return out;
  } catch (err) {
    await o.r.finish('failed');
    throw err;
  }
}

/** Runs a recovery task after parsing its input with the contract (contracts/recovery-jobs.ts): a bad input is Mover.BadTaskInput naming each bad field. */
export async function runRecoveryTask(raw: unknown, deps: RecoveryTaskDeps, ctx: TaskContext): Promise<unknown> {
  const t = parseTaskInput(`${String((raw as { task?: unknown }).task)} task`, recoveryTask, raw);
  switch (t.task) {
    case 'restoreDisk': {
      const repository = await deps.repository(t.restore.repository);
      const log = progressed(ctx, throttled(250));
      const r = t.restore;
      return reported(
        reporter(repository.store, deps, {
          operation: 'restore',
          operationId: r.restoreId,
          vmId: r.vmId,
          backupId: r.backupId,
          diskId: t.disk.diskId,
          bytesTotal: t.disk.sizeBytes,
        }),
        (report) =>
          restoreDiskTask(r, t.disk, {
            repository,
            parallelism: deps.parallelism,
            signal: ctx.signal,
            ...(deps.workDir ? { workDir: deps.workDir } : {}),
            ...(deps.restoreInFlightBytes ? { inFlightBytes: deps.restoreInFlightBytes } : {}),
            onProgress: (p) => {
              report.update(p.bytesDone, 0, p.phase === 'write' ? 'transfer' : p.phase, p.sizeBytes);
              log(p.bytesDone === p.sizeBytes, () =>
                deps.logger.info('restore.progress', { restoreId: r.restoreId, vmId: r.vmId, backupId: r.backupId, ...p }),
              );
            },
          }),
      );
    }
    case 'restoreVmConfig': {
      return restoreVmConfigTask(t.restore, t.disks, {
        repository: await deps.repository(t.restore.repository),
        ...(deps.workDir ? { workDir: deps.workDir } : {}),
      });
    }
    case 'discardPoolVolumes': {
      const deleted = await discardPoolVolumes(deps.workDir, t.restore.restoreId);
      if (deleted.length) deps.logger.info('restore.volumes.deleted', { restoreId: t.restore.restoreId, volumes: deleted });
      return { deleted };
    }
    case 'deepVerifyDisk': {
      const repository = await deps.repository(t.verify.repository);
      const { store } = repository;
      const log = progressed(ctx, throttled(500));
      const v = t.verify;
      const result = await reported(
        reporter(
          store,
          deps,
          { operation: 'verify', operationId: v.verifyId, vmId: v.vmId, backupId: v.backupId, diskId: t.disk.diskId, bytesTotal: t.disk.sizeBytes },
          'read',
        ),
        (report) =>
          deepVerifyDisk(v, t.disk, {
            repository,
            parallelism: deps.parallelism,
            signal: ctx.signal,
            onProgress: (p) => {
              // Disk bytes covered by the chunks read back, of those the sample selected.
              report.update(p.chunksChecked * p.chunkSize, 0, 'read', p.chunksSelected * p.chunkSize);
              log(p.chunksChecked === p.chunksSelected, () => deps.logger.info('deepverify.progress', { verifyId: v.verifyId, backupId: v.backupId, ...p }));
            },
          }),
      );
      for (const f of result.damaged) deps.logger.error('deepverify.damaged', { verifyId: t.verify.verifyId, ...f });
      return result;
    }
    case 'replicateDisk': {
      const [source, target] = await Promise.all([deps.repository(t.replicate.source), deps.repository(t.replicate.target)]);
      const log = progressed(ctx, throttled(500));
      return replicateDisk(t.replicate, t.disk, t.index ?? 0, {
        source,
        target,
        parallelism: deps.parallelism,
        signal: ctx.signal,
        onProgress: (p) =>
          log(p.chunksDone === p.chunks, () =>
            deps.logger.info('replicate.progress', { replicationId: t.replicate.replicationId, backupId: t.replicate.backupId, ...p }),
          ),
      });
    }
    case 'updateStandbyDisk': {
      const repository = await deps.repository(t.replicate.target);
      const log = progressed(ctx, throttled(500));
      return updateStandbyDisk(t.replicate, t.disk, {
        repository,
        signal: ctx.signal,
        onProgress: (p) =>
          log(p.chunksDone === p.chunks, () => deps.logger.info('standby.progress', { vmId: t.replicate.vmId, backupId: t.replicate.backupId, ...p })),
      });
    }
    case 'standbyVmConfig': {
      const r = t.replicate;
      const dir = standbyPaths(r.replicaDir, r.vmId, '').dir;
      const job = {
        restoreId: r.replicationId,
        vmId: r.vmId,
        backupId: r.backupId,
        moverGroup: r.moverGroup,
        repository: r.target,
        target: dir,
        diskId: null,
        disks: [],
      };
      const disks = t.disks.map((x) => ({
        diskId: x.diskId,
        path: x.path,
        sizeBytes: x.sizeBytes,
        bytesDownloaded: 0,
        chunksVerified: 0,
        sha256: x.sha256,
        seconds: 0,
      }));
      return restoreVmConfigTask(job, disks, { repository: await deps.repository(r.target) });
    }
    case 'restoreTest': {
      return restoreTestTask(t.test, {
        repository: await deps.repository(t.test.repository),
        parallelism: deps.parallelism,
        workDir: deps.workDir,
        signal: ctx.signal,
        progress: ctx.progress,
        logger: deps.logger,
      });
    }
    case 'export': {
      return runExportTask(t.export, {
        repository: await deps.repository(t.export.repository),
        logger: deps.logger,
        signal: ctx.signal,
        progress: ctx.progress,
        record: true,
      });
    }
    case 'instantRecover': {
      return instantRecoverTask(t.restore, {
        repository: await deps.repository(t.restore.repository),
        workDir: deps.workDir,
        logger: deps.logger,
        signal: ctx.signal,
        progress: ctx.progress,
      });
    }
    case 'files': {
      return runFilesTask(t.files, { repository: await deps.repository(t.files.repository), logger: deps.logger, signal: ctx.signal, progress: ctx.progress });
    }
    case 'failbackDisk':
    case 'stopDrVm':
    case 'startProductionVm':
    case 'releaseReplica':
      return runFailbackTask(t, deps, ctx);
  }
}
