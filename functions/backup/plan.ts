/**
 * Plan: turn `{ policyId }` into one work item per VM, each with its parent backup, the
 * mover group that serves its host, and the concurrency scopes (host, datastores) it
 * counts against. Hosts, groups and limits come from the configuration (SyncConfig).
 * Each job also carries the repository's quarantined chunk ids (`healChunks`), which the
 * mover uploads again even where the parent manifest lists them. A policy selects VMs by
 * id, and by host filtered by name pattern and tag; a selected VM that discovery marked
 * gone is not backed up but reported (`gone`), so the run counts it as failed.
 */
import { z } from 'zod';
import { createHash } from 'node:crypto';
import { matchesNamePattern } from '../../core/config.ts';
import { vmGoneMessage, type GoneVm } from '../../contracts/discovery.ts';
import { PolicyNotFound, VmGone } from '../../contracts/errors.ts';
import { keys } from '../../repository/format.ts';
import { minMoverVersion } from '../../core/version.ts';
import type { SlotScope, VmJob } from '../../contracts/jobs.ts';
import { locationKey } from '../../contracts/endpoints.ts';
import { MAX_HEAL_CHUNKS_PER_JOB } from '../../repository/quarantine.ts';
import type { Catalog, Host, Policy, Vm } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

export interface PlanInput {
  policyId: string;
  runId: string;
}

export interface PlanOutput {
  runId: string;
  policyId: string;
  /** The DR repository the policy replicates to (the run starts its replication when it commits a backup), or null. */
  replicateTo: string | null;
  vms: VmJob[];
  /** Selected VMs the last discovery did not find on their host: not backed up, reported failed by Summarize (`Source.VmGone`). */
  gone: GoneVm[];
}


/** Disks above this size are transferred in segments by several movers at once (config: policies[].segmentSizeGiB). */
export const DEFAULT_SEGMENT_BYTES = 64 * 1024 ** 3;

/**
 * Backup ids sort by time (the catalog lists a VM's backups newest first) and are unique
 * per VM: the repository keys a backup's manifests and VM config by backup id alone, so
 * two VMs of one run must never share one. The VM's part is a hash: any VM id is safe in
 * an object key.
 */
export function newBackupId(now: Date, runId: string, vmId: string): string {
  const vm = createHash('sha256').update(vmId).digest('hex').slice(0, 8);
  return `${now.toISOString().replace(/[-:.]/g, '')}-${runId.slice(-8)}-${vm}`;
}

/** Whether a VM of the policy's hosts passes its filters: a name pattern (if any) matching its name, any of its tags (if any). */
export function matchesPolicy(vm: Vm, policy: Pick<Policy, 'names' | 'tags'>): boolean {
  const name = vm.name ?? vm.vmId;
  if (policy.names?.length && !policy.names.some((p) => matchesNamePattern(name, p))) return false;
  if (policy.tags?.length && !policy.tags.some((t) => vm.tags?.includes(t))) return false;
  return true;
}

/** The policy's VMs: those named by id, then those on its hosts that pass its name and tag filters, each once. */
export async function selectVms(policy: Policy, catalog: Pick<Catalog, 'getVm' | 'vmsOnHost'>): Promise<Vm[]> {
  const selected = new Map<string, Vm>();
  for (const vmId of policy.vmIds) {
    const vm = await catalog.getVm(vmId);
    if (!vm) throw new Error(`policy '${policy.policyId}' names VM '${vmId}', which is not in the inventory`);
    selected.set(vmId, vm);
  }
  for (const host of policy.hosts ?? []) {
    for (const vmId of await catalog.vmsOnHost(host)) {
      if (selected.has(vmId)) continue;
      const vm = await catalog.getVm(vmId);
      if (vm && matchesPolicy(vm, policy)) selected.set(vmId, vm);
    }
  }
  return [...selected.values()];
}

export function slotScopes(vm: Vm, host: Host, policy: Policy): SlotScope[] {
  const scopes: SlotScope[] = [{ scope: `host:${host.hostId}`, limit: Math.min(host.maxConcurrentBackups, policy.slotLimit) }];
  for (const ds of new Set(vm.datastores ?? [])) {
    const limit = host.datastores[ds];
    if (limit !== undefined) scopes.push({ scope: `datastore:${host.hostId}/${ds}`, limit });
  }
  return scopes;
}

export interface PlanDeps {
  catalog: Catalog;
  /** The repositories' quarantined chunks (absent: none are passed on). */
  recovery?: Pick<RecoveryCatalog, 'quarantinedChunks'>;
  now: () => Date;
}

export async function plan(input: PlanInput, deps: PlanDeps): Promise<PlanOutput> {
  if (typeof input?.policyId !== 'string' || !input.policyId) throw new PolicyNotFound(String(input?.policyId));
  const policy = await deps.catalog.getPolicy(input.policyId);
  if (!policy) throw new PolicyNotFound(input.policyId);
  const now = deps.now();
  const vms: VmJob[] = [];
  const hosts = new Map<string, Host | undefined>();
  // Chunks a deep verification moved aside: every job re-checks them (repository/quarantine.ts).
  const healChunks = (await deps.recovery?.quarantinedChunks(locationKey(policy), MAX_HEAL_CHUNKS_PER_JOB)) ?? [];
  const gone: GoneVm[] = [];
  for (const vm of await selectVms(policy, deps.catalog)) {
    const vmId = vm.vmId;
    if (vm.gone) {
      gone.push(await recordGone(vm, policy, input.runId, now, deps.catalog));
      continue;
    }
    if (!hosts.has(vm.host)) hosts.set(vm.host, await deps.catalog.getHost(vm.host));
    const host = hosts.get(vm.host);
    if (!host) throw new Error(`VM '${vmId}' is on host '${vm.host}', which no mover group serves: add the host to a mover group's "hosts" in the configuration`);
    const backupId = newBackupId(now, input.runId, vmId);
    const parent = await deps.catalog.latestParent(vmId);
    const job: VmJob = {
      runId: input.runId, policyId: policy.policyId, backupId, vmId, host: vm.host, moverGroup: host.moverGroup, source: vm.source,
      repository: { bucket: policy.bucket, chunkSize: policy.chunkSize, ...(policy.endpoint ? { endpoint: policy.endpoint } : {}) },
      parentBackupId: parent?.backupId ?? null,
      parentCheckpoint: parent?.checkpoint ?? null,
      ...(policy.quiesce ? { quiesce: policy.quiesce } : {}),
      ...(host.hypervisor ? { hypervisor: host.hypervisor } : {}),
      parentManifests: Object.fromEntries((parent?.disks ?? []).map((d) => [d.diskId, keys.manifest(parent!.backupId, d.diskId)])),
      slotScopes: slotScopes(vm, host, policy), slot: null, snapshot: null, minMoverVersion: minMoverVersion(),
      segmentBytes: policy.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
      ...(healChunks.length ? { healChunks } : {}),
    };
    await deps.catalog.startBackup({ vmId, backupId, runId: input.runId, policyId: policy.policyId, status: 'running', parentBackupId: job.parentBackupId, startedAt: now.toISOString() });
    vms.push(job);
  }
  return { runId: input.runId, policyId: policy.policyId, replicateTo: policy.replicateTo?.repositoryId ?? null, vms, gone };
}

/** A gone VM is not backed up: its backup of this run is recorded failed (VmGone), and the run reports it. */
async function recordGone(vm: Vm, policy: Policy, runId: string, now: Date, catalog: Catalog): Promise<GoneVm> {
  const backupId = newBackupId(now, runId, vm.vmId);
  const goneSince = vm.goneSince ?? 'unknown';
  const error = { Error: VmGone.code, Cause: vmGoneMessage(vm.vmId, vm.host, goneSince) };
  await catalog.startBackup({ vmId: vm.vmId, backupId, runId, policyId: policy.policyId, status: 'failed', parentBackupId: null, startedAt: now.toISOString(), error });
  return { vmId: vm.vmId, backupId, host: vm.host, goneSince };
}

export const planInput = z.looseObject({ policyId: z.string().min(1), runId: z.string().min(1) });

export const handler = lambdaHandler('Plan', planInput, (input) => plan(input, { catalog: clients().catalog, recovery: clients().recovery, now: () => new Date() }));
