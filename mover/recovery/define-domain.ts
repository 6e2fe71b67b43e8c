/**
 * A whole-VM restore of a libvirt backup, finished on the target host: the restored disk
 * files (as raw or qcow2), or the storage pool volumes they were restored into, become a
 * new domain defined from the backed-up definition (its own name, new UUID and MAC
 * addresses), started if asked. A restore test boots it with no network, waits for a sign
 * of life (a serial console line, the guest agent answering `guest-ping`), then removes
 * the domain and its files or volumes: the backup is proven to boot, and nothing is left
 * behind.
 */
import { execFile } from 'node:child_process';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import { DEFAULT_RESTORE_TEST_TIMEOUT_SECONDS } from '../../contracts/restore-test.ts';
import type { BootCheck, BootCheckResult, DefineDomainRequest, DefinedDomain, RestoredDisk } from '../../contracts/recovery-jobs.ts';
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
  /** Called while a restore test waits for the guest (the task's liveness). */
  onWait?: () => void;
  /** Called once the domain is defined: from then on its disks are the domain's, not the restore's to remove. */
  onDefined?: () => Promise<void>;
}

/** The restored domain's name: the one asked for, or `<original name>-restore-<backup time>`; refuses a backup that holds no domain definition. */
export function restoredDomainName(config: Record<string, unknown>, backupId: string, define: DefineDomainRequest): string {
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string') {
    throw new RecoveryRequestInvalid(
      `backup ${backupId} was not taken by the libvirt driver (it holds no domain definition): restore its disks as files, without "define"`,
    );
  }
  return define.name ?? `${String(config.name)}-restore-${backupId.slice(0, 15)}`;
}

export async function defineRestoredDomain(i: DefineDomainInput): Promise<DefinedDomain> {
  const name = restoredDomainName(i.config, i.backupId, i.define);
  const check = i.define.bootCheck;
  if (check && check.consoleLine === undefined && !check.agent)
    throw new RecoveryRequestInvalid('"bootCheck" needs a sign of life: "consoleLine" (a regular expression) and/or "agent": true');
  const virsh = new Virsh(i.define.uri);
  if (await domainExists(virsh, name))
    throw new RecoveryRequestInvalid(`a domain named '${name}' already exists on ${i.define.uri}: choose another name ("define": {"name": ...}) or remove it`);
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
  await writeFile(
    xmlPath,
    restoredDomainXml(String(i.config.domainXml), {
      name,
      disks,
      consoleLog,
      withoutNetwork: !!check,
      ...(i.define.description !== undefined ? { description: i.define.description } : {}),
    }),
  );
  if (!check) {
    await virsh.run(['define', '--', xmlPath], { ...(i.signal ? { signal: i.signal } : {}) });
    await i.onDefined?.();
    const uuid = (await virsh.run(['domuuid', '--', name])).trim();
    if (i.define.start) await virsh.run(['start', '--', name]);
    return { name, uuid, started: !!i.define.start, consoleLog, disks: paths };
  }
  // A restore test leaves nothing behind, however it ends: the domain and its disks go.
  try {
    await virsh.run(['define', '--', xmlPath], { ...(i.signal ? { signal: i.signal } : {}) });
    await i.onDefined?.();
    const uuid = (await virsh.run(['domuuid', '--', name])).trim();
    await virsh.run(['start', '--', name]);
    const result = await waitForSignOfLife(virsh, name, consoleLog, check, i.signal, i.onWait);
    return { name, uuid, started: true, consoleLog, disks: [], bootCheck: result };
  } finally {
    // The test domain goes with its disks: files, or the pool's volumes.
    await removeDomain(virsh, name);
    for (const d of Object.values(disks)) {
      if ('path' in d) await rm(d.path, { force: true });
      else await new StoragePool(virsh, d.pool).deleteVolume(d.volume);
    }
  }
}

/** Destroys and undefines a domain (with its NVRAM, if it has one); a domain already gone is fine. */
export async function removeDomain(virsh: Virsh, name: string): Promise<void> {
  await virsh.run(['destroy', '--', name]).catch(() => {});
  await virsh.run(['undefine', '--nvram', '--', name]).catch(() => virsh.run(['undefine', '--', name]).catch(() => {}));
}

/**
 * Waits, from the domain's start, for each sign of life asked for: first the console line,
 * then the guest agent's answer (it starts after the kernel). A domain that stops
 * meanwhile (power off, crash) ends the wait at once.
 */
export async function waitForSignOfLife(
  virsh: Virsh,
  name: string,
  consoleLog: string,
  check: BootCheck,
  signal?: AbortSignal,
  onWait?: () => void,
): Promise<BootCheckResult> {
  const started = performance.now();
  const timeoutSeconds = check.timeoutSeconds ?? DEFAULT_RESTORE_TEST_TIMEOUT_SECONDS;
  const deadline = started + timeoutSeconds * 1000;
  const seconds = () => (performance.now() - started) / 1000;
  const running = async () => (await virsh.run(['domstate', '--', name]).catch(() => '')).trim() === 'running';
  let line = '';
  if (check.consoleLine !== undefined) {
    const pattern = new RegExp(check.consoleLine);
    for (;;) {
      line = await consoleLineMatching(consoleLog, pattern);
      if (line) break;
      if (!(await running()))
        return {
          passed: false,
          seconds: seconds(),
          line: '',
          reason: `the VM stopped (${await stateOf(virsh, name)}) before its serial console printed a line matching /${check.consoleLine}/`,
        };
      if (performance.now() >= deadline)
        return {
          passed: false,
          seconds: seconds(),
          line: '',
          reason: `no serial console line matched /${check.consoleLine}/ within ${timeoutSeconds} s${await lastLineOf(consoleLog)}`,
        };
      await pause(POLL_MS, signal, onWait);
    }
  }
  if (!check.agent) return { passed: true, seconds: seconds(), line };
  let lastError = '';
  for (;;) {
    const wait = Math.max(1, Math.min(5, Math.floor((deadline - performance.now()) / 1000)));
    try {
      await virsh.run(['qemu-agent-command', '--timeout', String(wait), '--', name, '{"execute":"guest-ping"}'], { ...(signal ? { signal } : {}) });
      return { passed: true, seconds: seconds(), line, agent: true };
    } catch (err) {
      signal?.throwIfAborted();
      lastError = (err as Error).message;
      if (/agent is not configured|no guest agent/i.test(lastError))
        return {
          passed: false,
          seconds: seconds(),
          line,
          agent: false,
          reason: `the restored VM has no guest agent channel (${lastError}): check a serial console line instead`,
        };
    }
    if (!(await running()))
      return {
        passed: false,
        seconds: seconds(),
        line,
        agent: false,
        reason: `the VM stopped (${await stateOf(virsh, name)}) before its guest agent answered guest-ping`,
      };
    if (performance.now() >= deadline)
      return {
        passed: false,
        seconds: seconds(),
        line,
        agent: false,
        reason: `the guest agent did not answer guest-ping within ${timeoutSeconds} s (last: ${lastError})`,
      };
    await pause(POLL_MS, signal, onWait);
  }
}

const POLL_MS = 500;

async function pause(ms: number, signal?: AbortSignal, onWait?: () => void): Promise<void> {
  signal?.throwIfAborted();
  onWait?.();
  await new Promise((r) => setTimeout(r, ms));
}

async function stateOf(virsh: Virsh, name: string): Promise<string> {
  return (await virsh.run(['domstate', '--reason', '--', name]).catch((err: Error) => err.message)).trim();
}

export async function domainExists(virsh: Virsh, name: string): Promise<boolean> {
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
    throw new RecoveryRequestInvalid(
      `restored disk ${raw} could not be converted to qcow2: ${(err as { stderr?: string }).stderr?.trim() ?? String(err)}; restore as raw ("format": "raw") or check qemu-img`,
    );
  }
  await rename(tmp, out);
  await rm(raw, { force: true });
  return out;
}

/** The first line of the console log matching `pattern`; '' when none (yet). */
async function consoleLineMatching(file: string, pattern: RegExp): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return (
    text
      .split('\n')
      .find((l) => pattern.test(l))
      ?.trim() ?? ''
  );
}

/** The console's last line, for a reason (what the guest did print). */
async function lastLineOf(file: string): Promise<string> {
  const last = (await readFile(file, 'utf8').catch(() => ''))
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .at(-1);
  return last ? `; its last console line: "${last.slice(0, 160)}"` : '; the console stayed empty';
}
