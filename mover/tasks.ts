/** The mover's task handlers: Snapshot, Dispatch (one disk), ReleaseSnapshot, Discover (one page of a host's VMs) and HostConfig (a host's definitions). */
import type { RepositoryLocation } from '../contracts/endpoints.ts';
import { isDiscoverTask } from '../contracts/discovery.ts';
import { isHostConfigTask } from '../contracts/host-config.ts';
import { BadTaskInput, parseTaskInput } from '../contracts/errors.ts';
import { moverTask, type MoverTask } from '../contracts/jobs.ts';
import { recoveryTaskNames } from '../contracts/recovery-jobs.ts';
import { runDiscoverTask } from './discover.ts';
import { runHostConfigTask } from './host-config.ts';
import { backupDisk } from './pipeline/backup-disk.ts';
import { isRecoveryTask, runRecoveryTask } from './recovery/tasks.ts';
import { isDrTask, runDrTask } from './recovery/dr-tasks.ts';
import { drTaskNames } from '../contracts/dr.ts';
import type { DriverFor } from './sources/drivers.ts';
import { ProgressReporter } from './progress-reporter.ts';
import type { Logger, TaskHandler } from './worker.ts';
import type { Repository } from '../repository/open.ts';

export interface TaskDeps {
  /** The source driver of a job's hypervisor (sources/drivers.ts). */
  drivers: DriverFor;
  /** The repository a job names (its bucket on its endpoint), opened once per process; its `index` is the mover's copy, read again before each use. */
  repository(repository: RepositoryLocation): Promise<Repository>;
  logger: Logger;
  parallelism: number;
  /** Pack size in bytes (default 8 MiB: repository/packs.ts). */
  packBytes?: number;
  /** Bytes of a restore's reads in flight (default: mover/pipeline/restore-disk.ts RESTORE_DEFAULTS). */
  restoreInFlightBytes?: number;
  /** The mover's work folder (LIFEBOAT_WORK_DIR): restore tests run under it; restores into a storage pool keep their records and raw copies there. */
  workDir: string;
  /** This mover's name, written into progress objects (contracts/progress.ts). */
  moverName?: string;
  /** How often a DispatchDisk task writes its progress object (default 5 s). */
  progressEveryMs?: number;
}

/**
 * The task kinds this mover runs, announced in its registration (mover/registration.ts).
 * The Backup workflow's kinds come from contracts/jobs.ts's `moverTask`, recovery kinds from contracts/recovery-jobs.ts.
 */
const BACKUP_TASK_KINDS: readonly string[] = moverTask.options.map((o) => o.shape.task.value);
export const TASK_KINDS: readonly string[] = [...BACKUP_TASK_KINDS, 'discover', 'hostConfig', ...recoveryTaskNames, ...drTaskNames];

export function taskHandler(deps: TaskDeps): TaskHandler {
  return async (raw, ctx) => {
    // Restore and deep verification tasks carry no VM job (mover/recovery/).
    if (isRecoveryTask(raw)) return runRecoveryTask(raw, deps, ctx);
    // Replica VMs and failover plans at the DR site (contracts/dr.ts).
    if (isDrTask(raw)) return runDrTask(raw, deps, ctx);
    // Discovery carries a host, not a VM job (mover/discover.ts validates it).
    if (isDiscoverTask(raw)) return runDiscoverTask(raw, deps.drivers, ctx.signal);
    // A host's networks, pools and domain definitions, sealed into the repository (mover/host-config.ts validates it).
    if (isHostConfigTask(raw)) return runHostConfigTask(raw, deps, ctx);
    const kind = (raw as { task?: unknown } | null)?.task;
    if (typeof kind !== 'string' || !BACKUP_TASK_KINDS.includes(kind))
      throw new BadTaskInput(`unknown task '${String(kind)}'; this mover knows ${TASK_KINDS.join(', ')}`);
    const t: MoverTask = parseTaskInput(`${kind} task`, moverTask, raw);
    switch (t.task) {
      case 'snapshot': {
        const driver = deps.drivers(t.job.hypervisor);
        const snap = await driver.snapshot(
          {
            source: t.job.source,
            backupId: t.job.backupId,
            parentBackupId: t.job.parentBackupId,
            parentCheckpoint: t.job.parentCheckpoint ?? null,
            ...(t.job.quiesce ? { quiesce: t.job.quiesce } : {}),
          },
          { signal: ctx.signal, progress: ctx.progress },
        );
        try {
          // The VM's configuration is part of the backup: a restore rebuilds the VM from it.
          await (await deps.repository(t.job.repository)).putVmConfig(t.job.backupId, snap.config);
        } catch (err) {
          await driver.release(t.job, snap);
          throw err;
        }
        return snap;
      }
      case 'releaseSnapshot':
        // Without a handle (Snapshot never returned: its mover or the run died), whatever it made for the backup id.
        if (t.job.snapshot) await deps.drivers(t.job.hypervisor).release(t.job, t.job.snapshot);
        else await deps.drivers(t.job.hypervisor).releaseBackup?.(t.job, t.job.backupId);
        return { released: !!t.job.snapshot };
      case 'dispatch': {
        const repository = await deps.repository(t.job.repository);
        const reader = await deps.drivers(t.job.hypervisor).openDisk(t.disk);
        let lastLog = 0;
        const reporter = new ProgressReporter({
          store: repository.store,
          logger: deps.logger,
          everyMs: deps.progressEveryMs ?? 5000,
          task: {
            vmId: t.job.vmId,
            backupId: t.job.backupId,
            diskId: t.disk.diskId,
            ...(t.segment ? { segment: t.segment.index } : {}),
            mover: deps.moverName ?? 'mover',
            bytesTotal: t.segment?.length ?? t.disk.sizeBytes,
          },
        });
        await reporter.start();
        try {
          const result = await backupDisk({
            repository,
            reader,
            disk: t.disk,
            backupId: t.job.backupId,
            chunkSize: t.job.repository.chunkSize,
            parentManifestKey: t.job.parentManifests[t.disk.diskId],
            parentBackupId: t.job.parentBackupId,
            ...(t.job.healChunks?.length ? { healChunks: new Set(t.job.healChunks) } : {}),
            parallelism: deps.parallelism,
            segment: t.segment ?? null,
            signal: ctx.signal,
            ...(deps.packBytes ? { packBytes: deps.packBytes } : {}),
            onProgress: (p) => {
              ctx.progress();
              reporter.update(p.bytesScanned, p.bytesStored);
              const now = performance.now();
              if (now - lastLog < 250 && p.bytesScanned < p.sizeBytes) return;
              lastLog = now;
              deps.logger.info('dispatch.progress', { vmId: t.job.vmId, diskId: t.disk.diskId, ...(t.segment ? { segment: t.segment.index } : {}), ...p });
            },
          });
          await reporter.finish('done');
          return result;
        } catch (err) {
          await reporter.finish('failed');
          throw err;
        } finally {
          await reader.close();
        }
      }
    }
  };
}
