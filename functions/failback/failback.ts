/**
 * The Failback workflow's functions. PlanFailback resolves the production VM and the VM
 * running at the DR site since the failover (their hosts, domains and mover groups), the
 * failover's recovery point B (the restore point of the VM's failover the catalog recorded),
 * the DR VM's newest backup D (and the production VM's replica VM, released at the end), and
 * refuses what cannot fail back, naming why.
 * CheckFinalBackup follows the final DR-site Backup run (started by the workflow after the
 * DR VM stopped) until the DR VM's backup of that run is committed. RecordFailback adds
 * up both deltas and the outage, records the report and releases the VM's failover in the
 * catalog.
 */
import { z } from 'zod';
import {
  failbackDiskResult,
  failbackJob,
  failbackRequest,
  releasedReplica,
  startedVm,
  stoppedVm,
  type FailbackJob,
  type FailbackReport,
} from '../../contracts/failback.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import { selectVms } from '../backup/plan.ts';
import type { Backup, Catalog, Host, Vm } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { resolveBackup } from '../recovery/backups.ts';

interface Deps {
  catalog: Catalog;
  recovery: RecoveryCatalog;
  now: () => Date;
}

const text = z.string().min(1);
export const planFailbackInput = z.object({ failbackId: text, request: failbackRequest }).strict();

/** Default seconds the DR VM gets to shut down cleanly. */
export const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 120;
/** How long the final DR-site backup may take before the failback gives up on it. */
export const FINAL_BACKUP_TIMEOUT_MS = 2 * 3600_000;

async function libvirtHost(catalog: Catalog, vm: Vm, role: string): Promise<{ host: Host; uri: string }> {
  const host = (await catalog.getHost(vm.host)) as Host | undefined;
  if (!host) throw new RecoveryRequestInvalid(`the ${role} '${vm.vmId}' is on host '${vm.host}', which is not configured`);
  if (host.hypervisor?.driver !== 'libvirt')
    throw new RecoveryRequestInvalid(`the ${role} '${vm.vmId}' is on host '${vm.host}', which is not a libvirt host: failback switches libvirt VMs`);
  return { host, uri: host.hypervisor.uri };
}

type Base = { backup: Backup; from: 'request' | 'failover' | 'newestReplica'; failoverRunId?: string };

/**
 * The failover's recovery point: the backup named, else the restore point of the VM's
 * active failover in the catalog (the point FailoverPlan powered its replica on at), else
 * (a failover before the catalog recorded them) the newest committed backup of the VM
 * complete in its policy's DR repository.
 */
async function recoveryPoint(deps: Deps, vmId: string, requested: string | undefined): Promise<Base> {
  if (requested) return { backup: (await resolveBackup(deps.catalog, vmId, requested)).backup as Backup, from: 'request' };
  const failover = await deps.recovery.activeFailover(vmId);
  if (failover) {
    const b = (await deps.catalog.listBackups(vmId)).find((x) => x.backupId === failover.backupId);
    if (!b || b.status !== 'committed')
      throw new RecoveryRequestInvalid(
        `VM '${vmId}' was failed over (run ${failover.runId}) at backup ${failover.backupId}, which is ${b ? b.status : 'no longer in the catalog'}: the failback cannot start from it. Name the production backup the DR VM started from with "baseBackupId" (lifeboat failback --base)`,
      );
    return { backup: b, from: 'failover', failoverRunId: failover.runId };
  }
  for (const b of await deps.catalog.listBackups(vmId)) {
    if (b.status !== 'committed') continue;
    const dr = (await deps.catalog.getPolicy(b.policyId))?.replicateTo;
    if (dr && (await deps.recovery.getReplica(vmId, dr.bucket, b.backupId))) return { backup: b, from: 'newestReplica' };
  }
  throw new RecoveryRequestInvalid(
    `VM '${vmId}' was never failed over: none of its backups is complete in a DR repository, so there is no recovery point to fail back from (name one with "baseBackupId" if it was failed over another way)`,
  );
}

export async function planFailback({ failbackId, request }: z.output<typeof planFailbackInput>, deps: Deps): Promise<FailbackJob> {
  const vm = await deps.catalog.getVm(request.vmId);
  if (!vm) throw new RecoveryRequestInvalid(`VM '${request.vmId}' is not in the inventory`);
  const drVm = await deps.catalog.getVm(request.drVmId);
  if (!drVm)
    throw new RecoveryRequestInvalid(
      `VM '${request.vmId}' was never failed over to '${request.drVmId}': no VM of that id is in the inventory. Fail over first, then let discovery (or \`lifeboat vm add\`) put the DR VM in the inventory of its DR host`,
    );
  const prod = await libvirtHost(deps.catalog, vm, 'production VM');
  const dr = await libvirtHost(deps.catalog, drVm, 'DR VM');
  if (prod.host.site === dr.host.site)
    throw new RecoveryRequestInvalid(
      `VM '${drVm.vmId}' is on host '${drVm.host}' at site '${dr.host.site}', the production VM's own site: name the VM running at the DR site`,
    );
  let drPolicyId: string | undefined;
  for (const p of await deps.catalog.listPolicies())
    if ((await selectVms(p, deps.catalog).catch(() => [] as Vm[])).some((v) => v.vmId === drVm.vmId)) drPolicyId ??= p.policyId;
  if (!drPolicyId)
    throw new RecoveryRequestInvalid(
      `the DR VM '${drVm.vmId}' is not protected at the DR site: no policy selects it. Declare a DR-site policy (configuration: a policy whose "vms" select the DR host's VMs and whose "repository" is the DR repository), back it up, then run the Failback`,
    );
  const { backup: base, from: baseFrom, failoverRunId } = await recoveryPoint(deps, vm.vmId, request.baseBackupId);
  const newest = await deps.catalog.latestCommitted(drVm.vmId);
  if (!newest)
    throw new RecoveryRequestInvalid(
      `the DR VM '${drVm.vmId}' has no committed backup yet: run \`lifeboat backup ${drPolicyId}\` first (failback sends what changed since the failover from the DR site's backups)`,
    );
  const [from, to] = await Promise.all([resolveBackup(deps.catalog, vm.vmId, base.backupId), resolveBackup(deps.catalog, drVm.vmId, newest.backupId)]);
  const baseDisks = new Set((from.backup.disks ?? []).map((d) => d.diskId));
  const disks = (to.backup.disks ?? []).map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes }));
  const missing = disks.filter((d) => !baseDisks.has(d.diskId)).map((d) => d.diskId);
  if (missing.length)
    throw new RecoveryRequestInvalid(
      `the DR VM '${drVm.vmId}' has disk(s) ${missing.join(', ')} that the recovery point ${base.backupId} of '${vm.vmId}' does not: add them to the production VM, or restore it from the DR site's backup instead`,
    );
  const replicateTo = (await deps.catalog.getPolicy(base.policyId))?.replicateTo;
  const replica =
    replicateTo?.replicaVms && replicateTo.standbyPath && replicateTo.moverGroup
      ? { replicaDir: replicateTo.standbyPath, uri: replicateTo.replicaVms.uri, moverGroup: replicateTo.moverGroup }
      : undefined;
  return failbackJob.parse({
    failbackId,
    vmId: vm.vmId,
    drVmId: drVm.vmId,
    productionGroup: prod.host.moverGroup,
    drGroup: dr.host.moverGroup,
    production: { uri: prod.uri, name: vm.source },
    dr: { uri: dr.uri, name: drVm.source },
    drPolicyId,
    base: { backupId: base.backupId, repository: from.repository },
    baseFrom,
    ...(failoverRunId ? { failoverRunId } : {}),
    target: { backupId: newest.backupId, repository: to.repository },
    disks,
    ...(replica ? { replica } : {}),
    shutdownTimeoutSeconds: request.shutdownTimeoutSeconds ?? DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
    readiness: request.readiness ?? { agent: true },
  });
}

/** When the final Backup run started: StartExecution's StartDate (an ISO time, or epoch seconds as some SDK integrations give it). */
const startDate = z.union([text, z.number()]).transform((v) => (typeof v === 'number' ? new Date(v < 1e11 ? v * 1000 : v).toISOString() : v));
export const checkFinalBackupInput = z.object({ job: failbackJob, runId: text, startedAt: startDate }).strict();

/** Whether the final DR-site Backup run committed the DR VM's backup: `{ done, backupId }`; a failed one fails the failback, naming the run. */
export async function checkFinalBackup(
  input: z.output<typeof checkFinalBackupInput>,
  deps: Pick<Deps, 'catalog' | 'now'>,
): Promise<{ done: boolean; backupId: string | null }> {
  const { job, runId } = input;
  const b = (await deps.catalog.listBackups(job.drVmId)).find((x) => x.runId === runId);
  if (b?.status === 'committed') return { done: true, backupId: b.backupId };
  if (b?.status === 'failed')
    throw new RecoveryRequestInvalid(
      `the final backup of the DR VM '${job.drVmId}' (run ${runId} of policy ${job.drPolicyId}) failed: ${b.error?.Error ?? ''} ${b.error?.Cause ?? ''}. The DR VM is shut off and production was not started: start the DR VM again (virsh start ${job.dr.name}), or fix the cause and run the Failback again`,
    );
  if (deps.now().getTime() - Date.parse(input.startedAt) > FINAL_BACKUP_TIMEOUT_MS)
    throw new RecoveryRequestInvalid(
      `the final backup of the DR VM '${job.drVmId}' (run ${runId}) did not commit within ${FINAL_BACKUP_TIMEOUT_MS / 3600_000} h; see \`lifeboat runs ${runId}\``,
    );
  return { done: false, backupId: null };
}

export const recordFailbackInput = z
  .object({
    job: failbackJob,
    finalBackupId: text,
    sync: z.array(failbackDiskResult),
    final: z.array(failbackDiskResult),
    stopped: stoppedVm,
    started: startedVm,
    replica: releasedReplica,
  })
  .strict();

export async function recordFailback(input: z.output<typeof recordFailbackInput>, deps: Pick<Deps, 'recovery' | 'now'>): Promise<FailbackReport> {
  const { job } = input;
  const all = [...input.sync, ...input.final];
  const sum = (k: 'bytesChanged' | 'bytesWritten' | 'bytesSent' | 'chunksDrifted') => all.reduce((n, d) => n + d[k], 0);
  const outageStart = Date.parse(input.stopped.stoppedAt) - input.stopped.seconds * 1000;
  const report: FailbackReport = {
    failbackId: job.failbackId,
    vmId: job.vmId,
    drVmId: job.drVmId,
    baseBackupId: job.base.backupId,
    ...(job.baseFrom ? { baseFrom: job.baseFrom } : {}),
    ...(job.failoverRunId ? { failoverRunId: job.failoverRunId } : {}),
    syncBackupId: job.target.backupId,
    finalBackupId: input.finalBackupId,
    bytesChanged: sum('bytesChanged'),
    bytesWritten: sum('bytesWritten'),
    bytesSent: sum('bytesSent'),
    chunksDrifted: sum('chunksDrifted'),
    outageSeconds: Math.round((Date.parse(input.started.readyAt) - outageStart) / 100) / 10,
    production: { domain: input.started.domain, state: input.started.state, readyAt: input.started.readyAt },
    ...(input.replica.domain !== null ? { replica: input.replica } : {}),
    disks: { sync: input.sync, final: input.final },
  };
  // Production runs again and the replica is released: the VM is no longer failed over.
  const released = await deps.recovery.releaseFailovers(job.vmId, job.failbackId, deps.now());
  if (released.length) report.failoversReleased = released.map((f) => f.runId);
  await deps.recovery.putRecord('FAILBACK', job.failbackId, { status: 'succeeded', finishedAt: deps.now().toISOString(), summary: report });
  return report;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  const deps = (): Deps => ({ catalog: c.catalog, recovery: c.recovery, now: () => new Date() });
  return {
    planHandler: lambdaHandler('PlanFailback', planFailbackInput, (input) => planFailback(input, deps())),
    checkFinalBackupHandler: lambdaHandler('CheckFinalBackup', checkFinalBackupInput, (input) => checkFinalBackup(input, deps())),
    recordHandler: lambdaHandler('RecordFailback', recordFailbackInput, (input) => recordFailback(input, deps())),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, checkFinalBackupHandler, recordHandler } = fromEnvironment(makeHandlers);
