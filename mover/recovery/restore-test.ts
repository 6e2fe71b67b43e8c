/**
 * The `restoreTest` task of deep verification: a libvirt backup restored into a throwaway
 * folder under the mover's work folder, defined as `lifeboat-restoretest-<vm>-<random>`
 * with no network, booted, watched for its sign of life and removed with the folder,
 * however the test ends. The mover only answers; the control plane records the outcome.
 *
 * Leftovers: a mover killed mid-test leaves its domain and folder. Each carries its owner
 * (host, pid and start time of the mover process, and a time after which it is stale: the
 * domain in its `<description>`, the folder in a file), and before every test the mover
 * removes the test domains and folders whose owner process is gone or whose time ran out.
 * Only names starting with RESTORE_TEST_PREFIX are ever looked at.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Repository } from '../../repository/open.ts';
import type { RestoredDisk, RestoreJob } from '../../contracts/recovery-jobs.ts';
import { defineBootCheck, RESTORE_TEST_PREFIX, type RestoreTestJob, type RestoreTestResult } from '../../contracts/restore-test.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { removeDomain } from './define-domain.ts';
import { restoreDiskTask, restoreVmConfigTask } from './restore-tasks.ts';

/** The folder (under the work folder) holding one folder per running restore test. */
export const restoreTestRoot = (workDir: string) => join(workDir, 'restore-tests');
const OWNER_FILE = '.lifeboat-restoretest-owner.json';
/** A folder's owner is written right after it is made: one without an owner this old was left by a mover that died in between. */
const UNOWNED_GRACE_MS = 10 * 60_000;
/** A folder's restore may take as long as the task's own timeout (the workflow's 12 h). */
const FOLDER_LEASE_MS = 12 * 3600_000;
/** A domain lives for the boot wait plus the conversion and definition around it. */
const DOMAIN_GRACE_MS = 10 * 60_000;

/** Who made a test domain or folder: a mover process on a host, and until when it may still be at work. */
export interface RestoreTestOwner {
  host: string;
  pid: number;
  /** The process's start time (clock ticks since boot, /proc/<pid>/stat): a reused pid is another process. */
  start: string;
  expires: string;
}

/** The start time of a process, or undefined when there is no such process. */
async function processStart(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // Fields after the command name (which may hold spaces and parentheses): state is field 3, starttime field 22.
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

export async function ownerOfThisProcess(leaseMs: number, now = Date.now()): Promise<RestoreTestOwner> {
  return { host: hostname(), pid: process.pid, start: (await processStart(process.pid)) ?? '', expires: new Date(now + leaseMs).toISOString() };
}

function parseOwner(text: string | undefined): RestoreTestOwner | undefined {
  try {
    const o = JSON.parse(text ?? '') as Partial<RestoreTestOwner>;
    return typeof o.host === 'string' && typeof o.pid === 'number' && typeof o.start === 'string' && typeof o.expires === 'string'
      ? (o as RestoreTestOwner)
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether what `owner` made is left behind: its time ran out, or its mover process on this
 * host is gone. A live owner on another host is trusted until its time runs out.
 */
export async function isLeftover(owner: RestoreTestOwner, now = Date.now()): Promise<boolean> {
  if (Date.parse(owner.expires) <= now) return true;
  if (owner.host !== hostname()) return false;
  const start = await processStart(owner.pid);
  return start === undefined || start !== owner.start;
}

/**
 * Removes the restore-test domains on `virsh`'s host and the test folders under `root`
 * that their movers left behind (see isLeftover); returns their names. A domain without a
 * readable owner is a leftover too: every test domain is defined with one.
 */
export async function sweepRestoreTests(virsh: Virsh, root: string, logger?: Logger, now = Date.now()): Promise<string[]> {
  const swept: string[] = [];
  const domains = (await virsh.run(['list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith(RESTORE_TEST_PREFIX));
  for (const name of domains) {
    const owner = parseOwner(await virsh.run(['desc', '--', name]).catch(() => undefined));
    if (owner && !(await isLeftover(owner, now))) continue;
    // Its disks are in its own test folder (named as the domain), wherever that mover's work folder was.
    const folders = new Set((await domainDiskPaths(virsh, name)).map(dirname).filter((d) => basename(d) === name));
    await removeDomain(virsh, name);
    for (const f of folders) await rm(f, { recursive: true, force: true });
    logger?.info('restoretest.swept', { domain: name, owner: owner ?? null });
    swept.push(name);
  }
  for (const entry of await readdir(root).catch(() => [] as string[])) {
    // A test folder, or one being made (`.<name>.making`, renamed once its owner is in it).
    const making = entry.startsWith(`.${RESTORE_TEST_PREFIX}`) && entry.endsWith('.making');
    if ((!entry.startsWith(RESTORE_TEST_PREFIX) && !making) || swept.includes(entry)) continue;
    const folder = join(root, entry);
    const owner = parseOwner(await readFile(join(folder, OWNER_FILE), 'utf8').catch(() => undefined));
    const leftover = owner ? await isLeftover(owner, now) : now - ((await stat(folder).catch(() => undefined))?.mtimeMs ?? 0) > UNOWNED_GRACE_MS;
    if (!leftover) continue;
    await rm(folder, { recursive: true, force: true });
    logger?.info('restoretest.swept', { folder, owner: owner ?? null });
    swept.push(entry);
  }
  return swept;
}

async function domainDiskPaths(virsh: Virsh, name: string): Promise<string[]> {
  const out = await virsh.run(['domblklist', '--details', '--', name]).catch(() => '');
  // Lines: type, device, target, source.
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 4 && f[3]!.startsWith('/'))
    .map((f) => f.slice(3).join(' '));
}

/** A test domain's name: the prefix, the VM's name (shortened, made safe) and a random part, so tests never collide. */
export function restoreTestDomainName(vmName: string): string {
  const safe =
    vmName
      .replace(/[^A-Za-z0-9._-]/g, '-')
      .replace(/^[^A-Za-z0-9]+/, '')
      .slice(0, 24) || 'vm';
  return `${RESTORE_TEST_PREFIX}${safe}-${randomBytes(4).toString('hex')}`;
}

export interface RestoreTestDeps {
  repository: Repository;
  parallelism: number;
  /** The mover's work folder: tests run in `<workDir>/restore-tests/<domain>/`. */
  workDir: string;
  signal?: AbortSignal;
  /** The task's liveness: restore progress and each look at the booting guest. */
  progress(): void;
  logger?: Logger;
  /** Default: `virsh` on the PATH, at the job's URI. */
  virsh?: Virsh;
}

export async function restoreTestTask(job: RestoreTestJob, d: RestoreTestDeps): Promise<RestoreTestResult> {
  const virsh = d.virsh ?? new Virsh(job.uri);
  const root = restoreTestRoot(d.workDir);
  await mkdir(root, { recursive: true });
  const swept = await sweepRestoreTests(virsh, root, d.logger);
  const name = restoreTestDomainName(job.vmName);
  const folder = join(root, name);
  // The folder appears under its name with its owner already in it, so a sweep never takes a live test's folder for a leftover.
  const making = join(root, `.${name}.making`);
  await mkdir(making);
  await writeFile(join(making, OWNER_FILE), JSON.stringify(await ownerOfThisProcess(FOLDER_LEASE_MS)));
  await rename(making, folder);
  d.logger?.info('restoretest.started', { testId: job.testId, vmId: job.vmId, backupId: job.backupId, domain: name, folder });
  try {
    const started = performance.now();
    const restore: RestoreJob = {
      restoreId: job.testId,
      vmId: job.vmId,
      backupId: job.backupId,
      moverGroup: job.moverGroup,
      repository: job.repository,
      target: folder,
      diskId: null,
      force: true,
      disks: job.disks.map((x) => ({ diskId: x.diskId, sizeBytes: x.sizeBytes, path: join(folder, `${x.diskId}.raw`) })),
    };
    const restored: RestoredDisk[] = [];
    for (const disk of restore.disks) {
      restored.push(
        await restoreDiskTask(restore, disk, {
          repository: d.repository,
          parallelism: d.parallelism,
          ...(d.signal ? { signal: d.signal } : {}),
          onProgress: () => d.progress(),
        }),
      );
    }
    const restoreSeconds = (performance.now() - started) / 1000;
    const owner = await ownerOfThisProcess(job.timeoutSeconds * 1000 + DOMAIN_GRACE_MS);
    const { domain } = await restoreVmConfigTask(
      {
        ...restore,
        define: { uri: job.uri, name, format: 'qcow2', bootCheck: defineBootCheck(job.bootCheck, job.timeoutSeconds), description: JSON.stringify(owner) },
      },
      restored,
      { repository: d.repository },
      { ...(d.signal ? { signal: d.signal } : {}), onWait: () => d.progress() },
    );
    const check = domain!.bootCheck!;
    const result: RestoreTestResult = {
      testId: job.testId,
      vmId: job.vmId,
      backupId: job.backupId,
      domain: name,
      passed: check.passed,
      seconds: check.seconds,
      restoreSeconds,
      ...(check.line ? { line: check.line } : {}),
      ...(check.agent !== undefined ? { agent: check.agent } : {}),
      ...(check.reason ? { reason: check.reason } : {}),
      swept,
    };
    d.logger?.info('restoretest.finished', { ...result });
    return result;
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}
