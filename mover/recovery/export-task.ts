/**
 * The `export` task: serve a backup's disks over NBD (one export per disk, named by its
 * disk id) from this mover, straight from the repository, until no client has been
 * connected for the idle timeout or the task is stopped; answer what was served. While it
 * runs, its endpoint record (contracts/export-job.ts `exportEndpoint`) says where it listens.
 */
import { hostname } from 'node:os';
import { exportEndpointKey, exportResult, type ExportEndpoint, type ExportJob, type ExportResult } from '../../contracts/export-job.ts';
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
  /**
   * Keep the endpoint record (`exports/<exportId>.json`) in the job's repository: written
   * when it listens, with each progress beat, and closed at the end (default: true when
   * run as a workflow task; the CLI's in-process export has no one to read it).
   */
  record?: boolean;
}

/** Writes an export's endpoint record; a failed write is logged, never fatal (the export serves on). */
export async function putEndpoint(store: ObjectStore, e: Omit<ExportEndpoint, 'mover' | 'updatedAt'>, logger: Logger): Promise<void> {
  const record: ExportEndpoint = { ...e, mover: hostname(), updatedAt: new Date().toISOString() };
  await store
    .put(exportEndpointKey(e.exportId), Buffer.from(JSON.stringify(record)))
    .catch((err: Error) => logger.error('export.record.failed', { exportId: e.exportId, error: err.message }));
}

export async function runExportTask(job: ExportJob, d: ExportTaskDeps): Promise<ExportResult> {
  const started = performance.now();
  d.signal?.throwIfAborted();
  const disks = new Map<string, BackupDiskExport>();
  let server: NbdServer | undefined;
  try {
    for (const diskId of job.diskIds) {
      disks.set(
        diskId,
        await BackupDiskExport.open({
          store: d.store,
          keys: d.keys,
          backupId: job.backupId,
          diskId,
          logger: d.logger,
          cacheMiB: job.cacheMiB,
          readAheadChunks: job.readAheadChunks,
        }),
      );
    }
    server = await NbdServer.listen(job.listen, {
      exports: disks,
      maxConnections: job.maxConnections,
      idleTimeoutMs: job.idleTimeoutSeconds * 1000,
      logger: d.logger,
    });
  } catch (err) {
    for (const x of disks.values()) x.close();
    throw err;
  }
  const srv = server;
  const uris = Object.fromEntries(job.diskIds.map((id) => [id, srv.uri(id)]));
  const record = (state: 'listening' | 'closed', closed?: string) =>
    d.record
      ? putEndpoint(
          d.store,
          { exportId: job.exportId, kind: 'export', vmId: job.vmId, backupId: job.backupId, state, uris, ...(closed ? { closed } : {}) },
          d.logger,
        )
      : Promise.resolve();
  await record('listening');
  d.logger.info('export.listening', { exportId: job.exportId, vmId: job.vmId, backupId: job.backupId, uris, idleTimeoutSeconds: job.idleTimeoutSeconds });
  d.onListening?.(uris);
  const stop = () => void srv.close('closed');
  d.signal?.addEventListener('abort', stop, { once: true });
  const downloaded = () => [...disks.values()].reduce((n, x) => n + x.stats.bytesDownloaded, 0);
  const beat = setInterval(() => {
    d.progress?.();
    void record('listening');
    d.logger.info('export.progress', { exportId: job.exportId, bytesServed: srv.stats.bytesServed, bytesDownloaded: downloaded(), active: srv.stats.active });
  }, d.progressMs ?? 30_000);
  let why = 'failed';
  try {
    why = (await srv.done) === 'idle' ? 'idle' : 'aborted';
    return exportResult.parse({
      exportId: job.exportId,
      backupId: job.backupId,
      closed: why,
      bytesServed: srv.stats.bytesServed,
      bytesDownloaded: downloaded(),
      connections: srv.stats.connections,
      refused: srv.stats.refused,
      damagedChunks: [...disks.values()].reduce((n, x) => n + x.stats.damagedChunks, 0),
      seconds: (performance.now() - started) / 1000,
    });
  } finally {
    clearInterval(beat);
    d.signal?.removeEventListener('abort', stop);
    await srv.close();
    for (const x of disks.values()) x.close();
    await record('closed', why);
  }
}
