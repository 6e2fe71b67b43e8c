/**
 * Summarize: one run record with per-VM outcomes and totals, and the run's metrics: how
 * many VMs committed and failed, bytes stored, storage requests the movers retried, and the age of the policy's oldest newest
 * recovery point (`OldestRecoveryPointAgeHours`), which the RPO alarm watches.
 */
import type { Metrics } from '@aws-lambda-powertools/metrics';
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { z } from 'zod';
import type { Consistency, DiskResult, VmOutcome } from '../../contracts/jobs.ts';
import { vmGoneMessage, type GoneVm } from '../../contracts/discovery.ts';
import { VmGone } from '../../contracts/errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { summaryMetrics } from '../../contracts/metric-names.ts';
import { diskResult, vmOutcome } from '../../contracts/schemas.ts';
import type { RunSummary } from '../../contracts/workflow-outputs.ts';

/** What each VM iteration leaves behind: a committed job or a failure outcome. */
export type IterationResult = { vmId: string; backupId: string; disks?: DiskResult[]; commit?: unknown; outcome?: VmOutcome };

export interface SummarizeInput {
  runId: string;
  policyId: string;
  results: IterationResult[];
  /** VMs Plan did not back up because discovery found them gone: each counts as failed (`Source.VmGone`). */
  gone?: GoneVm[] | undefined;
}

export function summarizeRun(input: SummarizeInput): RunSummary {
  const totals = { bytesScanned: 0, bytesRead: 0, bytesNew: 0, bytesZero: 0, bytesUnallocated: 0, bytesUnchanged: 0, bytesUploaded: 0, bytesStored: 0, chunks: 0, zeroChunks: 0, parentChunks: 0, dedupedChunks: 0, uploadedChunks: 0, storageRetries: 0 };
  const vms: VmOutcome[] = input.results.map((r) => {
    if (r.outcome) return r.outcome;
    for (const d of r.disks ?? []) for (const key of Object.keys(totals) as (keyof typeof totals)[]) totals[key] += d.stats[key] ?? 0;
    const fullReads = (r.disks ?? []).flatMap((d) => (d.changeTracking?.used === false ? [{ diskId: d.diskId, reason: d.changeTracking.reason }] : []));
    const consistency = (r.commit as { consistency?: Consistency } | undefined)?.consistency;
    return { vmId: r.vmId, backupId: r.backupId, status: 'committed', ...(consistency ? { consistency } : {}), ...(fullReads.length ? { fullReads } : {}) };
  });
  for (const g of input.gone ?? []) vms.push({ vmId: g.vmId, backupId: g.backupId, status: 'failed', error: { Error: VmGone.code, Cause: vmGoneMessage(g.vmId, g.host, g.goneSince) } });
  const committed = vms.filter((v) => v.status === 'committed').length;
  return { runId: input.runId, policyId: input.policyId, vms, committed, failed: vms.length - committed, totals };
}

export async function summarize(input: SummarizeInput, deps: { catalog: Catalog; now: () => Date }): Promise<RunSummary> {
  const summary = summarizeRun(input);
  await deps.catalog.putRun(input.runId, { ...summary, finishedAt: deps.now().toISOString() });
  return summary;
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

export const summarizeInput: z.ZodType<SummarizeInput> = z.looseObject({
  runId: z.string().min(1),
  policyId: z.string().min(1),
  results: z.array(z.looseObject({ vmId: z.string(), backupId: z.string(), disks: z.array(diskResult).optional(), commit: z.unknown().optional(), outcome: vmOutcome.optional() })),
  gone: z.array(z.looseObject({ vmId: z.string().min(1), backupId: z.string().min(1), host: z.string(), goneSince: z.string() })).optional(),
});

export const handler = lambdaHandler('Summarize', summarizeInput, async (input, { metrics }) => {
  const deps = { catalog: clients().catalog, now: () => new Date() };
  const summary = await summarize(input, deps);
  publishRunMetrics(metrics, summary, await recoveryPointAgeHours(summary.vms.map((v) => v.vmId), deps));
  return summary;
});
