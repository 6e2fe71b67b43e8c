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
import type { Repository } from '../../repository/open.ts';
import { NbdServer } from '../nbd/server.ts';
import type { Logger } from '../worker.ts';
import { BackupDiskExport } from './export.ts';
import { sharedChunkPool, type ChunkPool } from '../pipeline/chunk-pool.ts';

export interface ExportTaskDeps {
  repository: Repository;
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

/** Keys that open nothing: the warm-up's request needs some. */
const WARM_KEYS: RepositoryKeys = Object.freeze({ encryption: Buffer.alloc(32), id: Buffer.alloc(32) });

/**
 * Starts the chunk pool's workers and has one answer a request, so their code is loaded
 * before the first read needs them (on a loaded host, starting a worker takes a second or
 * more, which a booting guest's first reads would wait for).
 */
export async function warmChunkPool(pool: ChunkPool = sharedChunkPool()): Promise<void> {
  const slot = pool.share(1);
  try {
    await pool.hashSlot(WARM_KEYS, slot, 0);
  } finally {
    pool.unshare(slot);
  }
}

export async function runExportTask(job: ExportJob, d: ExportTaskDeps): Promise<ExportResult> {
  const started = performance.now();
  d.signal?.throwIfAborted();
  const disks = new Map<string, BackupDiskExport>();
  let server: NbdServer | undefined;
  // The chunk pool's workers start while the manifests are read, not on the first read.
  const warming = warmChunkPool().catch((err: Error) => d.logger.error('export.pool.warm.failed', { error: err.message }));
  try {
    for (const diskId of job.diskIds) {
      disks.set(
        diskId,
        await BackupDiskExport.open({
          repository: d.repository,
          backupId: job.backupId,
          diskId,
          logger: d.logger,
          cacheMiB: job.cacheMiB,
          readAheadChunks: job.readAheadChunks,
        }),
      );
    }
    await warming;
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
          d.repository.store,
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
    for (const [diskId, x] of disks) {
      d.logger.info('export.disk.closed', { exportId: job.exportId, diskId, ...x.stats });
      x.close();
    }
    await record('closed', why);
  }
}
