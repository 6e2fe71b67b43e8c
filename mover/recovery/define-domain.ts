/**
 * A whole-VM restore of a libvirt backup, finished on the target host: the restored disk
 * files (as raw or qcow2), or the storage pool volumes they were restored into, become a
 * new domain defined from the backed-up definition (its own name, new UUID and MAC
 * addresses), started if asked. A restore test boots it with no network, waits for a sign
 * of life on its serial console, then removes the domain and its files or volumes: the
 * backup is proven to boot, and nothing is left behind.
 */
import { execFile } from 'node:child_process';
import { open as openFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RecoveryRequestInvalid } from '../../core/recovery-errors.ts';
import type { DefineDomainRequest, DefinedDomain, RestoredDisk } from '../../core/recovery-jobs.ts';
import { restoredDomainXml, type RestoredDiskSource } from '../sources/libvirt/domain-xml.ts';
import { isNoDomain, Virsh } from '../sources/libvirt/virsh.ts';
import { StoragePool } from './pool-volumes.ts';

const run = promisify(execFile);

export interface DefineDomainInput {
  /** The backed-up VM configuration (`vm-config` object of the backup). */
  config: Record<string, unknown>;
  backupId: string;
  /** The restore's folder: the console log and converted images go there. */
  target: string;
  disks: RestoredDisk[];
  define: DefineDomainRequest;
  signal?: AbortSignal;
  /** Default: `qemu-img` on the PATH. */
  qemuImg?: string;
  /** Called once the domain is defined: from then on its disks are the domain's, not the restore's to remove. */
  onDefined?: () => Promise<void>;
}

/** The restored domain's name: the one asked for, or `<original name>-restore-<backup time>`; refuses a backup that holds no domain definition. */
export function restoredDomainName(config: Record<string, unknown>, backupId: string, define: DefineDomainRequest): string {
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string') {
    throw new RecoveryRequestInvalid(`backup ${backupId} was not taken by the libvirt driver (it holds no domain definition): restore its disks as files, without "define"`);
  }
  return define.name ?? `${String(config.name)}-restore-${backupId.slice(0, 15)}`;
}

export async function defineRestoredDomain(i: DefineDomainInput): Promise<DefinedDomain> {
  const name = restoredDomainName(i.config, i.backupId, i.define);
  const virsh = new Virsh(i.define.uri);
  if (await domainExists(virsh, name)) throw new RecoveryRequestInvalid(`a domain named '${name}' already exists on ${i.define.uri}: choose another name ("define": {"name": ...}) or remove it`);
  const format = i.define.format ?? 'qcow2';
  // Disks restored into a pool are its volumes already; files become qcow2 here unless raw is asked.
  const disks: Record<string, RestoredDiskSource> = {};
  const paths: string[] = [];
  for (const d of i.disks) {
    if (d.volume) {
      disks[d.diskId] = { pool: d.volume.pool, volume: d.volume.name, format: d.volume.format };
      paths.push(d.path);
    } else {
      const path = format === 'qcow2' ? await toQcow2(d.path, i.qemuImg) : d.path;
      disks[d.diskId] = { path, format };
      paths.push(path);
    }
  }
  const consoleLog = join(i.target, 'console.log');
  const xmlPath = join(i.target, 'domain.xml');
  await writeFile(xmlPath, restoredDomainXml(String(i.config.domainXml), { name, disks, consoleLog, withoutNetwork: !!i.define.bootCheck }));
  await virsh.run(['define', '--', xmlPath], { ...(i.signal ? { signal: i.signal } : {}) });
  await i.onDefined?.();
  const uuid = (await virsh.run(['domuuid', '--', name])).trim();
  if (!i.define.bootCheck) {
    if (i.define.start) await virsh.run(['start', '--', name]);
    return { name, uuid, started: !!i.define.start, consoleLog, disks: paths };
  }
  try {
    await virsh.run(['start', '--', name]);
    const started = performance.now();
    const line = await waitForLine(consoleLog, new RegExp(i.define.bootCheck.consoleLine), (i.define.bootCheck.timeoutSeconds ?? 300) * 1000, i.signal);
    const seconds = (performance.now() - started) / 1000;
    return { name, uuid, started: true, consoleLog, disks: [], bootCheck: line ? { passed: true, seconds, line } : { passed: false, seconds, line: '' } };
  } finally {
    // The test domain goes with its disks: files, or the pool's volumes.
    await virsh.run(['destroy', '--', name]).catch(() => {});
    await virsh.run(['undefine', '--nvram', '--', name]).catch(() => virsh.run(['undefine', '--', name]).catch(() => {}));
    for (const d of Object.values(disks)) {
      if ('path' in d) await rm(d.path, { force: true });
      else await new StoragePool(virsh, d.pool).deleteVolume(d.volume);
    }
  }
}

async function domainExists(virsh: Virsh, name: string): Promise<boolean> {
  try {
    await virsh.run(['domuuid', '--', name]);
    return true;
  } catch (err) {
    if (isNoDomain(err)) return false;
    throw err;
  }
}

/** Converts a restored raw image to qcow2 beside it (thin: zeros stay unallocated) and removes the raw one. */
async function toQcow2(raw: string, qemuImg = 'qemu-img'): Promise<string> {
  const out = raw.replace(/\.raw$/, '') + '.qcow2';
  const tmp = `${out}.converting`;
  try {
    await run(qemuImg, ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '--', raw, tmp]);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new RecoveryRequestInvalid(`restored disk ${raw} could not be converted to qcow2: ${(err as { stderr?: string }).stderr?.trim() ?? String(err)}; restore as raw ("format": "raw") or check qemu-img`);
  }
  await rename(tmp, out);
  await rm(raw, { force: true });
  return out;
}

/** The first line of `file` matching `pattern`, waiting for it up to `timeoutMs`; '' when it did not come. */
async function waitForLine(file: string, pattern: RegExp, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    signal?.throwIfAborted();
    const fh = await openFile(file, 'r').catch(() => undefined);
    if (fh) {
      const text = (await fh.readFile('utf8').finally(() => fh.close()));
      const hit = text.split('\n').find((l) => pattern.test(l));
      if (hit) return hit.trim();
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  return '';
}
