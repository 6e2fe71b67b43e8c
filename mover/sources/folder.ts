/**
 * The folder driver: a VM is a directory holding `vm.json` and raw disk images.
 *
 *   vm.json: { "name": "web-1", "disks": [{ "id": "disk0", "file": "disk0.raw" }, ...], ... }
 *
 * A snapshot clones each disk file into `.lifeboat-snapshots/<backupId>/` (copy-on-write
 * where the filesystem supports it, a sparse copy otherwise), so the VM may keep writing
 * while the movers read a frozen image. Readers skip the image's holes: `qemu-img map`
 * says where they are (allocation.ts); without qemu-img every byte is read.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { isAbsolute, join } from 'node:path';
import { SourceUnavailable } from '../../core/errors.ts';
import type { DiskRef, SnapshotResult } from '../../core/jobs.ts';
import { rawImageExtents } from './allocation.ts';
import type { DiskReader, SnapshotRequest, SourceDriver } from './source.ts';

interface VmConfig {
  name?: string;
  disks: { id: string; file: string }[];
  [other: string]: unknown;
}

const SNAPSHOTS = '.lifeboat-snapshots';
const run = promisify(execFile);

/**
 * Freezes a disk file: a reflink (copy-on-write, instant) where the filesystem has them,
 * otherwise a copy that keeps holes as holes (Node's copyFile would fill a 16 GiB sparse
 * disk with 16 GiB of zeros). GNU cp does both.
 */
async function freeze(from: string, to: string): Promise<void> {
  try {
    await run('cp', ['--reflink=auto', '--sparse=always', '--', from, to]);
  } catch (err) {
    throw new SourceUnavailable(`cannot snapshot ${from}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`, err);
  }
}

async function readConfig(source: string): Promise<VmConfig> {
  const path = join(source, 'vm.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new SourceUnavailable(`VM config ${path} cannot be read (${(err as NodeJS.ErrnoException).code}); is the VM folder right?`, err);
  }
  let config: VmConfig;
  try {
    config = JSON.parse(text) as VmConfig;
  } catch (err) {
    throw new SourceUnavailable(`VM config ${path} is not valid JSON: ${(err as Error).message}`, err);
  }
  if (!Array.isArray(config.disks) || config.disks.length === 0) throw new SourceUnavailable(`VM config ${path} lists no disks (expected "disks": [{"id", "file"}])`);
  for (const d of config.disks) {
    if (typeof d?.id !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(d.id) || typeof d.file !== 'string') {
      throw new SourceUnavailable(`VM config ${path} has a bad disk entry ${JSON.stringify(d)}: each needs an "id" (letters, digits, - or _) and a "file"`);
    }
  }
  return config;
}

export interface FolderDriverOptions {
  /** The qemu-img to map a disk's holes with (default: `qemu-img` on the PATH; false: never map, read every byte). */
  qemuImg?: string | false;
}

export class FolderDriver implements SourceDriver {
  private readonly options: FolderDriverOptions;
  constructor(options: FolderDriverOptions = {}) {
    this.options = options;
  }

  async snapshot({ source, backupId }: SnapshotRequest): Promise<SnapshotResult> {
    const config = await readConfig(source);
    const dir = join(source, SNAPSHOTS, backupId);
    await mkdir(dir, { recursive: true });
    const disks: DiskRef[] = [];
    try {
      for (const d of config.disks) {
        const from = join(source, d.file);
        const st = await stat(from).catch((err: NodeJS.ErrnoException) => {
          throw new SourceUnavailable(`disk '${d.id}' of VM '${config.name ?? source}': file ${from} cannot be read (${err.code})`, err);
        });
        const to = join(dir, `${d.id}.raw`);
        await freeze(from, to);
        disks.push({ diskId: d.id, path: to, sizeBytes: st.size });
      }
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return { handle: dir, disks, config };
  }

  async openDisk(disk: DiskRef): Promise<DiskReader> {
    const fh = await open(disk.path, 'r').catch((err: NodeJS.ErrnoException) => {
      throw new SourceUnavailable(`snapshot of disk '${disk.diskId}' (${disk.path}) cannot be opened (${err.code})`, err);
    });
    return {
      sizeBytes: disk.sizeBytes,
      read: async (buf, offset, length) => (await fh.read(buf, 0, length, offset)).bytesRead,
      allocated: async () => (this.options.qemuImg === false ? undefined : rawImageExtents(disk.path, disk.sizeBytes, this.options.qemuImg)),
      close: () => fh.close(),
    };
  }

  async release({ source }: { source: string }, snapshot: SnapshotResult): Promise<void> {
    const root = join(source, SNAPSHOTS);
    if (!snapshot.handle.startsWith(root)) throw new SourceUnavailable(`snapshot handle ${snapshot.handle} is not under ${root}; refusing to delete it`);
    await rm(snapshot.handle, { recursive: true, force: true });
  }

  async releaseBackup({ source }: { source: string }, backupId: string): Promise<void> {
    // The control plane rebuilt this job from the catalog: never delete relative to the mover's own folder.
    if (!isAbsolute(source) || backupId.includes('/') || backupId.startsWith('.')) {
      throw new SourceUnavailable(`cannot release the snapshot of backup '${backupId}' in '${source}': not an absolute VM folder and a backup id; release ${SNAPSHOTS}/${backupId} by hand`);
    }
    await rm(join(source, SNAPSHOTS, backupId), { recursive: true, force: true });
  }
}
