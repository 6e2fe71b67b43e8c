/** Summarize: one run record with per-VM outcomes and totals. */
import middy from '@middy/core';
import type { DiskResult, TransferStats, VmOutcome } from '../core/jobs.ts';
import type { Catalog } from './catalog/catalog.ts';
import { clients } from './commons/clients.ts';

/** What each VM iteration leaves behind: a committed job or a failure outcome. */
export type IterationResult = { vmId: string; backupId: string; disks?: DiskResult[]; commit?: unknown; outcome?: VmOutcome };

export interface SummarizeInput {
  runId: string;
  policyId: string;
  results: IterationResult[];
}

export interface RunSummary {
  runId: string;
  policyId: string;
  vms: VmOutcome[];
  committed: number;
  failed: number;
  totals: Omit<TransferStats, 'seconds'>;
}

export function summarizeRun(input: SummarizeInput): RunSummary {
  const totals = { bytesScanned: 0, bytesNew: 0, bytesZero: 0, bytesUploaded: 0, bytesStored: 0, chunks: 0, zeroChunks: 0, parentChunks: 0, dedupedChunks: 0, uploadedChunks: 0 };
  const vms: VmOutcome[] = input.results.map((r) => {
    if (r.outcome) return r.outcome;
    for (const d of r.disks ?? []) for (const key of Object.keys(totals) as (keyof typeof totals)[]) totals[key] += d.stats[key];
    return { vmId: r.vmId, backupId: r.backupId, status: 'committed' };
  });
  const committed = vms.filter((v) => v.status === 'committed').length;
  return { runId: input.runId, policyId: input.policyId, vms, committed, failed: vms.length - committed, totals };
}

export async function summarize(input: SummarizeInput, deps: { catalog: Catalog; now: () => Date }): Promise<RunSummary> {
  const summary = summarizeRun(input);
  await deps.catalog.putRun(input.runId, { ...summary, finishedAt: deps.now().toISOString() });
  return summary;
}

export const handler = middy<SummarizeInput, RunSummary>().handler((input) => summarize(input, { catalog: clients().catalog, now: () => new Date() }));
