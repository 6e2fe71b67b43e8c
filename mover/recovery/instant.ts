/**
 * The `instantRecover` task: a libvirt backup runs as a new VM within seconds, whatever
 * its disks' size, then moves to its final storage while it runs.
 *
 * 1. The backup's disks are served over NBD by this mover (the export task's server and
 *    block source, in this task) on a unix socket in the recovery's folder
 *    `<workDir>/instant/<domain>/`.
 * 2. Each disk gets a local qcow2 overlay there, backed by its export (raw): the guest's
 *    writes land in the overlay, its reads of anything else go to the backup.
 * 3. A domain is defined from the backed-up definition (define-domain.ts: new name, UUID and
 *    MACs) on the overlays and started.
 * 4. Each disk is moved to `<target>/<disk>.<format>` with `virsh blockcopy --pivot`
 *    (block-copy.ts); then the exports close and the overlays and the folder go.
 *
 * If a move fails (target full or gone, the task stopped), the VM is paused (its exports
 * are about to close; a paused guest sees no I/O error), its writes stay in the overlays,
 * the folder keeps a state file, and the task fails with Recovery.InstantMoveFailed saying
 * where they are and how to resume: the same request with `instant.resume`, which serves
 * the exports again at the same socket, resumes the VM and moves it. A retry of the same
 * restore (its mover died) takes it up the same way.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJob } from '../../contracts/export-job.ts';
import type { RepositoryKeys } from '../../repository/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { InstantMoveFailed, RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { InstantRecovery, RestoreJob } from '../../contracts/recovery-jobs.ts';
import { restoredDomainXml } from '../sources/libvirt/domain-xml.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { createOverlay, moveDisk } from './block-copy.ts';
import { domainExists, removeDomain, restoredDomainName, waitForSignOfLife } from './define-domain.ts';
import { putEndpoint, runExportTask } from './export-task.ts';
import { claimRestoreFolder, readVmConfig } from './restore-tasks.ts';

/** The folder (under the mover's work folder) holding one folder per unfinished instant recovery. */
export const instantRoot = (workDir: string) => join(workDir, 'instant');
const STATE_FILE = 'instant.json';
/** A unix socket's path must fit in sockaddr_un (108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/** What an unfinished instant recovery left in its folder, so it can be resumed. */
interface InstantState {
  restoreId: string;
  vmId: string;
  backupId: string;
  domain: string;
  socket: string;
  overlays: Record<string, string>;
  dests: Record<string, string>;
  consoleLog: string;
  /** Why the last move failed. */
  error?: string;
}

export interface InstantDeps {
  store: ObjectStore;
  keys: RepositoryKeys;
  workDir: string;
  logger: Logger;
  signal?: AbortSignal;
  /** The task's liveness. */
  progress(): void;
  /** Default: `virsh` on the PATH, at the job's URI. */
  virsh?: Virsh;
  qemuImg?: string;
}

async function readState(dir: string): Promise<InstantState | undefined> {
  const text = await readFile(join(dir, STATE_FILE), 'utf8').catch(() => undefined);
  return text ? JSON.parse(text) as InstantState : undefined;
}

/** The resume command, as the operator types it. */
const resumeHint = (job: RestoreJob) =>
  `lifeboat restore --vm ${job.vmId} --backup ${job.backupId} --target ${job.target} --group ${job.moverGroup} --define ${job.define!.uri}${job.define!.name ? ` --name ${job.define!.name}` : ''} --instant --resume`
  + ' (workflow input: the same request with "instant": {"resume": true})';

function checkRequest(job: RestoreJob, config: Record<string, unknown>): void {
  if (!job.define) throw new RecoveryRequestInvalid('an instant recovery defines a VM: it needs "define" with the libvirt URI of the host (--define URI)');
  if (job.diskId) throw new RecoveryRequestInvalid('an instant recovery runs a whole VM; it cannot be combined with "diskId"');
  if (job.define.pool) throw new RecoveryRequestInvalid('an instant recovery moves the VM to files in the target folder; "pool" (storage pool volumes) is not supported with it: restore without --instant, or leave out --pool');
  if (job.define.bootCheck) throw new RecoveryRequestInvalid('an instant recovery keeps its VM; a boot check (restore test) removes it: use one or the other');
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string') {
    throw new RecoveryRequestInvalid(`backup ${job.backupId} of VM '${job.vmId}' was not taken by the libvirt driver (it holds no domain definition), so there is no VM to run from it: restore its disks as files instead (without --instant)`);
  }
}

export async function instantRecoverTask(job: RestoreJob, d: InstantDeps): Promise<InstantRecovery> {
  const started = performance.now();
  const config = await readVmConfig(job.backupId, d);
  checkRequest(job, config);
  const define = job.define!;
  const name = restoredDomainName(config, job.backupId, define);
  const virsh = d.virsh ?? new Virsh(define.uri);
  const dir = join(instantRoot(d.workDir), name);
  const prior = await readState(dir);
  const resumed = !!prior && (!!job.instant?.resume || prior.restoreId === job.restoreId);
  if (job.instant?.resume && !prior) throw new RecoveryRequestInvalid(`there is no unfinished instant recovery of domain '${name}' on this mover (no ${join(dir, STATE_FILE)}): start one without --resume`);
  if (prior && !resumed) {
    throw new RecoveryRequestInvalid(`an instant recovery of domain '${name}' (restore ${prior.restoreId}) is not finished: its VM's writes are in ${Object.values(prior.overlays).join(', ')}; resume it with ${resumeHint(job)}, or remove the domain and ${dir}`);
  }
  if (!resumed && await domainExists(virsh, name)) throw new RecoveryRequestInvalid(`a domain named '${name}' already exists on ${define.uri}: choose another name (--name) or remove it`);
  const format = define.format ?? 'qcow2';
  const state: InstantState = prior ?? {
    restoreId: job.restoreId, vmId: job.vmId, backupId: job.backupId, domain: name, socket: join(dir, 'nbd.sock'),
    overlays: Object.fromEntries(job.disks.map((x) => [x.diskId, join(dir, `${x.diskId}.overlay.qcow2`)])),
    dests: Object.fromEntries(job.disks.map((x) => [x.diskId, join(job.target, `${x.diskId}.${format}`)])),
    consoleLog: join(job.target, 'console.log'),
  };
  if (Buffer.byteLength(state.socket) > MAX_SOCKET_PATH) throw new RecoveryRequestInvalid(`the mover's work folder ${d.workDir} is too deep for the export's unix socket (${state.socket} is over ${MAX_SOCKET_PATH} bytes): give the mover a shorter LIFEBOAT_WORK_DIR`);
  if (!resumed) {
    await claimRestoreFolder(job);
    await mkdir(dir, { recursive: true });
  }
  // A socket left by a mover that died is stale: nobody listens on it any more.
  await rm(state.socket, { force: true });
  const stopExport = new AbortController();
  let listening!: (uris: Record<string, string>) => void;
  const ready = new Promise<Record<string, string>>((ok) => (listening = ok));
  const serving = runExportTask(exportJob.parse({
    exportId: job.restoreId, vmId: job.vmId, backupId: job.backupId, repository: job.repository, diskIds: job.disks.map((x) => x.diskId),
    listen: { socket: state.socket }, idleTimeoutSeconds: 7 * 24 * 3600,
  }), { store: d.store, keys: d.keys, logger: d.logger, signal: stopExport.signal, progress: d.progress, progressMs: 10_000, onListening: listening });
  serving.catch(() => {});
  const record = (phase: 'running' | 'moving' | 'moved' | 'failed', extra: { error?: string; closed?: string } = {}) => putEndpoint(d.store, {
    exportId: job.restoreId, kind: 'instant', vmId: job.vmId, backupId: job.backupId, state: phase === 'moved' ? 'closed' : 'listening', uris,
    domain: name, overlays: state.overlays, phase, ...extra,
  }, d.logger);
  let uris: Record<string, string> = {};
  let defined = resumed;
  let moveSeconds = 0;
  try {
    uris = await Promise.race([ready, serving.then(() => { throw new Error('the export closed before it listened'); })]);
    if (!resumed) {
      for (const disk of job.disks) await createOverlay(state.overlays[disk.diskId]!, uris[disk.diskId]!, disk.sizeBytes, d.qemuImg);
      await writeFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2));
      const xmlPath = join(dir, 'domain.xml');
      await writeFile(xmlPath, restoredDomainXml(String(config.domainXml), {
        name, consoleLog: state.consoleLog,
        disks: Object.fromEntries(job.disks.map((x) => [x.diskId, { path: state.overlays[x.diskId]!, format: 'qcow2' as const }])),
        ...(define.description !== undefined ? { description: define.description } : {}),
      }));
      await virsh.run(['define', '--', xmlPath]);
      defined = true;
      await virsh.run(['start', '--', name]);
    } else if ((await virsh.run(['domstate', '--', name])).trim() === 'paused') {
      await virsh.run(['resume', '--', name]);
    }
    const runningSeconds = (performance.now() - started) / 1000;
    d.logger.info('instant.running', { restoreId: job.restoreId, domain: name, overlays: state.overlays, uris, seconds: runningSeconds, resumed });
    await record('running');
    const after = job.instant?.moveAfter;
    if (after) {
      const seen = await waitForSignOfLife(virsh, name, state.consoleLog, { timeoutSeconds: 300, ...after }, d.signal, d.progress);
      d.logger.info('instant.sign-of-life', { restoreId: job.restoreId, domain: name, ...seen });
    }
    await record('moving');
    const moveStarted = performance.now();
    for (const disk of job.disks) {
      try {
        await moveDisk(virsh, name, disk.diskId, state.dests[disk.diskId]!, { format, ...(job.instant?.moveBandwidthMiBs ? { bandwidthMiBs: job.instant.moveBandwidthMiBs } : {}), ...(d.signal ? { signal: d.signal } : {}), onTick: d.progress });
      } catch (err) {
        // The guest must not see its backing disappear: pause it before the exports close.
        await virsh.run(['suspend', '--', name]).catch(() => {});
        const why = d.signal?.aborted ? `the task was stopped (${String(d.signal.reason)})` : (err as Error).message;
        state.error = why;
        await writeFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2));
        await record('failed', { error: why });
        throw new InstantMoveFailed(`instant recovery of VM '${job.vmId}' (backup ${job.backupId}) as domain '${name}': moving disk ${disk.diskId} to ${state.dests[disk.diskId]} failed: ${why}. `
          + `The VM is paused and its writes are kept in ${Object.values(state.overlays).join(', ')} (backed by the backup's exports, served again on resume). `
          + `Fix the cause (room and access at ${job.target}), then resume with ${resumeHint(job)}`, err);
      }
    }
    moveSeconds = (performance.now() - moveStarted) / 1000;
    stopExport.abort();
    const served = await serving;
    // The VM runs on its final disks: the overlays and the exports are no longer part of it.
    await rm(dir, { recursive: true, force: true });
    await record('moved', { closed: 'moved' });
    const uuid = (await virsh.run(['domuuid', '--', name])).trim();
    d.logger.info('instant.moved', { restoreId: job.restoreId, domain: name, disks: Object.values(state.dests), moveSeconds, bytesServed: served.bytesServed });
    return {
      domain: name, uuid, disks: job.disks.map((x) => state.dests[x.diskId]!), consoleLog: state.consoleLog, runningSeconds, moveSeconds,
      bytesServed: served.bytesServed, bytesDownloaded: served.bytesDownloaded, resumed,
    };
  } catch (err) {
    // Before the VM ran, nothing of it is worth keeping: the domain and the overlays go.
    if (!(err instanceof InstantMoveFailed) && !resumed) {
      if (defined) await removeDomain(virsh, name);
      await rm(dir, { recursive: true, force: true });
    }
    throw err;
  } finally {
    stopExport.abort();
    await serving.catch(() => undefined);
  }
}
