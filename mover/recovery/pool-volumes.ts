/**
 * Restoring a VM's disks into a libvirt storage pool (`define.pool`): one volume per disk,
 * named after the new domain and the disk (`<domain>-vda.qcow2`), written, checked, and
 * owned by the restore until the domain is defined.
 *
 * - raw: the restore writes straight into the volume (a file or a block device), in place;
 *   a new volume of a file pool is sparse and reads as zeros, so holes stay holes.
 * - qcow2: the restore writes a sparse raw file in the mover's work folder, re-hashes it,
 *   then `qemu-img convert -n` copies it into the volume and `qemu-img compare` re-reads
 *   the volume against it. Each file system holds the disk's data once: the work folder
 *   the raw copy, the pool the qcow2. (Restoring raw into the pool and converting it there
 *   would need room for both copies in the pool; writing qcow2 directly would need the
 *   restore writer to speak qcow2 or NBD.)
 *
 * Which volumes a restore created is recorded before each is created, in
 * `<workDir>/pool-restores/<restoreId>/`: a retried disk task may replace its own volume,
 * and a failed restore deletes exactly the volumes it made (`discardPoolVolumes`), never one
 * that was there before.
 */
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, rm, rmdir, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { RecoveryRequestInvalid, RestoreMismatch } from '../../contracts/recovery-errors.ts';
import type { PoolVolume } from '../../contracts/recovery-jobs.ts';
import { xmlEscape } from '../sources/libvirt/backup-xml.ts';
import { Virsh, VirshError } from '../sources/libvirt/virsh.ts';

/** Pool types whose volumes are files created sparse: a new volume reads as zeros and takes room only for what is written. */
const FILE_POOLS = new Set(['dir', 'fs', 'netfs']);

/** The volume of disk `diskId` of restored domain `domain`: `<domain>-<disk>.<format>`. */
export function volumeName(domain: string, diskId: string, format: 'raw' | 'qcow2'): string {
  return `${domain}-${diskId.replace(/[^A-Za-z0-9._-]/g, '_')}.${format}`;
}

/**
 * Room a disk's volume takes in a pool: its data (the manifest's non-zero chunks) in a
 * file pool, where volumes are thin (qcow2 adds its tables: 8 bytes per 64 KiB cluster,
 * plus headers); its whole capacity elsewhere (a logical volume is allocated whole).
 */
export function bytesNeeded(o: { poolType: string; format: 'raw' | 'qcow2'; sizeBytes: number; dataBytes: number }): number {
  if (!FILE_POOLS.has(o.poolType)) return o.sizeBytes;
  return o.format === 'qcow2' ? o.dataBytes + Math.ceil(o.sizeBytes / 65536) * 8 + 2 * 1024 * 1024 : o.dataBytes;
}

export interface PoolState {
  type: string;
  active: boolean;
  availableBytes: number;
}

const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@' });
const noPool = (err: unknown) => err instanceof VirshError && /storage pool not found|no storage pool with matching/i.test(err.stderr);
const noVolume = (err: unknown) => err instanceof VirshError && /storage volume not found|no storage vol with matching/i.test(err.stderr);

/** One storage pool of a libvirt host, through virsh; its failures name the pool, the volume and what to do. */
export class StoragePool {
  readonly name: string;
  private readonly virsh: Virsh;
  private readonly where: string;

  constructor(virsh: Virsh, name: string) {
    this.virsh = virsh;
    this.name = name;
    this.where = `storage pool '${name}' on ${virsh.uri}`;
  }

  /** Type, state and free room; a missing pool is refused naming how to make one. */
  async state(signal?: AbortSignal): Promise<PoolState> {
    let info: string;
    let definition: string;
    try {
      info = await this.virsh.run(['pool-info', '--bytes', '--pool', this.name], signal ? { signal } : {});
      definition = await this.virsh.run(['pool-dumpxml', '--pool', this.name], signal ? { signal } : {});
    } catch (err) {
      if (noPool(err))
        throw new RecoveryRequestInvalid(
          `${this.where} does not exist: name an existing pool (virsh pool-list --all), or define and start one (virsh pool-define-as ${this.name} dir --target DIR; virsh pool-start ${this.name})`,
        );
      throw err;
    }
    const field = (k: string) => new RegExp(`^${k}:\\s+(.+)$`, 'm').exec(info)?.[1]?.trim();
    const type = String((xml.parse(definition) as { pool?: Record<string, string> }).pool?.['@type'] ?? '');
    return { type, active: field('State') === 'running', availableBytes: Number(field('Available') ?? 0) };
  }

  /** Refuses an inactive pool, or one without `bytes` free, naming the disk. */
  async checkRoom(bytes: number, what: string, s: PoolState): Promise<void> {
    if (!s.active) throw new RecoveryRequestInvalid(`${this.where} is not active: start it (virsh pool-start ${this.name}) and restore again`);
    if (s.availableBytes < bytes) {
      throw new RecoveryRequestInvalid(
        `${this.where} has ${mib(s.availableBytes)} available; ${what} needs ${mib(bytes)}: free space in the pool (virsh pool-info ${this.name}) or restore into another pool`,
      );
    }
  }

  /** The volume's path, or undefined when the pool has no volume of that name (after a refresh, so files put there by hand count). */
  async volumePath(volume: string, signal?: AbortSignal): Promise<string | undefined> {
    // Refreshing fails while the pool builds a volume (another disk of this restore): the listing is then current anyway.
    await this.virsh.run(['pool-refresh', '--pool', this.name], signal ? { signal } : {}).catch(() => {});
    try {
      return (await this.virsh.run(['vol-path', '--pool', this.name, '--vol', volume], signal ? { signal } : {})).trim();
    } catch (err) {
      if (noVolume(err)) return undefined;
      throw err;
    }
  }

  /** Creates a thin volume of `capacity` bytes from its definition (written to `xmlPath`) and returns its path. */
  async createVolume(volume: string, capacity: number, format: 'raw' | 'qcow2', poolType: string, xmlPath: string, signal?: AbortSignal): Promise<string> {
    await writeFile(xmlPath, volumeXml({ name: volume, capacity, format, filePool: FILE_POOLS.has(poolType) }));
    try {
      await this.virsh.run(['vol-create', '--pool', this.name, '--file', xmlPath], signal ? { signal } : {});
    } catch (err) {
      if (!(err instanceof VirshError)) throw err; // aborted
      throw new RecoveryRequestInvalid(
        `could not create volume '${volume}' in ${this.where}: ${err.stderr || err.message}; check the pool (virsh pool-info ${this.name}) and whether it takes ${format} volumes`,
      );
    } finally {
      await rm(xmlPath, { force: true });
    }
    try {
      return (await this.virsh.run(['vol-path', '--pool', this.name, '--vol', volume], signal ? { signal } : {})).trim();
    } catch (err) {
      await this.deleteVolume(volume).catch(() => {});
      throw err;
    }
  }

  /** Deletes a volume; one already gone is fine. */
  async deleteVolume(volume: string): Promise<void> {
    try {
      await this.virsh.run(['vol-delete', '--pool', this.name, '--vol', volume]);
    } catch (err) {
      if (!noVolume(err)) throw err;
    }
  }
}

/**
 * A new volume's definition: thin (allocation 0). A qcow2 volume is `compat` 1.1, which
 * libvirt does not make by default (it makes 0.10, "qcow2 v2"): only 1.1 stores the
 * persistent dirty bitmaps that a checkpoint, and so the next incremental backup of the
 * restored VM, needs. A raw volume of a block pool takes no format (its device is raw).
 */
export function volumeXml(v: { name: string; capacity: number; format: 'raw' | 'qcow2'; filePool: boolean }): string {
  const format = v.format === 'qcow2' ? "<format type='qcow2'/><compat>1.1</compat>" : v.filePool ? "<format type='raw'/>" : '';
  return `<volume><name>${xmlEscape(v.name)}</name><capacity unit='bytes'>${v.capacity}</capacity><allocation unit='bytes'>0</allocation><target>${format}</target></volume>\n`;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

// --- which volumes a restore made ------------------------------------------------------

const ownedDir = (workDir: string, restoreId: string) => join(workDir, 'pool-restores', restoreId.replace(/[^A-Za-z0-9._-]/g, '_'));

interface OwnedVolume extends PoolVolume {
  uri: string;
}

/** Records, before creating it, that this restore makes `v`. */
async function own(workDir: string, restoreId: string, v: OwnedVolume): Promise<void> {
  await mkdir(ownedDir(workDir, restoreId), { recursive: true });
  await writeFile(join(ownedDir(workDir, restoreId), v.name), JSON.stringify(v), { flush: true });
}

async function owns(workDir: string, restoreId: string, volume: string): Promise<boolean> {
  return !!(await stat(join(ownedDir(workDir, restoreId), volume)).catch(() => undefined));
}

async function disown(workDir: string, restoreId: string, volume: string): Promise<void> {
  await rm(join(ownedDir(workDir, restoreId), volume), { force: true });
}

/** The restore's volumes are the domain's now (it was defined): forget them. */
export async function releasePoolVolumes(workDir: string, restoreId: string): Promise<void> {
  await rm(ownedDir(workDir, restoreId), { recursive: true, force: true });
}

/** Deletes every volume this restore created (it failed); returns their names. */
export async function discardPoolVolumes(workDir: string, restoreId: string): Promise<string[]> {
  const dir = ownedDir(workDir, restoreId);
  const deleted: string[] = [];
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    const v = JSON.parse(await readFile(join(dir, f), 'utf8')) as OwnedVolume;
    await new StoragePool(new Virsh(v.uri), v.pool).deleteVolume(v.name);
    await rm(join(dir, f), { force: true });
    deleted.push(v.name);
  }
  await rm(dir, { recursive: true, force: true });
  return deleted;
}

// --- one disk into a volume ------------------------------------------------------------

export interface PoolDiskTarget {
  uri: string;
  pool: string;
  volume: string;
  format: 'raw' | 'qcow2';
  diskId: string;
  sizeBytes: number;
  /** Bytes of the disk that hold data (non-zero chunks). */
  dataBytes: number;
  restoreId: string;
  force: boolean;
  /** The mover's work folder: the ownership records and a qcow2 restore's raw copy. */
  workDir: string;
  signal?: AbortSignal;
  /** Default: `qemu-img` on the PATH. */
  qemuImg?: string;
}

/** How the disk's bytes get into the volume: written (and re-hashed) at `path` as a 'device' or a 'file'. */
export type WriteDisk = (
  path: string,
  kind: { targetKind: 'file' | 'device'; targetZeroed: boolean },
) => Promise<{ sha256: string; chunksVerified: number; bytesDownloaded: number }>;

/**
 * Creates the disk's volume (refusing one that exists, unless forced or made by this
 * restore's earlier attempt), writes the disk into it through `write`, and deletes it
 * again when anything fails. Returns the volume and its path.
 */
export async function restoreIntoVolume(
  t: PoolDiskTarget,
  write: WriteDisk,
  onConvert?: (bytesDone: number) => void,
): Promise<{ volume: PoolVolume; path: string; sha256: string; chunksVerified: number; bytesDownloaded: number }> {
  const pool = new StoragePool(new Virsh(t.uri), t.pool);
  const s = await pool.state(t.signal);
  const what = `disk ${t.diskId} (volume '${t.volume}', ${mib(t.dataBytes)} of data in ${mib(t.sizeBytes)})`;
  await pool.checkRoom(bytesNeeded({ poolType: s.type, format: t.format, sizeBytes: t.sizeBytes, dataBytes: t.dataBytes }), what, s);
  const existing = await pool.volumePath(t.volume, t.signal);
  if (existing !== undefined) {
    if (!t.force && !(await owns(t.workDir, t.restoreId, t.volume))) {
      throw new RecoveryRequestInvalid(
        `volume '${t.volume}' exists already in storage pool '${t.pool}' on ${t.uri} (${existing}); restoring disk ${t.diskId} would overwrite it: choose another name for the restored VM (--name, "define": {"name": ...}), delete the volume (virsh vol-delete --pool ${t.pool} ${t.volume}), or pass --force (workflow input "force": true) to replace it`,
      );
    }
    await pool.deleteVolume(t.volume);
  }
  // One folder per disk of the restore (its disks are restored at once): the raw copy and the volume's definition.
  const tmp = join(t.workDir, 'restore', t.restoreId.replace(/[^A-Za-z0-9._-]/g, '_'), t.diskId.replace(/[^A-Za-z0-9._-]/g, '_'), 'disk.raw');
  await own(t.workDir, t.restoreId, { uri: t.uri, pool: t.pool, name: t.volume, format: t.format });
  let created = false;
  try {
    await mkdir(dirname(tmp), { recursive: true });
    const path = await pool.createVolume(t.volume, t.sizeBytes, t.format, s.type, `${tmp}.volume.xml`, t.signal);
    created = true;
    if (!(await stat(path).catch(() => undefined))) {
      throw new RecoveryRequestInvalid(
        `volume '${t.volume}' of storage pool '${t.pool}' is at ${path} on the libvirt host, which this mover cannot see: a pool restore must run on a mover on the host of ${t.uri}`,
      );
    }
    const thin = FILE_POOLS.has(s.type);
    if (t.format === 'raw') {
      const r = await write(path, { targetKind: 'device', targetZeroed: thin });
      return { volume: { pool: t.pool, name: t.volume, format: t.format }, path, ...r };
    }
    await checkWorkRoom(dirname(tmp), t.dataBytes, t.diskId);
    const r = await write(tmp, { targetKind: 'file', targetZeroed: false });
    t.signal?.throwIfAborted();
    await qemuImg(
      t.qemuImg,
      ['convert', '-p', '-n', ...(thin ? ['--target-is-zero'] : []), '-f', 'raw', '-O', 'qcow2', '--', tmp, path],
      `converting disk ${t.diskId} into volume '${t.volume}' of storage pool '${t.pool}'`,
      t.signal,
      (pct) => onConvert?.(Math.round((pct / 100) * t.sizeBytes)),
    );
    // What the volume holds is re-read and compared with the raw copy, whose every chunk was checked.
    const same = await qemuImg(
      t.qemuImg,
      ['compare', '-q', '-f', 'raw', '-F', 'qcow2', '--', tmp, path],
      `comparing volume '${t.volume}' with the restored disk ${t.diskId}`,
      t.signal,
      undefined,
      [0, 1],
    );
    if (same !== 0)
      throw new RestoreMismatch(
        `volume '${t.volume}' of storage pool '${t.pool}' (${path}) does not read back as the restored disk ${t.diskId} after qemu-img convert`,
      );
    return { volume: { pool: t.pool, name: t.volume, format: t.format }, path, ...r };
  } catch (err) {
    // Only a volume this attempt made: creating fails when another took the name meanwhile.
    if (created) await pool.deleteVolume(t.volume).catch(() => {});
    await disown(t.workDir, t.restoreId, t.volume);
    throw err;
  } finally {
    await rm(dirname(tmp), { recursive: true, force: true });
    await rmdir(dirname(dirname(tmp))).catch(() => {}); // the restore's folder, once its last disk is done
  }
}

/** The work folder must hold a qcow2 restore's raw copy (its data: the copy is sparse). */
async function checkWorkRoom(dir: string, bytes: number, diskId: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const fs = await statfs(dir);
  const free = fs.bavail * fs.bsize;
  if (free < bytes) {
    throw new RecoveryRequestInvalid(
      `the mover's work folder ${dir} has ${mib(free)} free; disk ${diskId} is restored there as raw (${mib(bytes)} of data) before it is converted into the qcow2 volume: free space there, point LIFEBOAT_WORK_DIR at a larger file system, or restore as raw (--raw, "format": "raw")`,
    );
  }
}

/** Runs qemu-img; `-p` progress (percent) goes to `onPercent`. Resolves with the exit code when it is one of `ok`. */
function qemuImg(
  program = 'qemu-img',
  args: string[],
  what: string,
  signal?: AbortSignal,
  onPercent?: (pct: number) => void,
  ok: number[] = [0],
): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => {
      const all = [...b.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
      if (all.length) onPercent?.(Number(all[all.length - 1]![1]));
    });
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    child.on('error', (err) =>
      reject(
        err.name === 'AbortError' ? err : new RecoveryRequestInvalid(`${what}: ${program} could not run (${err.message}); install qemu-utils on the mover`),
      ),
    );
    child.on('close', (code) => {
      if (code !== null && ok.includes(code)) resolve(code);
      else
        reject(
          new RecoveryRequestInvalid(
            `${what} failed: ${stderr.trim() || `qemu-img exited ${code}`}; check the pool's storage, or restore as raw ("format": "raw")`,
          ),
        );
    });
  });
}
