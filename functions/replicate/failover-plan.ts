/**
 * The FailoverPlan and TestFailover workflows' functions. PlanFailoverPlan checks a plan
 * against the inventory and the DR configuration (every VM known, each with a replica VM,
 * all at one DR site), takes every VM's replica lease (all or none: a replication merging a
 * restore point must not run beside a failover booting it; a busy one is `Replication.Busy`,
 * which the workflow retries) and lays it out as the groups the workflow boots in order;
 * RecordFailoverPlan turns what the DR movers answered into the report: each VM's recovery
 * point and ready time, and the plan's RTO, and records each VM's failover in the catalog
 * (the point a failback later starts from).
 */
import { z } from 'zod';
import {
  failoverPlanRequest,
  failoverReport,
  failoverVmResult,
  type FailoverRecord,
  type FailoverReport,
  type FailoverRun,
  type FailoverVmJob,
  type FailoverVmResult,
} from '../../contracts/dr.ts';
import type { SlotLease } from '../../contracts/jobs.ts';
import { RecoveryRequestInvalid, ReplicaBusy } from '../../contracts/recovery-errors.ts';
import { Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { REPLICA_LEASE_MS, replicaLeaseScope } from './replicate.ts';

const text = z.string().min(1);

export const planFailoverPlanInput = z.object({ runId: text, test: z.boolean(), request: failoverPlanRequest }).strict();

export interface FailoverPlanLayout {
  runId: string;
  plan: string;
  test: boolean;
  moverGroup: string;
  uri: string;
  startedAtMs: number;
  run: FailoverRun;
  /** The plan's VMs' replica leases, held until the run ends (ReleaseReplicaLease, also on its failure paths). */
  lease: SlotLease;
  groups: { index: number; delaySeconds: number; vms: FailoverVmJob[] }[];
}

interface Deps {
  catalog: Catalog;
  recovery: RecoveryCatalog;
  now: () => Date;
}

/** Where a VM's replica VM is: the DR target of the policy of its newest committed backup. */
async function replicaOf(catalog: Catalog, plan: string, vmId: string) {
  const vm = await catalog.getVm(vmId);
  if (!vm)
    throw new RecoveryRequestInvalid(
      `failover plan '${plan}' names VM '${vmId}', which is not in the inventory: check the plan's VM ids (lifeboat vms lists them)`,
    );
  const newest = (await catalog.listBackups(vmId)).find((b) => b.status === 'committed');
  const dr = newest ? (await catalog.getPolicy(newest.policyId))?.replicateTo : undefined;
  if (!dr?.replicaVms || !dr.standbyPath || !dr.moverGroup) {
    throw new RecoveryRequestInvalid(
      `VM '${vmId}' of failover plan '${plan}' has no replica VM at a DR site: ${newest ? `its policy '${newest.policyId}' replicates to no repository that keeps replica VMs (repositories[].replication.replicaVms)` : 'it has no committed backup'}`,
    );
  }
  return { vm, replicaDir: dr.standbyPath, moverGroup: dr.moverGroup, uri: dr.replicaVms.uri, site: dr.replicaVms.site, bucket: dr.bucket };
}

/**
 * Every VM's replica lease for run `runId`, or none: a VM whose replica a replication holds
 * fails the plan with `Replication.Busy` (retried by the workflow), naming the VM and the
 * holder, and the leases taken so far go back.
 */
export async function takeReplicaLeases(catalog: Catalog, runId: string, vms: { bucket: string; vmId: string }[], now: number): Promise<SlotLease> {
  const keys: string[] = [];
  const release = () => Promise.all(keys.map((k) => catalog.releaseSlot({ pk: k.split('|')[0]!, sk: k.split('|')[1]! }, runId)));
  for (const vm of vms) {
    const scope = replicaLeaseScope(vm.bucket, vm.vmId);
    if (!(await catalog.takeSlot(scope, 0, runId, now, now + REPLICA_LEASE_MS))) {
      await release();
      const holder = await catalog.slotHolder(scope, 0);
      throw new ReplicaBusy(
        `the replica of VM '${vm.vmId}' in ${vm.bucket} is held by ${holder?.holder ?? 'another run'} (a replication writing it, or another failover): the failover waits for it`,
      );
    }
    const key = Catalog.slotKey(scope, 0);
    keys.push(`${key.pk}|${key.sk}`);
  }
  return { keys, holder: runId };
}

export async function planFailoverPlan(input: z.output<typeof planFailoverPlanInput>, deps: Deps): Promise<FailoverPlanLayout> {
  const { plan, points } = input.request;
  const startedAtMs = deps.now().getTime();
  let site: { moverGroup: string; uri: string; name: string } | undefined;
  const groups: FailoverPlanLayout['groups'] = [];
  const vms: FailoverRun['vms'] = [];
  const leases: { bucket: string; vmId: string }[] = [];
  for (const [index, g] of plan.groups.entries()) {
    const jobs: FailoverVmJob[] = [];
    for (const entry of g.vms) {
      const e = typeof entry === 'string' ? { vm: entry } : entry;
      const r = await replicaOf(deps.catalog, plan.id, e.vm);
      site ??= { moverGroup: r.moverGroup, uri: r.uri, name: r.site };
      if (r.moverGroup !== site.moverGroup || r.uri !== site.uri) {
        throw new RecoveryRequestInvalid(
          `failover plan '${plan.id}' spans two DR sites: VM '${e.vm}' is replicated to ${r.uri} (mover group ${r.moverGroup}), earlier VMs to ${site.uri} (mover group ${site.moverGroup}); make one plan per DR site`,
        );
      }
      vms.push({ vmId: e.vm, replicaDir: r.replicaDir });
      leases.push({ bucket: r.bucket, vmId: e.vm });
      jobs.push({
        runId: input.runId,
        test: input.test,
        vmId: e.vm,
        name: r.vm.name ?? e.vm,
        moverGroup: r.moverGroup,
        uri: r.uri,
        replicaDir: r.replicaDir,
        point: points?.[e.vm] ?? points?.['*'] ?? 'latest',
        startedAtMs,
        ...(g.readiness ? { readiness: g.readiness } : {}),
        ...('script' in e && e.script ? { script: e.script } : {}),
        ...('scriptTimeoutSeconds' in e && e.scriptTimeoutSeconds ? { scriptTimeoutSeconds: e.scriptTimeoutSeconds } : {}),
      });
    }
    groups.push({ index, delaySeconds: g.delaySeconds ?? 0, vms: jobs });
  }
  const run: FailoverRun = { runId: input.runId, test: input.test, uri: site!.uri, moverGroup: site!.moverGroup, vms, ...(points ? { points } : {}) };
  const lease = await takeReplicaLeases(deps.catalog, input.runId, leases, startedAtMs);
  return { runId: input.runId, plan: plan.id, test: input.test, moverGroup: site!.moverGroup, uri: site!.uri, startedAtMs, run, lease, groups };
}

export const recordFailoverPlanInput = z.looseObject({
  runId: text,
  plan: text,
  test: z.boolean(),
  booted: z.array(z.looseObject({ index: z.number().int(), vms: z.array(failoverVmResult) })),
  cleanedUp: failoverReport.shape.cleanedUp,
});

/** A VM's failover record: the point its replica was powered on at, and when (its readiness less its boot). */
function failoverRecordOf(input: { runId: string; plan: string; test: boolean }, v: FailoverVmResult): FailoverRecord {
  const startedAt = Date.parse(v.readyAt) - (v.readySeconds - v.startedSeconds) * 1000;
  return {
    vmId: v.vmId,
    runId: input.runId,
    plan: input.plan,
    test: input.test,
    domain: v.domain,
    backupId: v.backupId,
    recoveryPoint: v.recoveryPoint,
    failedOverAt: new Date(Number.isFinite(startedAt) ? startedAt : Date.parse(v.readyAt)).toISOString(),
  };
}

/** The report: each VM (in boot order) with its group, recovery point and ready time; the RTO is when the last became ready. */
export async function recordFailoverPlan(input: z.output<typeof recordFailoverPlanInput>, deps: Pick<Deps, 'recovery' | 'now'>): Promise<FailoverReport> {
  const vms = input.booted.flatMap((g) => g.vms.map((v) => ({ ...v, group: g.index })));
  const report: FailoverReport = {
    runId: input.runId,
    plan: input.plan,
    test: input.test,
    vms,
    rtoSeconds: Math.max(0, ...vms.map((v) => v.readySeconds)),
    ...(input.cleanedUp ? { cleanedUp: input.cleanedUp } : {}),
  };
  for (const v of vms) await deps.recovery.putFailover(failoverRecordOf(input, v));
  await deps.recovery.putRecord('FAILOVER', input.runId, {
    status: 'succeeded',
    finishedAt: deps.now().toISOString(),
    plan: input.plan,
    test: input.test,
    summary: report,
  });
  return report;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  const deps = (): Deps => ({ catalog: c.catalog, recovery: c.recovery, now: () => new Date() });
  return {
    planFailoverPlanHandler: lambdaHandler('PlanFailoverPlan', planFailoverPlanInput, (input) => planFailoverPlan(input, deps())),
    recordFailoverPlanHandler: lambdaHandler('RecordFailoverPlan', recordFailoverPlanInput, (input) => recordFailoverPlan(input, deps())),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planFailoverPlanHandler, recordFailoverPlanHandler } = fromEnvironment(makeHandlers);
