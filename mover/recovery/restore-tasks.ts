/**
 * The mover's restore tasks: one disk into a file, a device or a storage pool volume
 * (download, open, check, write, then re-read and re-hash what was written), and the VM's
 * description beside the disks.
 */
import { mkdir, open as openFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { DefineDomainRequest, DefinedDomain, RestoredDisk, RestoreDiskTarget, RestoreJob } from '../../contracts/recovery-jobs.ts';
import { defineRestoredDomain, restoredDomainName } from './define-domain.ts';
import { discardPoolVolumes, releasePoolVolumes, restoreIntoVolume, volumeName } from './pool-volumes.ts';
import { restoreDisk } from '../pipeline/restore-disk.ts';
import { rehashDisk } from './rehash.ts';

const FORCE_HINT = 'choose another target, move what is there away, or pass --force (workflow input "force": true) to overwrite it';

/** The file a disk is written to until it is verified: beside the target, so the rename is atomic. */
export const partialPath = (target: string) => `${target}.partial`;

/** Marks a restore folder as taken by one restore: its disk tasks (and their retries) may write there. */
const claimMarker = (job: RestoreJob) => join(job.target, `.lifeboat-restore-${job.restoreId}`);

/**
 * A whole-VM restore writes only into an empty folder (or one this restore claimed
 * already: its other disks and retries), unless forced: restoring into a VM's folder
 * would overwrite its disks and vm.json, or mix with them.
 */
export async function claimRestoreFolder(job: RestoreJob): Promise<void> {
  await mkdir(job.target, { recursive: true });
  const marker = claimMarker(job);
  const entries = await readdir(job.target);
  if (entries.includes(marker.slice(job.target.length + 1))) return;
  if (entries.length > 0 && !job.force) {
    const shown = entries.slice(0, 5).join(', ') + (entries.length > 5 ? `, ... (${entries.length} entries)` : '');
    throw new RecoveryRequestInvalid(
      `restore target folder ${job.target} is not empty (it holds ${shown}); a whole-VM restore would overwrite or mix with what is there: ${FORCE_HINT}`,
    );
  }
  await writeFile(marker, `${job.vmId} ${job.backupId}\n`);
}

/** A single-disk restore never overwrites a file holding data unless forced. */
function refuseOverwrite(job: RestoreJob, path: string, existing: { size: number } | undefined): void {
  if (job.force || !existing || existing.size === 0) return;
  throw new RecoveryRequestInvalid(`restore target ${path} exists and holds ${existing.size} bytes; restoring disk would overwrite it: ${FORCE_HINT}`);
}

/** Makes a rename durable: the directory entry is on storage too, not only the file. */
async function syncDir(dir: string): Promise<void> {
  const fh = await openFile(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface RestoreTaskDeps {
  repository: Repository;
  parallelism: number;
  /** Bytes of the restore's reads in flight (restore-disk.ts `inFlightBytes`). */
  inFlightBytes?: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; bytesDone: number; sizeBytes: number; phase: 'write' | 'rehash' | 'convert' }) => void;
  /** 'device' writes in place (a block device, or a file standing in for one); default: by what the target is. */
  targetKind?: 'file' | 'device';
  /** The mover's work folder (`LIFEBOAT_WORK_DIR`): pool restores keep their records and qcow2 restores their raw copy there. Default: a folder in the system's temp folder. */
  workDir?: string;
}

/** The work folder restores use: the mover's, or one in the system's temp folder. */
export const workDirOf = (d: { workDir?: string }) => d.workDir ?? join(tmpdir(), 'lifeboat-mover-work');

async function readManifest(job: RestoreJob, disk: RestoreDiskTarget, d: { repository: Repository }) {
  const manifest = await d.repository.openManifest(job.backupId, disk.diskId);
  if (!manifest)
    throw new Corrupt(
      `manifest ${objectKeys.manifest(job.backupId, disk.diskId)} of disk '${disk.diskId}' (backup ${job.backupId}) is missing from the repository`,
    );
  return { manifest, sealedBytes: manifest.headBytes, sizeBytes: manifest.info.sizeBytes };
}

/** A backup's VM configuration (`Repository.readVmConfig`; kept for replica-vm.ts). */
export function readVmConfig(backupId: string, repository: Repository): Promise<Record<string, unknown>> {
  return repository.readVmConfig(backupId);
}

/**
 * One disk of a whole-VM restore with `define.pool`: into a new volume of the pool, named
 * after the restored domain (pool-volumes.ts); the restore folder keeps vm.json, the
 * domain's definition and its console log.
 */
async function restoreDiskToPool(
  job: RestoreJob,
  define: DefineDomainRequest & { pool: string },
  disk: RestoreDiskTarget,
  d: RestoreTaskDeps,
): Promise<RestoredDisk> {
  const started = performance.now();
  await claimRestoreFolder(job);
  const { manifest, sealedBytes, sizeBytes } = await readManifest(job, disk, d);
  const format = define.format ?? 'qcow2';
  const volume = volumeName(restoredDomainName(await d.repository.readVmConfig(job.backupId), job.backupId, define), disk.diskId, format);
  const dataBytes = Math.min(sizeBytes, (await manifest.storedChunks()) * manifest.info.chunkSize);
  const r = await restoreIntoVolume(
    {
      uri: define.uri,
      pool: define.pool,
      volume,
      format,
      diskId: disk.diskId,
      sizeBytes,
      dataBytes,
      restoreId: job.restoreId,
      force: !!job.force,
      workDir: workDirOf(d),
      ...(d.signal ? { signal: d.signal } : {}),
    },
    async (path, kind) => {
      const written = await restoreDisk({
        repository: d.repository,
        backupId: job.backupId,
        diskId: disk.diskId,
        target: path,
        ...(d.inFlightBytes ? { inFlightBytes: d.inFlightBytes } : {}),
        ...kind,
        onProgress: (bytesDone, sizeBytes) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'write' }),
      });
      d.signal?.throwIfAborted();
      const check = await rehashDisk({
        repository: d.repository,
        manifest,
        path,
        device: kind.targetKind === 'device',
        ...(d.signal ? { signal: d.signal } : {}),
        onProgress: (bytesDone) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'rehash' }),
      });
      return { sha256: check.sha256, chunksVerified: check.chunksVerified, bytesDownloaded: written.bytesDownloaded + sealedBytes };
    },
    (bytesDone) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'convert' }),
  );
  return {
    diskId: disk.diskId,
    path: r.path,
    sizeBytes,
    bytesDownloaded: r.bytesDownloaded,
    chunksVerified: r.chunksVerified,
    sha256: r.sha256,
    seconds: (performance.now() - started) / 1000,
    volume: r.volume,
  };
}

/** A device target must hold the whole disk: its byte at `sizeBytes - 1` must be readable. */
async function checkDeviceCapacity(path: string, sizeBytes: number): Promise<void> {
  const fh = await openFile(path, 'r');
  try {
    const { bytesRead } = await fh.read(Buffer.alloc(1), 0, 1, sizeBytes - 1);
    if (bytesRead !== 1) throw new RecoveryRequestInvalid(`restore target ${path} is smaller than the disk (${sizeBytes} bytes)`);
  } finally {
    await fh.close();
  }
}

export async function restoreDiskTask(job: RestoreJob, disk: RestoreDiskTarget, d: RestoreTaskDeps): Promise<RestoredDisk> {
  if (job.define?.pool && job.diskId === null) return restoreDiskToPool(job, { ...job.define, pool: job.define.pool }, disk, d);
  const started = performance.now();
  const existing = await stat(disk.path).catch(() => undefined);
  const targetKind = d.targetKind ?? (existing?.isBlockDevice() ? 'device' : 'file');
  if (targetKind === 'file' && existing && !existing.isFile()) {
    throw new RecoveryRequestInvalid(`restore target ${disk.path} exists and is neither a regular file nor a block device; choose a file path for the disk`);
  }
  if (targetKind === 'device') {
    if (!existing) throw new RecoveryRequestInvalid(`restore target device ${disk.path} does not exist`);
    if (disk.sizeBytes > 0) await checkDeviceCapacity(disk.path, disk.sizeBytes);
  } else if (job.diskId === null) {
    await claimRestoreFolder(job);
  } else {
    refuseOverwrite(job, disk.path, existing);
    await mkdir(dirname(disk.path), { recursive: true });
  }
  const { manifest, sealedBytes } = await readManifest(job, disk, d);
  const { sizeBytes } = manifest.info;
  // A file is written under a temporary name and renamed into place only once verified:
  // a failed restore never leaves a full-size file that looks restored under the target's name.
  const path = targetKind === 'device' ? disk.path : partialPath(disk.path);
  try {
    const written = await restoreDisk({
      repository: d.repository,
      backupId: job.backupId,
      diskId: disk.diskId,
      target: path,
      ...(d.inFlightBytes ? { inFlightBytes: d.inFlightBytes } : {}),
      targetKind,
      onProgress: (bytesDone, sizeBytes) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'write' }),
    });
    d.signal?.throwIfAborted();
    const check = await rehashDisk({
      repository: d.repository,
      manifest,
      path,
      device: targetKind === 'device',
      ...(d.signal ? { signal: d.signal } : {}),
      onProgress: (bytesDone) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'rehash' }),
    });
    if (path !== disk.path) {
      await rename(path, disk.path);
      await syncDir(dirname(disk.path));
    }
    return {
      diskId: disk.diskId,
      path: disk.path,
      sizeBytes: written.sizeBytes,
      bytesDownloaded: written.bytesDownloaded + sealedBytes,
      chunksVerified: check.chunksVerified,
      sha256: check.sha256,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (err) {
    if (path !== disk.path) await rm(path, { force: true });
    throw err;
  }
}

/** Writes `vm.json` into the restore folder: the VM's configuration at backup time and its restored disks. */
export async function restoreVmConfigTask(
  job: RestoreJob,
  disks: RestoredDisk[],
  d: { repository: Repository; workDir?: string },
  opts: { signal?: AbortSignal; onWait?: () => void } = {},
): Promise<{ path: string; domain?: DefinedDomain }> {
  const config = await d.repository.readVmConfig(job.backupId);
  const path = join(job.target, 'vm.json');
  await mkdir(job.target, { recursive: true });
  // The disk tasks claimed the folder (or were forced); a standby folder is the replica's own.
  const restored = {
    ...config,
    disks: disks.map((x) => ({
      id: x.diskId,
      file: x.path.startsWith(`${job.target}/`) ? x.path.slice(job.target.length + 1) : x.path,
      sizeBytes: x.sizeBytes,
      sha256: x.sha256,
      ...(x.volume ? { volume: x.volume } : {}),
    })),
    restoredFrom: { vmId: job.vmId, backupId: job.backupId, restoreId: job.restoreId },
  };
  await writeFile(partialPath(path), JSON.stringify(restored, null, 2), { flush: true });
  await rename(partialPath(path), path);
  await rm(claimMarker(job), { force: true });
  if (!job.define) return { path };
  if (!job.define.pool)
    return { path, domain: await defineRestoredDomain({ config, backupId: job.backupId, target: job.target, disks, define: job.define, ...opts }) };
  // Volumes this restore created are its own until the domain is defined: a failure before deletes them.
  const workDir = workDirOf(d);
  try {
    return {
      path,
      domain: await defineRestoredDomain({
        config,
        backupId: job.backupId,
        target: job.target,
        disks,
        define: job.define,
        ...opts,
        onDefined: () => releasePoolVolumes(workDir, job.restoreId),
      }),
    };
  } catch (err) {
    await discardPoolVolumes(workDir, job.restoreId).catch(() => {});
    throw err;
  }
}
