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
import { chunkId, isZero, type RepositoryKeys } from '../../repository/format.ts';
import { Corrupt } from '../../contracts/errors.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { manifestOf, verifiedChunk } from './manifest-diff.ts';
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

export async function updateStandbyDisk(job: ReplicateJob, disk: { diskId: string }, d: { store: ObjectStore; keys: RepositoryKeys; signal?: AbortSignal; onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksWritten: number }) => void }): Promise<StandbyDisk> {
  const started = performance.now();
  if (!job.replicaDir) throw new RecoveryRequestInvalid(`replication ${job.replicationId} names no replica folder`);
  const paths = standbyPaths(job.replicaDir, job.vmId, disk.diskId);
  const target = await manifestOf(d.store, d.keys, job.backupId, disk.diskId);
  if (!target) throw new Corrupt(`manifest of disk '${disk.diskId}' (backup ${job.backupId}) is missing from the DR repository ${job.target.bucket}; replicate the backup first`);
  const state = await readState(paths.state);
  // Incremental only from a replica known to hold a whole backup whose manifest is still there.
  const from = state?.state === 'current' ? await manifestOf(d.store, d.keys, state.backupId, disk.diskId) : undefined;
  const fromUsable = from && from.chunkSize === target.chunkSize ? from : undefined;

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
    const buf = Buffer.alloc(target.chunkSize);
    const { size } = await fh.stat();
    for (let i = 0; i < target.chunks.length; i++) {
      d.signal?.throwIfAborted();
      const offset = i * target.chunkSize;
      const length = Math.min(target.chunkSize, target.sizeBytes - offset);
      const want = target.chunks[i] ?? null;
      let same: boolean;
      if (fromUsable && size === fromUsable.sizeBytes && i < fromUsable.chunks.length && offset + length <= fromUsable.sizeBytes) {
        same = (fromUsable.chunks[i] ?? null) === want && Math.min(fromUsable.chunkSize, fromUsable.sizeBytes - offset) === length;
      } else {
        // No trustworthy state: compare with what the file holds (past its end it reads as the zeros the final truncate adds).
        const view = buf.subarray(0, length);
        const { bytesRead } = await fh.read(view, 0, length, offset);
        if (bytesRead < length) view.fill(0, bytesRead);
        same = want === null ? isZero(view) : chunkId(d.keys, view) === want;
      }
      if (same) {
        chunksUnchanged++;
      } else {
        const data = want === null ? Buffer.alloc(length) : await verifiedChunk(d.store, d.keys, target, want, offset, length);
        await fh.write(data, 0, length, offset);
        chunksWritten++;
        bytesWritten += length;
      }
      if ((i + 1) % 64 === 0 || i + 1 === target.chunks.length) d.onProgress?.({ diskId: disk.diskId, chunksDone: i + 1, chunks: target.chunks.length, chunksWritten });
    }
    await fh.truncate(target.sizeBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
  const check = await rehashDisk({ keys: d.keys, manifest: target, path: paths.disk, ...(d.signal ? { signal: d.signal } : {}) });
  await writeState(paths.state, { backupId: job.backupId, state: 'current' });
  return {
    diskId: disk.diskId, path: paths.disk, sizeBytes: target.sizeBytes, fromBackupId: fromUsable ? state!.backupId : null,
    chunksWritten, bytesWritten, chunksUnchanged, sha256: check.sha256, seconds: (performance.now() - started) / 1000,
  };
}
