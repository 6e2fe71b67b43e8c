/**
 * The mover's restore tasks: one disk into a file (download, open, check, write, then
 * re-read and re-hash what was written), and the VM's description beside the disks.
 */
import { mkdir, open as openFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Corrupt } from '../../core/errors.ts';
import { decodeManifest, keys as objectKeys, open, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { RecoveryRequestInvalid } from '../../core/recovery-errors.ts';
import type { DefinedDomain, RestoredDisk, RestoreDiskTarget, RestoreJob } from '../../core/recovery-jobs.ts';
import { defineRestoredDomain } from './define-domain.ts';
import { restoreDisk } from '../pipeline/restore-disk.ts';
import { rehashDisk } from './rehash.ts';

export interface RestoreTaskDeps {
  store: ObjectStore;
  keys: RepositoryKeys;
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; bytesDone: number; sizeBytes: number; phase: 'write' | 'rehash' }) => void;
  /** 'device' writes in place (a block device, or a file standing in for one); default: by what the target is. */
  targetKind?: 'file' | 'device';
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
  const started = performance.now();
  const existing = await stat(disk.path).catch(() => undefined);
  const targetKind = d.targetKind ?? (existing?.isBlockDevice() ? 'device' : 'file');
  if (targetKind === 'file' && existing && !existing.isFile()) {
    throw new RecoveryRequestInvalid(`restore target ${disk.path} exists and is neither a regular file nor a block device`);
  }
  if (targetKind === 'device') {
    if (!existing) throw new RecoveryRequestInvalid(`restore target device ${disk.path} does not exist`);
    if (disk.sizeBytes > 0) await checkDeviceCapacity(disk.path, disk.sizeBytes);
  } else {
    await mkdir(dirname(disk.path), { recursive: true });
  }
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealed = await d.store.get(manifestKey);
  if (!sealed) throw new Corrupt(`manifest ${manifestKey} of disk '${disk.diskId}' (backup ${job.backupId}) is missing from the repository`);
  const manifest = await decodeManifest(d.keys, sealed, job.backupId, disk.diskId);
  const written = await restoreDisk({
    store: d.store, keys: d.keys, backupId: job.backupId, diskId: disk.diskId, target: disk.path, parallelism: d.parallelism, targetKind,
    onProgress: (bytesDone, sizeBytes) => d.onProgress?.({ diskId: disk.diskId, bytesDone, sizeBytes, phase: 'write' }),
  });
  d.signal?.throwIfAborted();
  const check = await rehashDisk({ keys: d.keys, manifest, path: disk.path, device: targetKind === 'device', ...(d.signal ? { signal: d.signal } : {}) });
  d.onProgress?.({ diskId: disk.diskId, bytesDone: manifest.sizeBytes, sizeBytes: manifest.sizeBytes, phase: 'rehash' });
  return {
    diskId: disk.diskId, path: disk.path, sizeBytes: written.sizeBytes, bytesDownloaded: written.bytesDownloaded + sealed.length,
    chunksVerified: check.chunksVerified, sha256: check.sha256, seconds: (performance.now() - started) / 1000,
  };
}

/** Writes `vm.json` into the restore folder: the VM's configuration at backup time and its restored disks. */
export async function restoreVmConfigTask(job: RestoreJob, disks: RestoredDisk[], d: { store: ObjectStore; keys: RepositoryKeys }): Promise<{ path: string; domain?: DefinedDomain }> {
  const key = objectKeys.vmConfig(job.backupId);
  const sealed = await d.store.get(key);
  if (!sealed) throw new Corrupt(`VM config ${key} of backup ${job.backupId} is missing from the repository`);
  const config = JSON.parse((await open(d.keys, sealed, `vm-config:${job.backupId}`)).toString('utf8')) as Record<string, unknown>;
  const path = join(job.target, 'vm.json');
  await mkdir(job.target, { recursive: true });
  const restored = {
    ...config,
    disks: disks.map((x) => ({ id: x.diskId, file: x.path.startsWith(`${job.target}/`) ? x.path.slice(job.target.length + 1) : x.path, sizeBytes: x.sizeBytes, sha256: x.sha256 })),
    restoredFrom: { vmId: job.vmId, backupId: job.backupId, restoreId: job.restoreId },
  };
  await writeFile(path, JSON.stringify(restored, null, 2), { flush: true });
  if (!job.define) return { path };
  return { path, domain: await defineRestoredDomain({ config, backupId: job.backupId, target: job.target, disks, define: job.define }) };
}
