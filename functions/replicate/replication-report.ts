/**
 * ReportReplication: the DR recovery point of a replicating policy as a metric. For each
 * VM of the policy, the newest backup with a verified copy in the DR repository (its
 * replica record, written by RecordReplication after VerifyReplica); the policy's
 * `DrRecoveryPointAgeHours` is the oldest of those, in hours since that backup started.
 * A VM with backups but no DR copy at all counts from its oldest backup. Runs after every
 * Backup run of the policy (with `started`: whether its replication could be started,
 * published as `ReplicationStartFailed`) and at the end of each ReplicatePolicy, so the
 * metric keeps coming while replication is failing. The DrPastRpo and
 * ReplicationNotStarted alarms (cdk/lib/monitoring.ts) watch them.
 */
import { MetricUnit, type Metrics } from '@aws-lambda-powertools/metrics';
import { z } from 'zod';
import type { Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { replicationMetrics } from '../../contracts/metric-names.ts';
import { policyVms } from '../recovery/backups.ts';

export const reportReplicationInput = z.looseObject({
  policyId: z.string().min(1),
  /** Set after a Backup run: whether StartReplication started (or found started) the run's replication. */
  started: z.boolean().optional(),
});

export interface ReplicationReport {
  policyId: string;
  /** The DR repository's bucket, or null when the policy does not replicate. */
  drBucket: string | null;
  /**
   * Hours since the newest DR recovery point, per VM (VMs without any backup are left out):
   * the {@link REPORTED_VMS} furthest behind, so the report stays a small payload whatever the fleet.
   */
  vms: Record<string, number>;
  /** VMs with a backup, listed in `vms` or not. */
  vmCount: number;
  /** The oldest of them; null when no VM has a backup. */
  drRecoveryPointAgeHours: number | null;
  replicationStartFailed: boolean | null;
}

/** VMs listed by name in a report at most (those furthest behind). */
export const REPORTED_VMS = 100;

const hoursSince = (now: Date, iso: string) => Math.max(0, (now.getTime() - Date.parse(iso)) / 3600_000);

export async function reportReplication(
  input: z.output<typeof reportReplicationInput>,
  deps: { catalog: Catalog; recovery: Pick<RecoveryCatalog, 'newestReplica'>; now: () => Date },
): Promise<ReplicationReport> {
  const report: ReplicationReport = {
    policyId: input.policyId,
    drBucket: null,
    vms: {},
    vmCount: 0,
    drRecoveryPointAgeHours: null,
    replicationStartFailed: input.started === undefined ? null : !input.started,
  };
  const policy = await deps.catalog.getPolicy(input.policyId);
  if (!policy?.replicateTo) return report;
  report.drBucket = policy.replicateTo.bucket;
  const now = deps.now();
  const ages: [string, number][] = [];
  for (const vmId of await policyVms(deps.catalog, policy)) {
    const replica = await deps.recovery.newestReplica(vmId, policy.replicateTo.bucket);
    if (replica) {
      const backup = await deps.catalog.getBackup(vmId, replica.backupId);
      ages.push([vmId, hoursSince(now, backup?.startedAt ?? replica.replicatedAt)]);
      continue;
    }
    const oldest = (await deps.catalog.listBackups(vmId)).at(-1);
    if (oldest) ages.push([vmId, hoursSince(now, oldest.startedAt)]);
  }
  ages.sort((a, b) => b[1] - a[1]);
  report.vms = Object.fromEntries(ages.slice(0, REPORTED_VMS));
  report.vmCount = ages.length;
  if (ages.length) report.drRecoveryPointAgeHours = Math.round(ages[0]![1] * 100) / 100;
  return report;
}

/** Adds the report's metrics; flushed as EMF when the invocation ends. */
export function publishReplicationMetrics(metrics: Metrics, report: ReplicationReport): void {
  if (report.drBucket === null) return;
  metrics.addDimension('policyId', report.policyId);
  if (report.drRecoveryPointAgeHours !== null) metrics.addMetric(replicationMetrics.drRecoveryPointAgeHours, MetricUnit.Count, report.drRecoveryPointAgeHours);
  if (report.replicationStartFailed !== null)
    metrics.addMetric(replicationMetrics.replicationStartFailed, MetricUnit.Count, report.replicationStartFailed ? 1 : 0);
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('ReportReplication', reportReplicationInput, async (input, { metrics }) => {
      const report = await reportReplication(input, { catalog: c.catalog, recovery: c.recovery, now: () => new Date() });
      publishReplicationMetrics(metrics, report);
      return report;
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
