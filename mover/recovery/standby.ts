/**
 * The warm standby replica at the DR site: raw disk images kept equal to a backup in the
 * DR repository. Bringing a disk from backup A to backup B writes only the chunks whose
 * ids differ between A's and B's manifests; a disk with no known state (first time, or an
 * update that stopped half-way) is compared chunk by chunk against B and only
 * differences are written. Afterwards the disk is re-read and every chunk checked.
 *
 * Beside each disk, `<diskId>.state.json` says which backup it holds:
 * `{ backupId, state: 'current' }`, or `state: 'updating'` while it is being changed.
 */
import { mkdir, open as openFile, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isZero } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { checkedChunk } from './manifest-diff.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { ReplicateJob, StandbyDisk } from '../../contracts/recovery-jobs.ts';
import { rehashDisk } from './rehash.ts';

interface DiskState {
  backupId: string;
  state: 'current' | 'updating';
}

export const standbyPaths = (replicaDir: string, vmId: string, diskId: string) => {
  const dir = join(replicaDir, vmId);
  return { dir, disk: join(dir, `${diskId}.raw`), state: join(dir, `${diskId}.state.json`) };
};

async function readState(path: string): Promise<DiskState | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as DiskState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return undefined; // unreadable: treated as unknown, so every chunk is compared
  }
}

async function writeState(path: string, s: DiskState): Promise<void> {
  await writeFile(`${path}.tmp`, JSON.stringify(s));
  await rename(`${path}.tmp`, path);
}

export async function updateStandbyDisk(
  job: ReplicateJob,
  disk: { diskId: string },
  d: {
    /** The DR repository. */
    repository: Repository;
    signal?: AbortSignal;
    onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksWritten: number }) => void;
  },
): Promise<StandbyDisk> {
  const started = performance.now();
  if (!job.replicaDir) throw new RecoveryRequestInvalid(`replication ${job.replicationId} names no replica folder`);
  const paths = standbyPaths(job.replicaDir, job.vmId, disk.diskId);
  // Both manifests are read a piece at a time, in step (memory stays bounded whatever the disk's size).
  const target = await d.repository.openManifest(job.backupId, disk.diskId);
  if (!target)
    throw new Corrupt(
      `manifest of disk '${disk.diskId}' (backup ${job.backupId}) is missing from the DR repository ${job.target.bucket}; replicate the backup first`,
    );
  const state = await readState(paths.state);
  // Incremental only from a replica known to hold a whole backup whose manifest is still there.
  const from = state?.state === 'current' ? await d.repository.openManifest(state.backupId, disk.diskId) : undefined;
  const fromUsable = from && from.info.chunkSize === target.info.chunkSize ? from.info : undefined;
  const fromCursor = fromUsable && from!.cursor();
  const { chunkSize, sizeBytes } = target.info;
  const chunks = target.info.to;

  await mkdir(dirname(paths.disk), { recursive: true });
  await writeState(paths.state, { backupId: job.backupId, state: 'updating' });
  const fh = await openFile(paths.disk, 'a+').then(async (h) => {
    await h.close();
    return openFile(paths.disk, 'r+');
  });
  let chunksWritten = 0;
  let bytesWritten = 0;
  let chunksUnchanged = 0;
  try {
    const buf = Buffer.alloc(chunkSize);
    const { size } = await fh.stat();
    for await (const batch of target.batches())
      for (let k = 0; k < batch.count; k++) {
        const i = batch.firstChunk + k;
        d.signal?.throwIfAborted();
        const offset = i * chunkSize;
        const length = Math.min(chunkSize, sizeBytes - offset);
        const want = batch.id(k);
        let same: boolean;
        if (fromUsable && fromCursor && size === fromUsable.sizeBytes && i < fromUsable.to && offset + length <= fromUsable.sizeBytes) {
          same = ((await fromCursor.at(i))?.id ?? null) === want && Math.min(fromUsable.chunkSize, fromUsable.sizeBytes - offset) === length;
        } else {
          // No trustworthy state: compare with what the file holds (past its end it reads as the zeros the final truncate adds).
          const view = buf.subarray(0, length);
          const { bytesRead } = await fh.read(view, 0, length, offset);
          if (bytesRead < length) view.fill(0, bytesRead);
          same = want === null ? isZero(view) : d.repository.chunkId(view) === want;
        }
        if (same) {
          chunksUnchanged++;
        } else {
          const data = want === null ? Buffer.alloc(length) : await checkedChunk(d.repository, batch.location(k)!, want, disk.diskId, offset, length);
          await fh.write(data, 0, length, offset);
          chunksWritten++;
          bytesWritten += length;
        }
        if ((i + 1) % 64 === 0 || i + 1 === chunks) d.onProgress?.({ diskId: disk.diskId, chunksDone: i + 1, chunks, chunksWritten });
      }
    await fh.truncate(sizeBytes);
    await fh.sync();
  } finally {
    await fh.close();
    await fromCursor?.close();
  }
  const check = await rehashDisk({ repository: d.repository, manifest: target, path: paths.disk, ...(d.signal ? { signal: d.signal } : {}) });
  await writeState(paths.state, { backupId: job.backupId, state: 'current' });
  return {
    diskId: disk.diskId,
    path: paths.disk,
    sizeBytes,
    fromBackupId: fromUsable ? state!.backupId : null,
    chunksWritten,
    bytesWritten,
    chunksUnchanged,
    sha256: check.sha256,
    seconds: (performance.now() - started) / 1000,
  };
}
