/**
 * Alerts an operator must see, derived from what the catalog, the mover records and the
 * Backup workflow's executions hold: a damaged backup (found by DeepVerify), a VM past its
 * RPO, a VM whose replication lags past its DR RPO, a mover group with no live mover, a failed run. Each has a stable id, so a
 * notifier sends each once (local/alert-notifier.ts in the embedded stack; in AWS the
 * same conditions are alarms and EventBridge rules to the alarm topic, cdk/lib/monitoring.ts).
 */
import type { Alert } from '../../contracts/operator.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { listRuns, listVms, type OperatorDeps } from './views.ts';

export interface AlertDeps extends OperatorDeps {
  catalog: OperatorDeps['catalog'] & Pick<Catalog, 'backupsWithStatus'>;
}

const FAILED_RUN = new Set(['FAILED', 'TIMED_OUT', 'ABORTED']);

export async function currentAlerts(deps: AlertDeps): Promise<Alert[]> {
  const alerts: Alert[] = [];
  for (const b of await deps.catalog.backupsWithStatus(['damaged'])) {
    const damage = (b as { damage?: { verifyId: string; foundAt: string; findings: { objectKey: string; reason: string }[] } }).damage;
    const first = damage?.findings[0];
    alerts.push({
      id: `damage:${b.vmId}:${b.backupId}`,
      kind: 'damage',
      subject: `${b.vmId} ${b.backupId}`,
      since: damage?.foundAt ?? b.startedAt,
      message: `backup ${b.backupId} of VM ${b.vmId} is damaged (${damage?.findings.length ?? 0} object(s)${first ? `, first ${first.objectKey}: ${first.reason}` : ''}); found by deep verification ${damage?.verifyId ?? '?'}. Next: run a backup of the VM (it stores the damaged chunks again), then \`lifeboat verify --vm ${b.vmId}\``,
    });
  }
  const vms = await listVms(deps);
  for (const v of vms) {
    // Never backed up counts once a backup was tried and failed (not while the first one runs).
    if (v.rpo !== 'late' && !(v.rpo === 'never' && v.lastBackup?.status === 'failed')) continue;
    const age = v.recoveryPointAgeHours;
    alerts.push({
      id: `rpo:${v.vmId}:${v.lastBackup?.backupId ?? 'none'}`,
      kind: 'rpo',
      subject: v.vmId,
      since: v.lastBackup?.at ?? deps.now().toISOString(),
      message:
        age === null
          ? `VM ${v.vmId} has no committed backup yet (RPO ${v.rpoHours} h; last attempt ${v.lastBackup?.backupId} ${v.lastBackup?.status}). Next: \`lifeboat runs\` for the error, then \`lifeboat backup ${v.policies[0] ?? 'POLICY'}\``
          : `VM ${v.vmId} is past its RPO: its newest backup is ${age.toFixed(1)} h old (RPO ${v.rpoHours} h). Next: \`lifeboat runs\` for failed runs, \`lifeboat backup ${v.policies[0] ?? 'POLICY'}\``,
    });
  }
  for (const v of vms.filter((x) => x.drRpo === 'late')) {
    alerts.push({
      id: `dr-rpo:${v.vmId}:${v.drRestorePoint ?? 'none'}`,
      kind: 'dr-rpo',
      subject: v.vmId,
      since: deps.now().toISOString(),
      message:
        v.drLagHours === null
          ? `VM ${v.vmId} has no restore point at the DR site although it has backups older than its DR RPO (${v.drRpoHours} h). Next: \`lifeboat restore-points --vm ${v.vmId}\`, the policy's ReplicatePolicy executions, the DR mover group (\`lifeboat movers\`) and the DR endpoint`
          : `VM ${v.vmId}'s replication lags: its newest restore point at the DR site is ${v.drLagHours.toFixed(1)} h old (DR RPO ${v.drRpoHours} h). Next: \`lifeboat restore-points --vm ${v.vmId}\`, the policy's ReplicatePolicy executions, the DR mover group (\`lifeboat movers\`) and the DR endpoint`,
    });
  }
  const movers = await deps.movers();
  // Groups that have work: those serving hosts, those replicating a policy's backups, and any a mover announced.
  const replicating = (await deps.catalog.listPolicies()).map((p) => p.replicateTo?.moverGroup).filter((g): g is string => !!g);
  const groups = new Set([...(await deps.catalog.listHosts()).map((h) => h.moverGroup), ...replicating, ...movers.map((m) => m.group)]);
  for (const g of [...groups].sort()) {
    const of = movers.filter((m) => m.group === g);
    if (of.some((m) => m.status === 'live')) continue;
    const seen = of.map((m) => Date.parse(m.seenAt)).sort((a, b) => b - a)[0];
    alerts.push({
      id: `mover-group-silent:${g}:${seen ?? 'never'}`,
      kind: 'mover-group-silent',
      subject: g,
      since: seen ? new Date(seen).toISOString() : deps.now().toISOString(),
      message: of.length
        ? `mover group ${g} has no live mover: ${of.map((m) => `${m.name} ${m.status}, seen ${m.ageSeconds} s ago`).join('; ')}. Its backups and restores wait. Next: check the movers' hosts and \`systemctl status lifeboat-mover\``
        : `mover group ${g} has no mover registered: its hosts' backups cannot run. Next: install a mover for the group (deploy/README)`,
    });
  }
  for (const r of await listRuns(deps, 10)) {
    if (!FAILED_RUN.has(r.status) && r.failed === 0) continue;
    const why = r.error
      ? `${r.error.Error}: ${r.error.Cause}`
      : r.vms
          .filter((v) => v.error)
          .map((v) => `${v.vmId}: ${v.error!.Error}: ${v.error!.Cause}`)
          .join('; ');
    alerts.push({
      id: `run-failed:${r.runId}`,
      kind: 'run-failed',
      subject: r.runId,
      since: r.stoppedAt ?? r.startedAt,
      message: `run ${r.runId} of policy ${r.policyId ?? '?'} ${FAILED_RUN.has(r.status) ? r.status : `failed for ${r.failed} VM(s)`}: ${why.slice(0, 500)}. Next: \`lifeboat runs ${r.runId}\``,
    });
  }
  return alerts;
}
