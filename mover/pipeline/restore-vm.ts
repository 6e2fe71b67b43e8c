/** Restore a backup of a VM outside the workflows (the demo, tests): every disk from its manifest, and the VM config, into a folder. The Restore workflow's tasks are mover/recovery/restore-tasks.ts. */
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { Repository } from '../../repository/open.ts';
import { restoreDisk } from './restore-disk.ts';

export interface RestoreVmOptions {
  repository: Repository;
  backupId: string;
  diskIds: string[];
  targetDir: string;
  /** Restore into a folder that is not empty, overwriting what has the same names (default: refuse). */
  force?: boolean;
  onProgress?: (diskId: string, bytesDone: number, sizeBytes: number) => void;
}

export async function restoreVm(o: RestoreVmOptions): Promise<{ disks: { diskId: string; path: string; sizeBytes: number }[] }> {
  await mkdir(o.targetDir, { recursive: true });
  const there = await readdir(o.targetDir);
  if (there.length && !o.force)
    throw new RecoveryRequestInvalid(
      `restore target folder ${o.targetDir} is not empty (it holds ${there.slice(0, 5).join(', ')}); choose an empty folder, or pass force to overwrite`,
    );
  const config = await o.repository.readVmConfig(o.backupId);
  const disks = [];
  for (const diskId of o.diskIds) {
    const path = join(o.targetDir, `${diskId}.raw`);
    // Under a temporary name until complete: a failed restore leaves no full-size file that looks restored.
    const partial = `${path}.partial`;
    const r = await restoreDisk({
      repository: o.repository,
      backupId: o.backupId,
      diskId,
      target: partial,
      onProgress: (d, s) => o.onProgress?.(diskId, d, s),
    }).catch(async (err: unknown) => {
      await rm(partial, { force: true });
      throw err;
    });
    await rename(partial, path);
    disks.push({ diskId, path, sizeBytes: r.sizeBytes });
  }
  const restoredConfig = { ...config, disks: disks.map((d) => ({ id: d.diskId, file: `${d.diskId}.raw` })), restoredFrom: o.backupId };
  await writeFile(join(o.targetDir, 'vm.json'), JSON.stringify(restoredConfig, null, 2), { flush: true });
  return { disks };
}
