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
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { SourceUnavailable } from '../../contracts/errors.ts';
import type { DiskRef, SnapshotResult } from '../../contracts/jobs.ts';
import { rawImageExtents } from './allocation.ts';
import type { DiskReader, SnapshotOptions, SnapshotRequest, SourceDriver } from './source.ts';

interface VmConfig {
  name?: string;
  disks: { id: string; file: string }[];
  [other: string]: unknown;
}

const SNAPSHOTS = '.lifeboat-snapshots';
/** How often a running copy's size is looked at, to report progress. */
const COPY_PROGRESS_MS = 2000;

/**
 * Freezes a disk file: a reflink (copy-on-write, instant) where the filesystem has them,
 * otherwise a copy that keeps holes as holes (Node's copyFile would fill a 16 GiB sparse
 * disk with 16 GiB of zeros). GNU cp does both. The copy is killed when `signal` aborts
 * (a task timed out or stopped must not leave a cp running); while it runs, `progress` is
 * called whenever the copy has grown.
 */
async function freeze(from: string, to: string, o: SnapshotOptions): Promise<void> {
  let size = 0;
  const watch =
    o.progress &&
    setInterval(() => {
      stat(to).then(
        (st) => {
          if (st.size > size) o.progress!();
          size = st.size;
        },
        () => {},
      );
    }, COPY_PROGRESS_MS);
  try {
    await copy(from, to, o.signal);
  } finally {
    clearInterval(watch);
  }
}

/**
 * `cp` of one disk file, settled only once cp has exited: an abort kills it and rejects with
 * the signal's reason after it is gone (execFile's abort rejects at the kill, while cp may
 * still be writing into a folder the caller is about to remove).
 */
function copy(from: string, to: string, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('cp', ['--reflink=auto', '--sparse=always', '--', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    const kill = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', kill, { once: true });
    if (signal?.aborted) kill();
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    child.once('close', (code, killedBy) => {
      signal?.removeEventListener('abort', kill);
      if (signal?.aborted) return reject(signal.reason);
      if (code === 0) return resolve();
      const why = stderr.trim() || spawnError?.message || `cp ended with ${killedBy ? `signal ${killedBy}` : `code ${code}`}`;
      reject(new SourceUnavailable(`cannot snapshot ${from}: ${why}`, spawnError));
    });
  });
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
  if (!Array.isArray(config.disks) || config.disks.length === 0)
    throw new SourceUnavailable(`VM config ${path} lists no disks (expected "disks": [{"id", "file"}])`);
  for (const d of config.disks) {
    if (typeof d?.id !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(d.id) || typeof d.file !== 'string') {
      throw new SourceUnavailable(`VM config ${path} has a bad disk entry ${JSON.stringify(d)}: each needs an "id" (letters, digits, - or _) and a "file"`);
    }
  }
  // Two disks with one id would both be backed up under that id: one disk's data lost.
  const byId = Map.groupBy(config.disks, (d) => d.id);
  for (const [id, disks] of byId) {
    if (disks.length > 1)
      throw new SourceUnavailable(
        `VM config ${path} lists ${disks.length} disks with the id '${id}' (${disks.map((d) => d.file).join(', ')}); give each disk its own id`,
      );
  }
  return config;
}

/** What a file that is not a disk image is, in words, for the error naming it. */
function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  return 'not a regular file';
}

/**
 * Checks every disk before any is copied: a regular file or a block device, not empty. A
 * FIFO or a socket would block the copy until the task timed out; a directory or an empty
 * file would fail later with a tool's internal message.
 */
async function checkDisks(source: string, config: VmConfig): Promise<Map<string, Stats>> {
  const vm = `VM '${config.name ?? source}'`;
  const stats = new Map<string, Stats>();
  for (const d of config.disks) {
    const path = join(source, d.file);
    const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
      throw new SourceUnavailable(
        `disk '${d.id}' of ${vm}: file ${path} cannot be read (${err.code}); fix "file" in ${join(source, 'vm.json')} or restore the image`,
        err,
      );
    });
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new SourceUnavailable(
        `disk '${d.id}' of ${vm}: ${path} is ${kindOf(st)}, not a disk image; point "file" in ${join(source, 'vm.json')} at a raw image file or a block device`,
      );
    }
    if (st.isFile() && st.size === 0) {
      throw new SourceUnavailable(
        `disk '${d.id}' of ${vm}: ${path} is empty (0 bytes); a disk image holds at least one byte: check the image, or remove the disk from ${join(source, 'vm.json')}`,
      );
    }
    stats.set(d.id, st);
  }
  return stats;
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

  async snapshot({ source, backupId }: SnapshotRequest, options: SnapshotOptions = {}): Promise<SnapshotResult> {
    const config = await readConfig(source);
    const stats = await checkDisks(source, config);
    const dir = join(source, SNAPSHOTS, backupId);
    // A retried snapshot starts afresh: an earlier attempt may have left partial copies.
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const disks: DiskRef[] = [];
    try {
      for (const d of config.disks) {
        const to = join(dir, `${d.id}.raw`);
        await freeze(join(source, d.file), to, options);
        disks.push({ diskId: d.id, path: to, sizeBytes: stats.get(d.id)!.size });
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
      throw new SourceUnavailable(
        `cannot release the snapshot of backup '${backupId}' in '${source}': not an absolute VM folder and a backup id; release ${SNAPSHOTS}/${backupId} by hand`,
      );
    }
    await rm(join(source, SNAPSHOTS, backupId), { recursive: true, force: true });
  }
}
