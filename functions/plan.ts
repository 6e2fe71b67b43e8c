/** Plan: turn `{ policyId }` into one work item per VM, each with its parent backup. */
import middy from '@middy/core';
import { PolicyNotFound } from '../core/errors.ts';
import { keys } from '../core/format.ts';
import { MIN_MOVER_VERSION } from '../core/version.ts';
import type { VmJob } from '../core/jobs.ts';
import type { Catalog } from './catalog/catalog.ts';
import { clients } from './commons/clients.ts';

export interface PlanInput {
  policyId: string;
  runId: string;
}

export interface PlanOutput {
  runId: string;
  policyId: string;
  vms: VmJob[];
}

/** Backup ids sort by time: the catalog lists a VM's backups newest first. */
export function newBackupId(now: Date, runId: string): string {
  return `${now.toISOString().replace(/[-:.]/g, '')}-${runId.slice(-8)}`;
}

export async function plan(input: PlanInput, deps: { catalog: Catalog; now: () => Date }): Promise<PlanOutput> {
  if (typeof input?.policyId !== 'string' || !input.policyId) throw new PolicyNotFound(String(input?.policyId));
  const policy = await deps.catalog.getPolicy(input.policyId);
  if (!policy) throw new PolicyNotFound(input.policyId);
  const now = deps.now();
  const backupId = newBackupId(now, input.runId);
  const vms: VmJob[] = [];
  for (const vmId of policy.vmIds) {
    const vm = await deps.catalog.getVm(vmId);
    if (!vm) throw new Error(`policy '${policy.policyId}' names VM '${vmId}', which is not in the inventory`);
    const parent = await deps.catalog.latestCommitted(vmId);
    const job: VmJob = {
      runId: input.runId, policyId: policy.policyId, backupId, vmId, host: vm.host, moverGroup: vm.moverGroup, source: vm.source,
      repository: { bucket: policy.bucket, chunkSize: policy.chunkSize },
      parentBackupId: parent?.backupId ?? null,
      parentManifests: Object.fromEntries((parent?.disks ?? []).map((d) => [d.diskId, keys.manifest(parent!.backupId, d.diskId)])),
      slotLimit: policy.slotLimit, slot: null, snapshot: null, minMoverVersion: MIN_MOVER_VERSION,
    };
    await deps.catalog.startBackup({ vmId, backupId, runId: input.runId, policyId: policy.policyId, status: 'running', parentBackupId: job.parentBackupId, startedAt: now.toISOString() });
    vms.push(job);
  }
  return { runId: input.runId, policyId: policy.policyId, vms };
}

export const handler = middy<PlanInput, PlanOutput>().handler((input) => plan(input, { catalog: clients().catalog, now: () => new Date() }));
