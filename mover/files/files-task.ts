/**
 * The `files` task: list a directory of, or extract files from, a backup's disk straight
 * from the repository. The disk is read by random access through the export's block
 * source (`recovery/export.ts`: manifest → ranged GETs of packs, cache), so only the
 * chunks that hold the metadata and files asked for are downloaded. The guest's file
 * system is parsed in the sandboxed child (`sandbox.ts`); this process keeps the keys and
 * writes extracted files under the job's target on this mover's host.
 */
import { mkdir } from 'node:fs/promises';
import { filesResult, LISTING_PAGE_BYTES, type FilesJob, type FilesResult } from '../../contracts/files-job.ts';
import type { Repository } from '../../repository/open.ts';
import { FilesNotFound, FilesUnreadable } from '../../contracts/recovery-errors.ts';
import { BackupDiskExport } from '../recovery/export.ts';
import type { Logger } from '../worker.ts';
import type { BlockReader } from './block-reader.ts';
import { extractor } from './extract.ts';
import { runSandbox, SandboxFailure, type ChildMessage, type FileEntry, type SandboxOptions } from './sandbox.ts';

export interface FilesTaskDeps {
  repository: Repository;
  logger: Logger;
  signal?: AbortSignal;
  /** The task's liveness, called as the reader reads. */
  progress?: () => void;
}

/** Decoded chunks kept while reading a file system (its metadata is read again and again). */
const CACHE_MIB = 64;
/** Few chunks ahead: a file read in pieces is sequential, metadata reads are not, and every chunk fetched ahead is downloaded. */
const READ_AHEAD_CHUNKS = 4;

/** What the reader said, as the task's typed error naming the backup, disk and request. */
function taskError(err: unknown, job: FilesJob): Error {
  if (!(err instanceof SandboxFailure)) return err as Error;
  const where = `backup ${job.backupId} disk '${job.diskId}'${job.partition !== undefined ? ` partition ${job.partition}` : ''}`;
  if (err.kind === 'notFound') return new FilesNotFound(`${where}: ${err.message}`);
  return new FilesUnreadable(
    `${where}: ${err.message}; nothing more was read. The guest's partition table or file system is damaged, hostile or of a kind not read here: try an older backup (--backup), or restore the disk (lifeboat restore) and examine it with fsck`,
  );
}

/** What the reader said it opened: a reader that finished without saying is not a sound one. */
function said(m: Extract<ChildMessage, { t: 'opened' }> | undefined): Extract<ChildMessage, { t: 'opened' }> {
  if (!m) throw new SandboxFailure('crashed', 'the file-system reader finished without saying which file system it opened');
  return m;
}

/** The result less what only the task knows (the repository's counts, the ids, the time). */
type ReaderResult = FilesResult extends infer R
  ? R extends FilesResult
    ? Omit<R, 'bytesDownloaded' | 'seconds' | 'filesId' | 'backupId' | 'diskId'>
    : never
  : never;

/** Lists or extracts from any block source (a backup's disk; a local image in tests and the bench). */
export async function runFilesOn(
  disk: BlockReader,
  job: FilesJob,
  o: SandboxOptions & { onRead?: () => void; pageBytes?: number } = {},
): Promise<ReaderResult> {
  let opened: Extract<ChildMessage, { t: 'opened' }> | undefined;
  const counted: BlockReader = {
    size: disk.size,
    read: (off, len) => {
      o.onRead?.();
      return disk.read(off, len);
    },
  };
  if (job.op === 'ls') {
    const page: FileEntry[] = [];
    let total = 0,
      bytes = 0,
      next: number | null = null;
    const stats = await runSandbox(
      counted,
      { op: 'ls', diskSize: disk.size, path: job.path, ...(job.partition !== undefined ? { partition: job.partition } : {}) },
      (m) => {
        if (m.t === 'opened') opened = m;
        if (m.t !== 'entry') return;
        const i = total++;
        if (i < job.offset || next !== null) return;
        bytes += JSON.stringify(m.entry).length + 1;
        if (bytes > (o.pageBytes ?? LISTING_PAGE_BYTES)) next = i;
        else page.push(m.entry);
      },
      o,
    );
    const o2 = said(opened);
    return { op: 'ls', fs: o2.fs, partition: o2.partition, warnings: o2.warnings, bytesRead: stats.bytesRead, path: job.path, entries: page, total, next };
  }
  await mkdir(job.target, { recursive: true });
  const x = extractor(job.target);
  try {
    const stats = await runSandbox(
      counted,
      { op: 'get', diskSize: disk.size, paths: job.paths, ...(job.partition !== undefined ? { partition: job.partition } : {}) },
      (m) => {
        if (m.t === 'opened') opened = m;
        return x.onMessage(m);
      },
      o,
    );
    const o2 = said(opened);
    return { op: 'get', fs: o2.fs, partition: o2.partition, warnings: o2.warnings, bytesRead: stats.bytesRead, target: job.target, ...x.stats };
  } finally {
    await x.close();
  }
}

export async function runFilesTask(job: FilesJob, d: FilesTaskDeps): Promise<FilesResult> {
  const started = performance.now();
  d.signal?.throwIfAborted();
  const disk = await BackupDiskExport.open({
    repository: d.repository,
    backupId: job.backupId,
    diskId: job.diskId,
    logger: d.logger,
    cacheMiB: CACHE_MIB,
    readAheadChunks: READ_AHEAD_CHUNKS,
  });
  let last = 0;
  const onRead = () => {
    const now = performance.now();
    if (now - last < 1000) return;
    last = now;
    d.progress?.();
  };
  try {
    const r = await runFilesOn(disk, job, { timeoutMs: job.timeoutSeconds * 1000, ...(d.signal ? { signal: d.signal } : {}), onRead });
    const result = filesResult.parse({
      ...r,
      filesId: job.filesId,
      backupId: job.backupId,
      diskId: job.diskId,
      bytesDownloaded: disk.stats.bytesDownloaded,
      seconds: (performance.now() - started) / 1000,
    });
    d.logger.info('files.done', {
      filesId: job.filesId,
      op: job.op,
      fs: result.fs,
      partition: result.partition,
      bytesRead: result.bytesRead,
      bytesDownloaded: result.bytesDownloaded,
    });
    return result;
  } catch (err) {
    throw taskError(err, job);
  } finally {
    disk.close();
  }
}
