/**
 * The ReplicatePolicy workflow's functions: PlanReplicatePolicy plans one ReplicateJob per
 * VM of the policy whose newest committed backup the DR repository lacks (with a `runId`,
 * only the VMs that run backed up; see PlanReplicate) and writes them to the stack's bucket
 * (`runs/replicate/`) for the ReplicateVms Distributed Map, one child execution per VM;
 * RecordReplicatePolicy reads the children's results from the Map Run's result files and
 * sums them. Neither list travels in a payload.
 */
import { z } from 'zod';
import { text } from '../../contracts/zod.ts';
import { location } from '../../contracts/endpoints.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { ReplicateJob } from '../../contracts/recovery-jobs.ts';
import type { PolicyVmFailure, PolicyVmSkipped } from '../../contracts/workflow-outputs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import {
  childFailure,
  firstWithin,
  itemList,
  LISTING_BYTES,
  mapRunResult,
  policyRunKey,
  readMapRunResults,
  runStore,
  vmsFailedError,
  writeItemList,
  type ItemList,
} from '../commons/map-run.ts';
import { policyVms } from '../recovery/backups.ts';
import { absolute, depsOf, drTargetOf, planReplicate, type Deps, type ReplicationSummary } from './replicate.ts';

export const replicatePolicyRequest = z
  .object({
    policyId: text,
    /** Only VMs whose newest committed backup this Backup run made (how the Backup workflow starts it); default: every VM of the policy. */
    runId: text.optional(),
    moverGroup: text.optional(),
    targetBucket: text.optional(),
    replicaDir: absolute.optional(),
    /** Set by Step Functions when another execution (a Backup run) started this one: the console links the two. */
    AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID: text.optional(),
  })
  .strict();
export const planReplicatePolicyInput = z.object({ replicationId: text, request: replicatePolicyRequest }).strict();

/** PlanReplicatePolicy's plan: one job per VM of the policy whose newest committed backup the DR repository does not have, and the VMs left out. */
export interface ReplicatePolicyPlan {
  policyId: string;
  runId: string | null;
  jobs: ReplicateJob[];
  skipped: PolicyVmSkipped[];
}

export async function planReplicatePolicy({ replicationId, request }: z.output<typeof planReplicatePolicyInput>, deps: Deps): Promise<ReplicatePolicyPlan> {
  const policy = await deps.catalog.getPolicy(request.policyId);
  if (!policy) throw new RecoveryRequestInvalid(`policy '${request.policyId}' does not exist`);
  const jobs: ReplicateJob[] = [];
  const skipped: PolicyVmSkipped[] = [];
  for (const vmId of await policyVms(deps.catalog, policy)) {
    const newest = (await deps.catalog.listBackups(vmId)).find((b) => b.status === 'committed' && b.policyId === policy.policyId);
    if (!newest) {
      skipped.push({ vmId, reason: 'no committed backup' });
      continue;
    }
    if (request.runId && newest.runId !== request.runId) {
      skipped.push({ vmId, reason: `newest backup ${newest.backupId} is not from run ${request.runId}` });
      continue;
    }
    const target = await drTargetOf(deps.catalog, policy.policyId, request.targetBucket, location(policy.bucket, policy.endpoint));
    if (await deps.recovery.getReplica(vmId, target.repository.bucket, newest.backupId)) {
      skipped.push({ vmId, reason: `newest backup ${newest.backupId} is in ${target.repository.bucket} already` });
      continue;
    }
    jobs.push(
      await planReplicate(
        {
          replicationId: `${replicationId}-${vmId}`,
          request: {
            vmId,
            backupId: newest.backupId,
            targetBucket: target.repository.bucket,
            ...(request.moverGroup ? { moverGroup: request.moverGroup } : {}),
            ...(request.replicaDir ? { replicaDir: request.replicaDir } : {}),
          },
        },
        deps,
      ),
    );
  }
  return { policyId: policy.policyId, runId: request.runId ?? null, jobs, skipped };
}

/** PlanReplicatePolicy's answer to the workflow: where the jobs are (read by the ReplicateVms Map), never the jobs (a payload is capped at 256 KiB). */
export interface PlannedPolicyReplication {
  replicationId: string;
  policyId: string;
  runId: string | null;
  jobList: ItemList;
  /** The first VMs left out, as far as a payload allows; all of them are in `skippedList`. */
  skipped: PolicyVmSkipped[];
  skippedCount: number;
  skippedList: ItemList;
}

/** Writes the plan's jobs and skipped VMs to the stack's bucket (`runs/replicate/`) and records the replication as running. */
export async function publishReplicatePolicyPlan(
  replicationId: string,
  plan: ReplicatePolicyPlan,
  deps: { recovery: Pick<RecoveryCatalog, 'putRecord'>; store: ObjectStore; bucket: string; now: () => Date },
): Promise<PlannedPolicyReplication> {
  const key = (file: string) => policyRunKey('replicate', plan.policyId, replicationId, file);
  const planned: PlannedPolicyReplication = {
    replicationId,
    policyId: plan.policyId,
    runId: plan.runId,
    jobList: await writeItemList(deps.store, deps.bucket, key('jobs.json'), plan.jobs),
    skipped: firstWithin(plan.skipped, LISTING_BYTES / 4),
    skippedCount: plan.skipped.length,
    skippedList: await writeItemList(deps.store, deps.bucket, key('skipped.json'), plan.skipped),
  };
  const { skipped: _listed, ...record } = planned;
  await deps.recovery.putRecord('REPLICATION', replicationId, { status: 'running', startedAt: deps.now().toISOString(), policy: record });
  return planned;
}

/** One VM's replication as the Replicate workflow outputs it (a child's output). */
export interface ReplicatedVm {
  replication: ReplicationSummary;
  verified: unknown;
  standby?: unknown[];
  vmConfig?: { path: string };
  replicaVm?: unknown;
}

/**
 * The output of RecordReplicatePolicy: counts over every VM, and the first VMs as far as a
 * payload allows; every VM's outcome is in the Map Run's result files (`results`).
 */
export interface ReplicatePolicySummary {
  replicationId: string;
  policyId: string;
  runId: string | null;
  /** VMs whose replication ran (one child execution each). */
  vms: number;
  replicatedCount: number;
  failedCount: number;
  replicated: ReplicatedVm[];
  failed: PolicyVmFailure[];
  skipped: PolicyVmSkipped[];
  skippedCount: number;
  results: { bucket: string; key: string };
  /** Set when a VM's replication failed: the execution then fails with it (after recording it and reporting the DR recovery point). */
  error?: { Error: string; Cause: string };
}

export const recordReplicatePolicyInput = z.looseObject({
  replicationId: text,
  policyId: text,
  runId: text.nullable(),
  jobList: itemList,
  skipped: z.array(z.object({ vmId: text, reason: z.string() })),
  skippedCount: z.number().int().min(0),
  replicated: mapRunResult,
});

/** The error ReplicatePolicy fails with when a VM's replication failed (the others ran to their end). */
export const REPLICATION_VMS_FAILED = 'Replication.VmsFailed';

/** RecordReplicatePolicy: the ReplicateVms Map's results, read from its result files, summed and recorded; with `error` when a VM failed. */
export async function recordReplicatePolicy(
  input: z.output<typeof recordReplicatePolicyInput>,
  deps: { recovery: Pick<RecoveryCatalog, 'putRecord'>; store: ObjectStore; now: () => Date },
): Promise<ReplicatePolicySummary> {
  const results = await readMapRunResults(deps.store, input.replicated.ResultWriterDetails.Key);
  const replicated = results.filter((r) => r.status === 'SUCCEEDED').map((r) => r.output as ReplicatedVm);
  const failed = results.filter((r) => r.status !== 'SUCCEEDED').map(childFailure);
  const summary: ReplicatePolicySummary = {
    replicationId: input.replicationId,
    policyId: input.policyId,
    runId: input.runId,
    vms: input.jobList.count,
    replicatedCount: replicated.length,
    failedCount: failed.length,
    replicated: firstWithin(replicated),
    failed: firstWithin(failed, LISTING_BYTES / 4),
    skipped: input.skipped,
    skippedCount: input.skippedCount,
    results: { bucket: input.replicated.ResultWriterDetails.Bucket, key: input.replicated.ResultWriterDetails.Key },
  };
  if (failed.length) summary.error = vmsFailedError(REPLICATION_VMS_FAILED, 'replicated', summary);
  const { replicated: _r, failed: _f, skipped: _s, ...counts } = summary;
  await deps.recovery.putRecord('REPLICATION', input.replicationId, {
    status: failed.length ? 'failed' : 'succeeded',
    finishedAt: deps.now().toISOString(),
    summary: counts,
  });
  return summary;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planPolicyHandler: lambdaHandler('PlanReplicatePolicy', planReplicatePolicyInput, async (input) =>
      publishReplicatePolicyPlan(input.replicationId, await planReplicatePolicy(input, depsOf(c)), {
        recovery: c.recovery,
        ...runStore(c, 'ReplicatePolicy'),
        now: () => new Date(),
      }),
    ),
    recordPolicyHandler: lambdaHandler('RecordReplicatePolicy', recordReplicatePolicyInput, (input) =>
      recordReplicatePolicy(input, { recovery: c.recovery, store: runStore(c, 'ReplicatePolicy').store, now: () => new Date() }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planPolicyHandler, recordPolicyHandler } = fromEnvironment(makeHandlers);
