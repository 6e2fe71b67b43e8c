/**
 * The operator's read model: what `lifeboat vms|backups|runs|policies|movers|restore-points`,
 * the web console and the read-only API show. Pure functions over narrow dependencies
 * (the catalog, the mover records, the progress objects, the Backup workflow's
 * executions), so the same code answers in a Lambda function and in the embedded stack.
 */
import type { VmOutcome } from '../../contracts/jobs.ts';
import type {
  BackupRow,
  DiskProgressRow,
  OperationProgressRow,
  PolicyRow,
  RestorePointRow,
  RpoStatus,
  RunRow,
  RunVmRow,
  VmRow,
} from '../../contracts/operator.ts';
import { rateAndEta, type TaskProgress } from '../../contracts/progress.ts';
import type { MoverView } from '../../core/mover-fleet.ts';
import type { Backup, Catalog, Policy, Vm } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { selectVms } from '../backup/plan.ts';
import { drRpoHoursOf } from '../../core/config.ts';

/** One execution of the Backup workflow as ListExecutions/DescribeExecution say it. */
export interface ExecutionSummary {
  name: string;
  executionArn: string;
  status: string;
  startDate: string;
  stopDate?: string;
}

export interface ExecutionDetail extends ExecutionSummary {
  input?: string;
  error?: string;
  cause?: string;
}

/** The Backup workflow's executions (Step Functions ListExecutions/DescribeExecution). */
export interface BackupExecutions {
  list(max: number): Promise<ExecutionSummary[]>;
  describe(name: string): Promise<ExecutionDetail | undefined>;
}

export interface OperatorDeps {
  catalog: Pick<Catalog, 'listPolicies' | 'listHosts' | 'vmsOnHost' | 'getVm' | 'listBackups' | 'getRun' | 'backupsOfRun'>;
  recovery: Pick<RecoveryCatalog, 'listReplicas' | 'newestReplica' | 'activeFailover'>;
  movers(): Promise<MoverView[]>;
  /** The progress objects of a backup's disk transfers (contracts/progress.ts). */
  progress(backupId: string): Promise<TaskProgress[]>;
  executions: BackupExecutions;
  now(): Date;
}

const hours = (now: Date, iso: string) => Math.max(0, (now.getTime() - Date.parse(iso)) / 3600_000);
const round = (n: number) => Math.round(n * 100) / 100;

/** Every VM of the inventory (host by host), with the mover group of its host. */
export async function inventory(deps: Pick<OperatorDeps, 'catalog'>): Promise<(Vm & { moverGroup: string })[]> {
  const vms: (Vm & { moverGroup: string })[] = [];
  for (const host of await deps.catalog.listHosts()) {
    for (const id of await deps.catalog.vmsOnHost(host.hostId)) {
      const vm = await deps.catalog.getVm(id);
      if (vm) vms.push({ ...vm, moverGroup: host.moverGroup });
    }
  }
  return vms.sort((a, b) => a.vmId.localeCompare(b.vmId));
}

/** Which policies select each VM (by id, host, name and tag, as Plan selects). */
export async function policiesByVm(deps: Pick<OperatorDeps, 'catalog'>): Promise<{ policies: Policy[]; byVm: Map<string, Policy[]> }> {
  const policies = await deps.catalog.listPolicies();
  const byVm = new Map<string, Policy[]>();
  for (const p of policies) {
    const selected = await selectVms(p, deps.catalog).catch(() => [] as Vm[]);
    for (const vm of selected) byVm.set(vm.vmId, [...(byVm.get(vm.vmId) ?? []), p]);
  }
  return { policies, byVm };
}

export async function listVms(deps: OperatorDeps): Promise<VmRow[]> {
  const now = deps.now();
  const { byVm } = await policiesByVm(deps);
  const rows: VmRow[] = [];
  for (const vm of await inventory(deps)) {
    const policies = byVm.get(vm.vmId) ?? [];
    const backups = await deps.catalog.listBackups(vm.vmId);
    const last = backups[0];
    const newest = backups.find((b) => b.status === 'committed' || String(b.status) === 'damaged');
    const rpos = policies.map((p) => p.rpoHours).filter((h): h is number => typeof h === 'number');
    const rpoHours = rpos.length ? Math.min(...rpos) : null;
    const age = newest?.committedAt ? hours(now, newest.committedAt) : null;
    const rpo: RpoStatus = rpoHours === null ? 'none' : age === null ? 'never' : age > rpoHours ? 'late' : 'ok';
    rows.push({
      vmId: vm.vmId,
      name: vm.name ?? vm.vmId,
      host: vm.host,
      moverGroup: vm.moverGroup,
      protection: vm.gone ? 'gone' : policies.length ? 'protected' : 'unprotected',
      policies: policies.map((p) => p.policyId),
      lastBackup: last ? { backupId: last.backupId, at: last.committedAt ?? last.startedAt, status: last.status } : null,
      consistency: newest?.consistency?.level ?? null,
      rpoHours,
      recoveryPointAgeHours: age === null ? null : round(age),
      rpo,
      ...(await drLag(vm.vmId, policies, backups, deps.recovery, now)),
      failedOver: await failedOver(vm.vmId, deps.recovery),
    });
  }
  return rows;
}

/** A VM's active failover as the catalog recorded it, if any. */
async function failedOver(vmId: string, recovery: OperatorDeps['recovery']): Promise<VmRow['failedOver']> {
  const f = await recovery.activeFailover(vmId);
  return f ? { runId: f.runId, plan: f.plan, backupId: f.backupId, at: f.failedOverAt } : null;
}

/**
 * A VM's replication lag: the age of its newest restore point at the DR site (since its
 * backup started: the recovery point a failover would give), against the tightest DR RPO
 * of its replicating policies (as ReportReplication measures it for the DrPastRpo alarm).
 */
async function drLag(
  vmId: string,
  policies: Policy[],
  backups: Backup[],
  recovery: OperatorDeps['recovery'],
  now: Date,
): Promise<Pick<VmRow, 'drRpoHours' | 'drLagHours' | 'drRestorePoint' | 'drRpo'>> {
  const replicating = policies.filter((p) => p.replicateTo);
  if (!replicating.length) return { drRpoHours: null, drLagHours: null, drRestorePoint: null, drRpo: 'none' };
  const drRpoHours = Math.min(...replicating.map((p) => drRpoHoursOf({ rpoHours: p.rpoHours ?? 24, drRpoHours: p.replicateTo!.drRpoHours })));
  let lag: number | null = null;
  let point: string | null = null;
  for (const p of replicating) {
    const r = await recovery.newestReplica(vmId, p.replicateTo!.bucket);
    if (!r) continue;
    const age = hours(now, backups.find((b) => b.backupId === r.backupId)?.startedAt ?? r.replicatedAt);
    if (lag === null || age < lag) [lag, point] = [age, r.backupId];
  }
  const oldest = backups.filter((b) => b.status === 'committed').at(-1);
  const drRpo: RpoStatus = lag !== null ? (lag > drRpoHours ? 'late' : 'ok') : oldest && hours(now, oldest.startedAt) > drRpoHours ? 'late' : 'never';
  return { drRpoHours, drLagHours: lag === null ? null : round(lag), drRestorePoint: point, drRpo };
}

export function backupRow(b: Backup): BackupRow {
  const disks = b.disks ?? [];
  const damage = (b as Backup & { damage?: { verifyId: string; foundAt: string; findings: unknown[] } }).damage;
  return {
    vmId: b.vmId,
    backupId: b.backupId,
    policyId: b.policyId,
    runId: b.runId,
    status: b.status,
    startedAt: b.startedAt,
    committedAt: b.committedAt ?? null,
    sizeBytes: disks.reduce((n, d) => n + d.sizeBytes, 0),
    bytesNew: disks.reduce((n, d) => n + (d.stats.bytesNew ?? 0), 0),
    bytesStored: disks.reduce((n, d) => n + (d.stats.bytesStored ?? 0), 0),
    consistency: b.consistency?.level ?? null,
    verified: b.verified ? { at: b.verified.at, full: b.verified.chunksChecked === b.verified.chunksTotal } : null,
    damaged: String(b.status) === 'damaged',
    damage: damage ? { verifyId: damage.verifyId, foundAt: damage.foundAt, objects: damage.findings.length } : null,
    error: b.error ?? null,
  };
}

/** A VM's backups, newest first; undefined when the VM is not in the inventory and has none. */
export async function listBackups(vmId: string, deps: Pick<OperatorDeps, 'catalog'>): Promise<BackupRow[] | undefined> {
  const backups = await deps.catalog.listBackups(vmId);
  if (!backups.length && !(await deps.catalog.getVm(vmId))) return undefined;
  return backups.map(backupRow);
}

function diskRows(progress: TaskProgress[]): DiskProgressRow[] {
  return progress
    .map((p) => {
      const { bytesPerSecond, etaSeconds } = rateAndEta(p);
      return {
        diskId: p.diskId,
        segment: p.segment ?? null,
        phase: p.phase,
        bytesDone: p.bytesDone,
        bytesTotal: p.bytesTotal,
        bytesPerSecond: Math.round(bytesPerSecond),
        etaSeconds: p.phase !== 'done' && p.phase !== 'failed' && etaSeconds !== undefined ? Math.round(etaSeconds) : null,
        mover: p.mover,
      };
    })
    .sort((a, b) => a.diskId.localeCompare(b.diskId) || (a.segment ?? 0) - (b.segment ?? 0));
}

/** The progress objects under `id` (a restore's or verification's execution name, or a backup id); undefined when there are none (not started, or expired). */
export async function operationProgress(id: string, deps: Pick<OperatorDeps, 'progress'>): Promise<OperationProgressRow | undefined> {
  const progress = await deps.progress(id);
  const first = progress[0];
  if (!first) return undefined;
  const disks = diskRows(progress);
  return {
    id,
    operation: first.operation ?? 'backup',
    vmId: first.vmId,
    backupId: first.backupId,
    disks,
    bytesDone: disks.reduce((n, d) => n + d.bytesDone, 0),
    bytesTotal: disks.reduce((n, d) => n + d.bytesTotal, 0),
  };
}

async function runVm(b: Pick<Backup, 'vmId' | 'backupId' | 'status' | 'error'>, deps: Pick<OperatorDeps, 'progress'>, withDisks: boolean): Promise<RunVmRow> {
  const disks = withDisks || b.status === 'running' ? diskRows(await deps.progress(b.backupId)) : [];
  const phase: RunVmRow['phase'] =
    b.status === 'failed'
      ? 'failed'
      : b.status !== 'running'
        ? 'committed'
        : !disks.length
          ? 'snapshot'
          : disks.every((d) => d.phase === 'done')
            ? 'verify'
            : 'transfer';
  return {
    vmId: b.vmId,
    backupId: b.backupId,
    phase,
    error: b.error ?? null,
    disks,
    bytesDone: disks.reduce((n, d) => n + d.bytesDone, 0),
    bytesTotal: disks.reduce((n, d) => n + d.bytesTotal, 0),
  };
}

const failure = (d: ExecutionDetail | undefined) => (d?.error ? { Error: d.error, Cause: d.cause ?? '' } : null);

/**
 * One run (a Backup execution): per-VM outcome, and per-disk progress (while it runs; of a
 * finished run too with `withDisks`, as long as the progress objects are kept).
 */
export async function runDetail(runId: string, deps: OperatorDeps, withDisks = true): Promise<RunRow | undefined> {
  const exec = await deps.executions.describe(runId);
  const record = (await deps.catalog.getRun(runId)) as { policyId?: string; vms?: VmOutcome[]; committed?: number; failed?: number } | undefined;
  if (!exec && !record) return undefined;
  const policyId = record?.policyId ?? (exec?.input ? ((JSON.parse(exec.input) as { policyId?: string }).policyId ?? null) : null);
  const backups = record?.vms ?? (await deps.catalog.backupsOfRun(runId));
  const vms = await Promise.all(backups.map((b) => runVm({ ...b, status: b.status, error: b.error }, deps, withDisks)));
  return {
    runId,
    policyId,
    status: exec?.status ?? 'SUCCEEDED',
    startedAt: exec?.startDate ?? '',
    stoppedAt: exec?.stopDate ?? null,
    committed: vms.filter((v) => v.phase === 'committed').length,
    failed: vms.filter((v) => v.phase === 'failed').length,
    error: failure(exec),
    vms: vms.sort((a, b) => a.vmId.localeCompare(b.vmId)),
  };
}

/** The newest runs, newest first. */
export async function listRuns(deps: OperatorDeps, max = 20): Promise<RunRow[]> {
  const runs = await deps.executions.list(max);
  // Disks only of the runs still running: a listing of finished runs costs no S3 request.
  const rows = await Promise.all(runs.map((r) => runDetail(r.name, deps, false)));
  return rows.filter((r): r is RunRow => !!r);
}

export async function listPolicies(deps: Pick<OperatorDeps, 'catalog'>): Promise<PolicyRow[]> {
  const { policies, byVm } = await policiesByVm(deps);
  const count = (id: string) => [...byVm.values()].filter((ps) => ps.some((p) => p.policyId === id)).length;
  return policies
    .map((p) => ({
      policyId: p.policyId,
      repositoryId: p.repositoryId ?? null,
      bucket: p.bucket,
      vms: count(p.policyId),
      rpoHours: p.rpoHours ?? null,
      replicateTo: p.replicateTo?.repositoryId ?? null,
      retention: p.retention ?? null,
    }))
    .sort((a, b) => a.policyId.localeCompare(b.policyId));
}

/** The backups complete in each policy's DR repository, per VM newest first. */
export async function listRestorePoints(deps: OperatorDeps, vmId?: string): Promise<RestorePointRow[]> {
  const now = deps.now();
  const { policies, byVm } = await policiesByVm(deps);
  const rows: RestorePointRow[] = [];
  for (const p of policies) {
    if (!p.replicateTo) continue;
    const vms = [...byVm].filter(([id, ps]) => ps.includes(p) && (!vmId || id === vmId)).map(([id]) => id);
    for (const id of vms) {
      for (const r of await deps.recovery.listReplicas(id, p.replicateTo.bucket)) {
        rows.push({
          vmId: id,
          policyId: p.policyId,
          repositoryId: p.replicateTo.repositoryId,
          bucket: r.bucket,
          backupId: r.backupId,
          replicatedAt: r.replicatedAt,
          ageHours: round(hours(now, r.replicatedAt)),
        });
      }
    }
  }
  return rows;
}
