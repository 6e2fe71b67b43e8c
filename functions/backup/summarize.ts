/**
 * Summarize: one run record with per-VM outcomes and totals, and the run's metrics: how
 * many VMs committed and failed, bytes stored, storage requests the movers retried, and the age of the policy's oldest newest
 * recovery point (`OldestRecoveryPointAgeHours`), which the RPO alarm watches.
 */
import type { Metrics } from '@aws-lambda-powertools/metrics';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { summarizeInput, type SummarizeInput } from '../../contracts/backup-steps.ts';
import type { VmOutcome } from '../../contracts/jobs.ts';
import type { Backup, Catalog } from '../catalog/catalog.ts';
import type { RunCatalog } from '../catalog/run-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { summaryMetrics } from '../../contracts/metric-names.ts';
import { SUMMARY_VMS_LISTED, type RunSummary } from '../../contracts/workflow-outputs.ts';

/** The error of a VM whose execution ended without recording an outcome (a quota broken inside it, or stopped). */
export const NO_OUTCOME = 'Lifeboat.NoOutcome';

/** A run's summary, built from its VMs' backup records as they are read, a page at a time. */
export class RunTally {
  private readonly totals = {
    bytesScanned: 0,
    bytesRead: 0,
    bytesNew: 0,
    bytesZero: 0,
    bytesUnallocated: 0,
    bytesUnchanged: 0,
    bytesUploaded: 0,
    bytesStored: 0,
    chunks: 0,
    zeroChunks: 0,
    parentChunks: 0,
    dedupedChunks: 0,
    uploadedChunks: 0,
    storageRetries: 0,
  };
  private readonly failedVms: VmOutcome[] = [];
  private readonly committedVms: VmOutcome[] = [];
  private committed = 0;
  private failed = 0;

  /** Adds one VM's backup record (a record still `running` counts as failed: its execution ended without an outcome). */
  add(b: Backup): void {
    if (b.status !== 'committed') {
      this.failed++;
      const error = b.error ?? {
        Error: NO_OUTCOME,
        Cause: `the execution backing up VM ${b.vmId} ended without recording an outcome for backup ${b.backupId}; see the run's Map Run for that VM's execution`,
      };
      if (this.failedVms.length < SUMMARY_VMS_LISTED) this.failedVms.push({ vmId: b.vmId, backupId: b.backupId, status: 'failed', error });
      return;
    }
    this.committed++;
    for (const d of b.disks ?? []) for (const key of Object.keys(this.totals) as (keyof typeof this.totals)[]) this.totals[key] += d.stats[key] ?? 0;
    if (this.committedVms.length >= SUMMARY_VMS_LISTED) return;
    const fullReads = (b.disks ?? []).flatMap((d) => (d.changeTracking?.used === false ? [{ diskId: d.diskId, reason: d.changeTracking.reason }] : []));
    this.committedVms.push({
      vmId: b.vmId,
      backupId: b.backupId,
      status: 'committed',
      ...(b.consistency ? { consistency: b.consistency } : {}),
      ...(fullReads.length ? { fullReads } : {}),
    });
  }

  summary(runId: string, policyId: string): RunSummary {
    const vms = [...this.failedVms, ...this.committedVms].slice(0, SUMMARY_VMS_LISTED);
    return {
      runId,
      policyId,
      vms,
      vmsNotListed: this.committed + this.failed - vms.length,
      committed: this.committed,
      failed: this.failed,
      totals: { ...this.totals },
    };
  }
}

/** The summary of a run whose VMs' backup records are `backups`. */
export function summarizeRun(input: SummarizeInput & { backups: Backup[] }): RunSummary {
  const tally = new RunTally();
  for (const b of input.backups) tally.add(b);
  return tally.summary(input.runId, input.policyId);
}

type SummarizeDeps = { catalog: Pick<Catalog, 'putRun' | 'failBackup'>; runs: Pick<RunCatalog, 'members' | 'backups'>; now: () => Date };

/**
 * Reads the run's VMs from the catalog a page at a time (never from a payload), fails the
 * backups their executions left `running`, and records the run. Returns the summary and
 * the VM ids (for the recovery point ages).
 */
export async function summarize(input: SummarizeInput, deps: SummarizeDeps): Promise<{ summary: RunSummary; vmIds: string[] }> {
  const tally = new RunTally();
  const vmIds: string[] = [];
  for await (const page of deps.runs.members(input.runId)) {
    for (const b of await deps.runs.backups(page)) {
      vmIds.push(b.vmId);
      if (b.status === 'running') {
        const error = {
          Error: NO_OUTCOME,
          Cause: `the execution backing up VM ${b.vmId} ended without recording an outcome for backup ${b.backupId} (run ${input.runId}); see the run's Map Run for that VM's execution`,
        };
        await deps.catalog.failBackup(b.vmId, b.backupId, error);
        tally.add({ ...b, status: 'failed', error });
      } else tally.add(b);
    }
  }
  const summary = tally.summary(input.runId, input.policyId);
  await deps.catalog.putRun(input.runId, { ...summary, finishedAt: deps.now().toISOString() });
  return { summary, vmIds };
}

/**
 * Hours since each VM's newest committed backup. A VM that never committed one counts
 * from its first backup attempt: it has been unprotected since then.
 */
export async function recoveryPointAgeHours(vmIds: string[], deps: { catalog: Catalog; now: () => Date }): Promise<Record<string, number>> {
  const now = deps.now().getTime();
  const ages: Record<string, number> = {};
  for (const vmId of new Set(vmIds)) {
    const backups = await deps.catalog.listBackups(vmId); // newest first
    const newest = backups.find((b) => b.status === 'committed');
    const since = newest?.committedAt ?? backups.at(-1)?.startedAt;
    if (since) ages[vmId] = Math.max(0, (now - Date.parse(since)) / 3600_000);
  }
  return ages;
}

export { summaryMetrics };

/** Adds a run's metrics to `metrics`; they are flushed as EMF when the invocation ends. */
export function publishRunMetrics(metrics: Metrics, summary: RunSummary, ages: Record<string, number>): void {
  metrics.addDimension('policyId', summary.policyId);
  metrics.addMetric(summaryMetrics.vmsCommitted, MetricUnit.Count, summary.committed);
  metrics.addMetric(summaryMetrics.vmsFailed, MetricUnit.Count, summary.failed);
  metrics.addMetric(summaryMetrics.bytesStored, MetricUnit.Bytes, summary.totals.bytesStored);
  metrics.addMetric(summaryMetrics.storageRetries, MetricUnit.Count, summary.totals.storageRetries ?? 0);
  const oldest = Math.max(...Object.values(ages));
  if (Number.isFinite(oldest)) metrics.addMetric(summaryMetrics.oldestRecoveryPointAgeHours, MetricUnit.Count, Math.round(oldest * 100) / 100);
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Summarize', summarizeInput, async (input, { metrics }) => {
      const deps = { catalog: c.catalog, runs: c.runs, now: () => new Date() };
      const { summary, vmIds } = await summarize(input, deps);
      publishRunMetrics(metrics, summary, await recoveryPointAgeHours(vmIds, deps));
      return summary;
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
