/**
 * Plan: turn `{ policyId, vmIds? }` into one work item per VM, each with its parent backup, the
 * mover group that serves its host, and the concurrency scopes (host, datastores) it
 * counts against. Hosts, groups and limits come from the configuration (SyncConfig).
 * Each job also carries the repository's quarantined chunk ids (`healChunks`), which the
 * mover uploads again even where the parent manifest lists them. A policy selects VMs by
 * id, and by host filtered by name pattern and tag; a selected VM that discovery marked
 * gone is not backed up but reported (`gone`), so the run counts it as failed. `vmIds`
 * narrows a run to some of the policy's VMs (a failback's final backup of one DR VM); a VM
 * the policy does not select is refused by name.
 */
import { z } from 'zod';
import { createHash } from 'node:crypto';
import { matchesNamePattern } from '../../core/config.ts';
import { vmGoneMessage, type GoneVm } from '../../contracts/discovery.ts';
import { BackupRequestInvalid, PolicyNotFound, VmGone } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import { minMoverVersion } from '../../core/version.ts';
import { mapLimit } from '../../core/concurrency.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { SlotScope, VmJob } from '../../contracts/jobs.ts';
import { locationKey } from '../../contracts/endpoints.ts';
import { MAX_HEAL_CHUNKS_PER_JOB } from '../../repository/quarantine.ts';
import type { Catalog, Host, Policy, Vm } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import type { RunCatalog } from '../catalog/run-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { runStore } from '../commons/map-run.ts';

export interface PlanInput {
  policyId: string;
  runId: string;
  /** Only these of the policy's VMs (absent: all it selects). */
  vmIds?: string[] | undefined;
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
  const hosts = new Map<string, Promise<Host | undefined>>();
  // Chunks a deep verification moved aside: every job re-checks them (repository/quarantine.ts).
  const healChunks = (await deps.recovery?.quarantinedChunks(locationKey(policy), MAX_HEAL_CHUNKS_PER_JOB)) ?? [];
  // A few VMs' catalog reads and writes at once: a policy of thousands of VMs plans in seconds, not minutes.
  const planned = await mapLimit(
    onlyRequested(await selectVms(policy, deps.catalog), policy.policyId, input.vmIds),
    PLAN_CONCURRENCY,
    async (vm): Promise<VmJob | GoneVm> => {
      const vmId = vm.vmId;
      if (vm.gone) return recordGone(vm, policy, input.runId, now, deps.catalog);
      if (!hosts.has(vm.host)) hosts.set(vm.host, deps.catalog.getHost(vm.host));
      const host = await hosts.get(vm.host);
      if (!host)
        throw new Error(`VM '${vmId}' is on host '${vm.host}', which no mover group serves: add the host to a mover group's "hosts" in the configuration`);
      const backupId = newBackupId(now, input.runId, vmId);
      const parent = await deps.catalog.latestParent(vmId);
      const job: VmJob = {
        runId: input.runId,
        policyId: policy.policyId,
        backupId,
        vmId,
        host: vm.host,
        moverGroup: host.moverGroup,
        source: vm.source,
        repository: { bucket: policy.bucket, chunkSize: policy.chunkSize, ...(policy.endpoint ? { endpoint: policy.endpoint } : {}) },
        parentBackupId: parent?.backupId ?? null,
        parentCheckpoint: parent?.checkpoint ?? null,
        ...(policy.quiesce ? { quiesce: policy.quiesce } : {}),
        ...(host.hypervisor ? { hypervisor: host.hypervisor } : {}),
        parentManifests: Object.fromEntries((parent?.disks ?? []).map((d) => [d.diskId, objectKeys.manifest(parent!.backupId, d.diskId)])),
        slotScopes: slotScopes(vm, host, policy),
        slot: null,
        snapshot: null,
        minMoverVersion: minMoverVersion(),
        segmentBytes: policy.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
        ...(healChunks.length ? { healChunks } : {}),
      };
      await deps.catalog.startBackup({
        vmId,
        backupId,
        runId: input.runId,
        policyId: policy.policyId,
        status: 'running',
        parentBackupId: job.parentBackupId,
        startedAt: now.toISOString(),
      });
      return job;
    },
  );
  const vms = interleaveByHost(planned.filter((p): p is VmJob => 'moverGroup' in p));
  const gone = planned.filter((p): p is GoneVm => !('moverGroup' in p));
  return { runId: input.runId, policyId: policy.policyId, replicateTo: policy.replicateTo?.repositoryId ?? null, vms, gone };
}

/**
 * The jobs spread over mover groups and hosts, round after round, each host giving as many
 * VMs per round as it has backup slots: the hosts' order in the run's host list (the
 * BackupHosts Map starts them in it, so the first hosts admitted span the groups).
 */
export function interleaveByHost(jobs: VmJob[]): VmJob[] {
  const byHost = Map.groupBy(jobs, (j) => j.host);
  const groups = Map.groupBy(byHost.keys(), (h) => byHost.get(h)![0]!.moverGroup);
  // Hosts in turn across groups: one of each group, then the next of each, ...
  const hosts: string[] = [];
  for (let i = 0; hosts.length < byHost.size; i++) for (const list of groups.values()) if (list[i] !== undefined) hosts.push(list[i]!);
  const out: VmJob[] = [];
  while (out.length < jobs.length) {
    for (const h of hosts) {
      const line = byHost.get(h)!;
      out.push(...line.splice(0, Math.max(1, line[0]?.slotScopes[0]?.limit ?? 1)));
    }
  }
  return out;
}

/** The selected VMs narrowed to `vmIds` (when given); a VM the policy does not select is refused, naming what it does. */
export function onlyRequested(selected: Vm[], policyId: string, vmIds: string[] | undefined): Vm[] {
  if (!vmIds) return selected;
  const ids = new Set(selected.map((v) => v.vmId));
  const unknown = vmIds.filter((id) => !ids.has(id));
  if (unknown.length)
    throw new BackupRequestInvalid(
      `policy '${policyId}' does not select VM(s) ${unknown.map((id) => `'${id}'`).join(', ')} (it selects ${[...ids].map((id) => `'${id}'`).join(', ') || 'none'}): name VMs of the policy in "vmIds", or change the policy's "vms"`,
    );
  const wanted = new Set(vmIds);
  return selected.filter((v) => wanted.has(v.vmId));
}

/** VMs planned at once. */
const PLAN_CONCURRENCY = 16;

/** A list of the run in the stack's bucket, read by a Distributed Map: where, and how many items. */
export interface RunList {
  bucket: string;
  key: string;
  count: number;
}

/** One host's line of the run: its VM jobs (read by the host's BackupVms Map) and how many run at once (its backup slots). */
export interface HostLine {
  host: string;
  moverGroup: string;
  slots: number;
  vmList: RunList;
}

/** Plan's answer to the workflow: where the run's lists are, never the jobs themselves (a payload is capped at 256 KiB). */
export interface PlannedRun {
  runId: string;
  policyId: string;
  replicateTo: string | null;
  /** The run's hosts as one JSON array of {@link HostLine}, read by the BackupHosts Map; `concurrency`: hosts at once. */
  hostList: RunList & { concurrency: number };
  /** How many VM jobs the run holds over all hosts. */
  vms: number;
  /** How many selected VMs were gone (recorded failed; Summarize reports them). */
  gone: number;
}

/** Where a run's lists are kept (`runs/`, beside the Maps' results): the hosts' list, and each host's VM jobs. */
export const runListKey = (policyId: string, runId: string, host?: string) =>
  `runs/vms/${encodeURIComponent(policyId)}/${encodeURIComponent(runId)}${host === undefined ? '' : `/${encodeURIComponent(host)}`}.json`;

/**
 * The run's jobs as host lines, hosts in the interleaved order, and how many hosts run at
 * once: as many as fit in `vmConcurrency` backups by their slots (at least one), so the
 * run's VMs at once stay within it while each admitted host runs exactly its slots' worth.
 */
export function hostLines(
  vms: VmJob[],
  vmConcurrency: number,
): { lines: { host: string; moverGroup: string; slots: number; jobs: VmJob[] }[]; concurrency: number } {
  const byHost = Map.groupBy(vms, (j) => j.host);
  const lines = [...byHost.values()].map((jobs) => ({
    host: jobs[0]!.host,
    moverGroup: jobs[0]!.moverGroup,
    slots: Math.max(1, jobs[0]!.slotScopes[0]?.limit ?? 1),
    jobs,
  }));
  let concurrency = 0;
  for (let sum = 0; concurrency < lines.length && (concurrency === 0 || sum + lines[concurrency]!.slots <= vmConcurrency); concurrency++)
    sum += lines[concurrency]!.slots;
  return { lines, concurrency: Math.max(1, concurrency) };
}

/**
 * Writes a plan for the workflow: each host's VM jobs as one object for its BackupVms Map,
 * the hosts' list for the BackupHosts Map, and the run's members (backed-up and gone VMs)
 * in the catalog for Summarize.
 */
export async function publishPlan(
  out: PlanOutput,
  deps: { runs: Pick<RunCatalog, 'addMembers'>; store: ObjectStore; bucket: string; vmConcurrency?: number | undefined },
): Promise<PlannedRun> {
  await deps.runs.addMembers(
    out.runId,
    [...out.vms, ...out.gone].map((v) => ({ vmId: v.vmId, backupId: v.backupId })),
  );
  const { lines, concurrency } = hostLines(out.vms, deps.vmConcurrency ?? DEFAULT_VM_CONCURRENCY);
  const hosts: HostLine[] = await mapLimit(lines, PLAN_CONCURRENCY, async (l) => {
    const key = runListKey(out.policyId, out.runId, l.host);
    await deps.store.put(key, Buffer.from(JSON.stringify(l.jobs)));
    return { host: l.host, moverGroup: l.moverGroup, slots: l.slots, vmList: { bucket: deps.bucket, key, count: l.jobs.length } };
  });
  const key = runListKey(out.policyId, out.runId);
  await deps.store.put(key, Buffer.from(JSON.stringify(hosts)));
  return {
    runId: out.runId,
    policyId: out.policyId,
    replicateTo: out.replicateTo,
    hostList: { bucket: deps.bucket, key, count: hosts.length, concurrency },
    vms: out.vms.length,
    gone: out.gone.length,
  };
}

/** VMs backed up at once in one run when the workflow does not say (as cdk/lib/backup-workflow.ts's default). */
export const DEFAULT_VM_CONCURRENCY = 8;

/** A gone VM is not backed up: its backup of this run is recorded failed (VmGone), and the run reports it. */
async function recordGone(vm: Vm, policy: Policy, runId: string, now: Date, catalog: Catalog): Promise<GoneVm> {
  const backupId = newBackupId(now, runId, vm.vmId);
  const goneSince = vm.goneSince ?? 'unknown';
  const error = { Error: VmGone.code, Cause: vmGoneMessage(vm.vmId, vm.host, goneSince) };
  await catalog.startBackup({
    vmId: vm.vmId,
    backupId,
    runId,
    policyId: policy.policyId,
    status: 'failed',
    parentBackupId: null,
    startedAt: now.toISOString(),
    error,
  });
  return { vmId: vm.vmId, backupId, host: vm.host, goneSince };
}

/** Plan's input: the run, and the Backup execution's input (`request`: its policy and, optionally, which of its VMs). */
export const planInput = z
  .looseObject({
    runId: z.string().min(1),
    request: z.looseObject({ policyId: z.string().min(1), vmIds: z.array(z.string().min(1)).min(1, 'must name at least one VM').optional() }),
    vmConcurrency: z.number().int().positive().optional(),
  })
  .transform((i): PlanInput & { vmConcurrency?: number | undefined } => ({
    runId: i.runId,
    policyId: i.request.policyId,
    vmIds: i.request.vmIds,
    vmConcurrency: i.vmConcurrency,
  }));

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Plan', planInput, async (input) =>
      publishPlan(await plan(input, { catalog: c.catalog, recovery: c.recovery, now: () => new Date() }), {
        runs: c.runs,
        ...runStore(c, 'Backup'),
        vmConcurrency: input.vmConcurrency,
      }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
