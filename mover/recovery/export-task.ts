/**
 * The `export` task: serve a backup's disks over NBD (one export per disk, named by its
 * disk id) from this mover, straight from the repository, until no client has been
 * connected for the idle timeout or the task is stopped; answer what was served.
 */
import { exportResult, type ExportJob, type ExportResult } from '../../contracts/export-job.ts';
import type { RepositoryKeys } from '../../repository/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { NbdServer } from '../nbd/server.ts';
import type { Logger } from '../worker.ts';
import { BackupDiskExport } from './export.ts';

export interface ExportTaskDeps {
  store: ObjectStore;
  keys: RepositoryKeys;
  logger: Logger;
  /** Stopping the task closes the export (connections are dropped). */
  signal?: AbortSignal;
  /**
   * The task's liveness: called every `progressMs` while the export is open. An export with
   * no reads is still doing its job (a booted guest reads little), and the idle timeout,
   * not the worker's stall timeout, is what ends an unused one.
   */
  progress?: () => void;
  progressMs?: number;
  /** Called once it listens, with each disk's NBD URI. */
  onListening?: (uris: Record<string, string>) => void;
}

export async function runExportTask(job: ExportJob, d: ExportTaskDeps): Promise<ExportResult> {
  const started = performance.now();
  d.signal?.throwIfAborted();
  const disks = new Map<string, BackupDiskExport>();
  for (const diskId of job.diskIds) {
    disks.set(diskId, await BackupDiskExport.open({ store: d.store, keys: d.keys, backupId: job.backupId, diskId, logger: d.logger, cacheMiB: job.cacheMiB, readAheadChunks: job.readAheadChunks }));
  }
  const server = await NbdServer.listen(job.listen, { exports: disks, maxConnections: job.maxConnections, idleTimeoutMs: job.idleTimeoutSeconds * 1000, logger: d.logger });
  const uris = Object.fromEntries(job.diskIds.map((id) => [id, server.uri(id)]));
  d.logger.info('export.listening', { exportId: job.exportId, vmId: job.vmId, backupId: job.backupId, uris, idleTimeoutSeconds: job.idleTimeoutSeconds });
  d.onListening?.(uris);
  const stop = () => void server.close('closed');
  d.signal?.addEventListener('abort', stop, { once: true });
  const downloaded = () => [...disks.values()].reduce((n, x) => n + x.stats.bytesDownloaded, 0);
  const beat = setInterval(() => {
    d.progress?.();
    d.logger.info('export.progress', { exportId: job.exportId, bytesServed: server.stats.bytesServed, bytesDownloaded: downloaded(), active: server.stats.active });
  }, d.progressMs ?? 30_000);
  try {
    const why = await server.done;
    return exportResult.parse({
      exportId: job.exportId, backupId: job.backupId, closed: why === 'idle' ? 'idle' : 'aborted',
      bytesServed: server.stats.bytesServed, bytesDownloaded: downloaded(), connections: server.stats.connections, refused: server.stats.refused,
      damagedChunks: [...disks.values()].reduce((n, x) => n + x.stats.damagedChunks, 0), seconds: (performance.now() - started) / 1000,
    });
  } finally {
    clearInterval(beat);
    d.signal?.removeEventListener('abort', stop);
    await server.close();
    for (const x of disks.values()) x.close();
  }
}
