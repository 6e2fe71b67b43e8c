/**
 * The `instantRecover` task: a libvirt backup runs as a new VM within seconds, whatever
 * its disks' size, then moves to its final storage while it runs.
 *
 * 1. The backup's disks are served over NBD by an export process of the recovery's own
 *    (export-process.ts) on a unix socket in the recovery's folder `<workDir>/instant/<domain>/`;
 *    it outlives this task, so a mover that dies or restarts mid-recovery does not take
 *    the running VM's disks with it.
 * 2. Each disk gets a local qcow2 overlay there, backed by its export (raw): the guest's
 *    writes land in the overlay, its reads of anything else go to the backup.
 * 3. A domain is defined from the backed-up definition (define-domain.ts: new name, UUID and
 *    MACs) on the overlays and started. The export process is started first; the checks of
 *    the request, the overlays and the definition are made while it starts, and only the
 *    domain's start waits for it.
 * 4. Each disk is moved to `<target>/<disk>.<format>` by a libvirt block copy, watched until
 *    it is in step and pivoted (block-copy.ts); then the export process stops and the
 *    overlays and the folder go.
 *
 * If a move fails (target full or gone, the copy slower than the guest's writes), the copy
 * is cancelled and the VM keeps running on its overlays and exports; the folder keeps a
 * state file and the task fails with Recovery.InstantMoveFailed saying where the writes are
 * and how to resume: the same request with `instant.resume`. A task that is stopped or whose
 * mover dies leaves the copy running; a retry of the same restore (the workflow's, when
 * the mover died) or a resume re-attaches to the export process (or starts a new one at the
 * same socket if it is gone), takes up the copy job where it is, and pivots.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJob } from '../../contracts/export-job.ts';
import type { Repository } from '../../repository/open.ts';
import { InstantMoveFailed, RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { InstantRecovery, RestoreJob } from '../../contracts/recovery-jobs.ts';
import { unixNbdUri } from '../nbd/uri.ts';
import { restoredDomainXml } from '../sources/libvirt/domain-xml.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { copyJob, createOverlay, diskSource, reconnectBackings, startCopy, watchCopy } from './block-copy.ts';
import { domainExists, removeDomain, restoredDomainName, waitForSignOfLife } from './define-domain.ts';
import { putEndpoint } from './export-task.ts';
import { attachExportProcess, ensureExportWatchdog, EXPORT_FILES, startExportProcess, stopExportProcess, type ExportProcess } from './export-process.ts';
import { claimRestoreFolder } from './restore-tasks.ts';

/** The folder (under the mover's work folder) holding one folder per unfinished instant recovery. */
export const instantRoot = (workDir: string) => join(workDir, 'instant');
const STATE_FILE = 'instant.json';
/** A unix socket's path must fit in sockaddr_un (108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;
/**
 * The export process ends itself this long after its last client left: QEMU stays connected
 * while the VM runs on the overlays, so this only ends one whose domain was removed by hand.
 */
const EXPORT_IDLE_SECONDS = 600;

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
  repository: Repository;
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
  return text ? (JSON.parse(text) as InstantState) : undefined;
}

/** The resume command, as the operator types it. */
const resumeHint = (job: RestoreJob) =>
  `lifeboat restore --vm ${job.vmId} --backup ${job.backupId} --target ${job.target} --group ${job.moverGroup} --define ${job.define!.uri}${job.define!.name ? ` --name ${job.define!.name}` : ''} --instant --resume` +
  ' (workflow input: the same request with "instant": {"resume": true})';

function checkRequest(job: RestoreJob, config: Record<string, unknown>): void {
  if (!job.define) throw new RecoveryRequestInvalid('an instant recovery defines a VM: it needs "define" with the libvirt URI of the host (--define URI)');
  if (job.diskId) throw new RecoveryRequestInvalid('an instant recovery runs a whole VM; it cannot be combined with "diskId"');
  if (job.define.pool)
    throw new RecoveryRequestInvalid(
      'an instant recovery moves the VM to files in the target folder; "pool" (storage pool volumes) is not supported with it: restore without --instant, or leave out --pool',
    );
  if (job.define.bootCheck) throw new RecoveryRequestInvalid('an instant recovery keeps its VM; a boot check (restore test) removes it: use one or the other');
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string') {
    throw new RecoveryRequestInvalid(
      `backup ${job.backupId} of VM '${job.vmId}' was not taken by the libvirt driver (it holds no domain definition), so there is no VM to run from it: restore its disks as files instead (without --instant)`,
    );
  }
}

/** Milliseconds each step took, in order, for the log and the bench. */
function stepClock() {
  const steps: Record<string, number> = {};
  let last = performance.now();
  return {
    steps,
    step(name: string) {
      const now = performance.now();
      steps[name] = Math.round(now - last);
      last = now;
    },
  };
}

export async function instantRecoverTask(job: RestoreJob, d: InstantDeps): Promise<InstantRecovery> {
  const started = performance.now();
  const clock = stepClock();
  const config = await d.repository.readVmConfig(job.backupId);
  checkRequest(job, config);
  clock.step('vmConfig');
  const define = job.define!;
  const name = restoredDomainName(config, job.backupId, define);
  const virsh = d.virsh ?? new Virsh(define.uri);
  const dir = join(instantRoot(d.workDir), name);
  const prior = await readState(dir);
  const resumed = !!prior && (!!job.instant?.resume || prior.restoreId === job.restoreId);
  if (job.instant?.resume && !prior)
    throw new RecoveryRequestInvalid(
      `there is no unfinished instant recovery of domain '${name}' on this mover (no ${join(dir, STATE_FILE)}): start one without --resume`,
    );
  if (prior && !resumed) {
    throw new RecoveryRequestInvalid(
      `an instant recovery of domain '${name}' (restore ${prior.restoreId}) is not finished: its VM's writes are in ${Object.values(prior.overlays).join(', ')}; resume it with ${resumeHint(job)}, or remove the domain and ${dir}`,
    );
  }
  // Checked while the export process starts: answered before the domain is defined.
  const taken = resumed ? Promise.resolve(false) : domainExists(virsh, name);
  taken.catch(() => {});
  const format = define.format ?? 'qcow2';
  const state: InstantState = prior ?? {
    restoreId: job.restoreId,
    vmId: job.vmId,
    backupId: job.backupId,
    domain: name,
    socket: join(dir, 'nbd.sock'),
    overlays: Object.fromEntries(job.disks.map((x) => [x.diskId, join(dir, `${x.diskId}.overlay.qcow2`)])),
    dests: Object.fromEntries(job.disks.map((x) => [x.diskId, join(job.target, `${x.diskId}.${format}`)])),
    consoleLog: join(job.target, 'console.log'),
  };
  if (Buffer.byteLength(state.socket) > MAX_SOCKET_PATH)
    throw new RecoveryRequestInvalid(
      `the mover's work folder ${d.workDir} is too deep for the export's unix socket (${state.socket} is over ${MAX_SOCKET_PATH} bytes): give the mover a shorter LIFEBOAT_WORK_DIR`,
    );
  if (!resumed) await mkdir(dir, { recursive: true });
  const uris = Object.fromEntries(job.disks.map((x) => [x.diskId, unixNbdUri(state.socket, x.diskId)]));
  const attached = resumed ? await attachExportProcess(dir) : undefined;
  if (attached) await ensureExportWatchdog(dir);
  const gaveUp = resumed ? await readFile(join(dir, EXPORT_FILES.failed), 'utf8').catch(() => undefined) : undefined;
  if (gaveUp) d.logger.error('instant.export.failed-before', { restoreId: job.restoreId, domain: name, ...(JSON.parse(gaveUp) as object) });
  if (resumed)
    d.logger.info(attached ? 'instant.export.attached' : 'instant.export.restarted', {
      restoreId: job.restoreId,
      domain: name,
      ...(attached ? { pid: attached.pid } : {}),
    });
  // Started now, waited for only by the domain's start: overlays and definition do not need it listening.
  const serving: Promise<ExportProcess> = attached
    ? Promise.resolve(attached)
    : (async () => {
        // A socket left by an export process that is gone is stale: nobody listens on it any more.
        await rm(state.socket, { force: true });
        return startExportProcess(
          dir,
          exportJob.parse({
            exportId: job.restoreId,
            vmId: job.vmId,
            backupId: job.backupId,
            repository: job.repository,
            diskIds: job.disks.map((x) => x.diskId),
            listen: { socket: state.socket },
            idleTimeoutSeconds: EXPORT_IDLE_SECONDS,
          }),
          { guest: { uri: define.uri, domain: name } },
        );
      })();
  serving.catch(() => {});
  const record = (phase: 'running' | 'moving' | 'moved' | 'failed', extra: { error?: string; closed?: string } = {}) =>
    putEndpoint(
      d.repository.store,
      {
        exportId: job.restoreId,
        kind: 'instant',
        vmId: job.vmId,
        backupId: job.backupId,
        state: phase === 'moved' ? 'closed' : 'listening',
        uris,
        domain: name,
        overlays: state.overlays,
        phase,
        ...extra,
      },
      d.logger,
    );
  let defined = resumed;
  let exportPid = 0;
  try {
    if (!resumed) {
      if (await taken) throw new RecoveryRequestInvalid(`a domain named '${name}' already exists on ${define.uri}: choose another name (--name) or remove it`);
      await claimRestoreFolder(job);
      clock.step('folder');
      await Promise.all(job.disks.map((disk) => createOverlay(state.overlays[disk.diskId]!, uris[disk.diskId]!, disk.sizeBytes, d.qemuImg)));
      await writeFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2));
      clock.step('overlays');
      const xmlPath = join(dir, 'domain.xml');
      await writeFile(
        xmlPath,
        restoredDomainXml(String(config.domainXml), {
          name,
          consoleLog: state.consoleLog,
          disks: Object.fromEntries(job.disks.map((x) => [x.diskId, { path: state.overlays[x.diskId]!, format: 'qcow2' as const }])),
          // Reads that fail while the export process is restarted pause the VM; its watchdog resumes it.
          pauseOnIoError: true,
          ...(define.description !== undefined ? { description: define.description } : {}),
        }),
      );
      await virsh.run(['define', '--', xmlPath]);
      defined = true;
      clock.step('define');
      exportPid = (await serving).pid;
      clock.step('exportWait');
      await virsh.run(['start', '--', name]);
      clock.step('start');
    } else {
      exportPid = (await serving).pid;
      if (!(await domainExists(virsh, name))) {
        throw new RecoveryRequestInvalid(
          `the domain '${name}' of the unfinished instant recovery is gone from ${define.uri}; its writes are in ${Object.values(state.overlays).join(', ')} (backed by the backup's exports): keep them with qemu-img convert while the export process ${exportPid} serves, or give the recovery up by removing ${dir}`,
        );
      }
      // A new export process: QEMU's NBD clients connect to it before the VM or a copy reads from them.
      if (!attached) {
        await reconnectBackings(virsh, name).catch((err: Error) =>
          d.logger.error('instant.export.reconnect.failed', { restoreId: job.restoreId, domain: name, error: err.message }),
        );
      }
      // A VM paused by an I/O error runs again; one that stopped (its host restarted) starts again on its overlays.
      const now = (await virsh.run(['domstate', '--', name])).trim();
      if (now === 'paused') await virsh.run(['resume', '--', name]);
      else if (now === 'shut off') await virsh.run(['start', '--', name]);
      clock.step('reattach');
    }
    const runningSeconds = (performance.now() - started) / 1000;
    d.logger.info('instant.running', {
      restoreId: job.restoreId,
      domain: name,
      overlays: state.overlays,
      uris,
      seconds: runningSeconds,
      steps: clock.steps,
      exportPid,
      resumed,
    });
    await record('running');
    const after = job.instant?.moveAfter;
    if (after) {
      const seen = await waitForSignOfLife(virsh, name, state.consoleLog, { timeoutSeconds: 300, ...after }, d.signal, d.progress);
      d.logger.info('instant.sign-of-life', { restoreId: job.restoreId, domain: name, ...seen });
    }
    await record('moving');
    const moveStarted = performance.now();
    for (const disk of job.disks) await moveOne(job, d, virsh, state, disk.diskId, format, dir, exportPid, record);
    const moveSeconds = (performance.now() - moveStarted) / 1000;
    const served = await stopExportProcess(dir);
    // The VM runs on its final disks: the overlays and the exports are no longer part of it.
    await rm(dir, { recursive: true, force: true });
    await record('moved', { closed: 'moved' });
    const uuid = (await virsh.run(['domuuid', '--', name])).trim();
    d.logger.info('instant.moved', {
      restoreId: job.restoreId,
      domain: name,
      disks: Object.values(state.dests),
      moveSeconds,
      bytesServed: served?.bytesServed,
    });
    return {
      domain: name,
      uuid,
      disks: job.disks.map((x) => state.dests[x.diskId]!),
      consoleLog: state.consoleLog,
      runningSeconds,
      moveSeconds,
      bytesServed: served?.bytesServed ?? 0,
      bytesDownloaded: served?.bytesDownloaded ?? 0,
      resumed,
      steps: clock.steps,
    };
  } catch (err) {
    // Before the VM ran, nothing of it is worth keeping: the domain, the export process and the overlays go.
    if (!(err instanceof InstantMoveFailed) && !resumed) {
      if (defined) await removeDomain(virsh, name);
      await serving.catch(() => undefined);
      await stopExportProcess(dir);
      await rm(dir, { recursive: true, force: true });
    }
    throw err;
  }
}

/**
 * Moves one disk: nothing to do when it already runs on its destination (the pivot happened
 * before a mover died); a copy job already on the disk (left by a task that was stopped or
 * whose mover died) is taken up where it is; otherwise a new copy starts.
 */
async function moveOne(
  job: RestoreJob,
  d: InstantDeps,
  virsh: Virsh,
  state: InstantState,
  diskId: string,
  format: 'raw' | 'qcow2',
  dir: string,
  exportPid: number,
  record: (phase: 'failed', extra: { error: string }) => Promise<void>,
): Promise<void> {
  const name = state.domain;
  const dest = state.dests[diskId]!;
  const cap = job.instant?.moveBandwidthMiBs;
  try {
    if ((await diskSource(virsh, name, diskId)) === dest) return;
    if (await copyJob(virsh, name, diskId)) d.logger.info('instant.move.adopted', { restoreId: job.restoreId, domain: name, disk: diskId, dest });
    else await startCopy(virsh, name, diskId, dest, { format, ...(cap ? { bandwidthMiBs: cap } : {}) });
    await watchCopy(virsh, name, diskId, dest, {
      format,
      ...(cap ? { bandwidthMiBs: cap } : {}),
      ...(job.instant?.moveStallSeconds ? { stallSeconds: job.instant.moveStallSeconds } : {}),
      ...(d.signal ? { signal: d.signal } : {}),
      onTick: d.progress,
    });
  } catch (err) {
    const stopped = !!d.signal?.aborted;
    const why = stopped
      ? `the task was stopped (${String(d.signal!.reason)}); the copy goes on in libvirt and the resumed task takes it up`
      : (err as Error).message;
    state.error = why;
    await writeFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2));
    await record('failed', { error: why });
    throw new InstantMoveFailed(
      `instant recovery of VM '${job.vmId}' (backup ${job.backupId}) as domain '${name}': moving disk ${diskId} to ${dest} failed: ${why}. ` +
        `The VM keeps running on its overlays, and its writes are kept in ${Object.values(state.overlays).join(', ')} (backed by the backup's exports, served by export process ${exportPid} until the move completes). ` +
        `Fix the cause (room and access at ${job.target}${cap ? `, the move's cap of ${cap} MiB/s` : ''}), then resume with ${resumeHint(job)}`,
      err,
    );
  }
}
