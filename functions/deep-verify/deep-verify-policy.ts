/**
 * The DeepVerifyPolicy workflow's functions: PlanDeepVerifyPolicy plans one DeepVerifyJob
 * per VM of the policy (its newest committed backup, on the group serving its host; see
 * PlanDeepVerify) and writes them to the stack's bucket (`runs/deep-verify/`) for the
 * DeepVerifyVms Distributed Map, one child execution per VM; RecordDeepVerifyPolicy reads
 * the children's results from the Map Run's result files and sums them. Neither list
 * travels in a payload.
 */
import { z } from 'zod';
import { text } from '../../contracts/zod.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { DeepVerifyJob } from '../../contracts/recovery-jobs.ts';
import { restoreTestSettings } from '../../contracts/restore-test.ts';
import type { DeepVerifiedVm, DeepVerifyPolicySummary, DeepVerifySummary, PolicyVmSkipped } from '../../contracts/workflow-outputs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { Catalog } from '../catalog/catalog.ts';
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
import { planDeepVerify } from './deep-verify.ts';

export const deepVerifyPolicyRequest = z
  .object({
    policyId: text,
    sample: z.number().gt(0, 'must be above 0').lte(1, 'must be at most 1 (all chunks)').optional(),
    /** As DeepVerify's `restoreTest`, for every VM of the policy. */
    restoreTest: z.union([z.boolean(), restoreTestSettings]).optional(),
  })
  .strict();
export const planDeepVerifyPolicyInput = z.object({ verifyId: text, request: deepVerifyPolicyRequest }).strict();

/** PlanDeepVerifyPolicy's plan: one job per VM (its newest committed backup, verified by the group serving its host), and the VMs left out. */
export interface DeepVerifyPolicyPlan {
  policyId: string;
  jobs: DeepVerifyJob[];
  skipped: PolicyVmSkipped[];
}

export async function planDeepVerifyPolicy(
  { verifyId, request }: z.output<typeof planDeepVerifyPolicyInput>,
  deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date },
): Promise<DeepVerifyPolicyPlan> {
  const policy = await deps.catalog.getPolicy(request.policyId);
  if (!policy) throw new RecoveryRequestInvalid(`policy '${request.policyId}' does not exist`);
  const jobs: DeepVerifyJob[] = [];
  const skipped: PolicyVmSkipped[] = [];
  for (const vmId of await policyVms(deps.catalog, policy)) {
    const vm = await deps.catalog.getVm(vmId);
    const group = vm ? (await deps.catalog.getHost(vm.host))?.moverGroup : undefined;
    if (!vm || !group) {
      skipped.push({ vmId, reason: vm ? `host '${vm.host}' has no mover group in the catalog` : 'not in the inventory' });
      continue;
    }
    if (!(await deps.catalog.latestCommitted(vmId))) {
      skipped.push({ vmId, reason: 'no committed backup' });
      continue;
    }
    jobs.push(
      await planDeepVerify(
        {
          verifyId: `${verifyId}-${vmId}`,
          request: {
            vmId,
            moverGroup: group,
            ...(request.sample ? { sample: request.sample } : {}),
            ...(request.restoreTest !== undefined ? { restoreTest: request.restoreTest } : {}),
          },
        },
        deps,
      ),
    );
  }
  return { policyId: policy.policyId, jobs, skipped };
}

/** PlanDeepVerifyPolicy's answer to the workflow: where the jobs are (read by the DeepVerifyVms Map), never the jobs (a payload is capped at 256 KiB). */
export interface PlannedPolicyVerify {
  verifyId: string;
  policyId: string;
  jobList: ItemList;
  /** The first VMs left out, as far as a payload allows; all of them are in `skippedList`. */
  skipped: PolicyVmSkipped[];
  skippedCount: number;
  skippedList: ItemList;
}

/** Writes the plan's jobs and skipped VMs to the stack's bucket (`runs/deep-verify/`) and records the verification as running. */
export async function publishDeepVerifyPolicyPlan(
  verifyId: string,
  plan: DeepVerifyPolicyPlan,
  deps: { recovery: Pick<RecoveryCatalog, 'putRecord'>; store: ObjectStore; bucket: string; now: () => Date },
): Promise<PlannedPolicyVerify> {
  const key = (file: string) => policyRunKey('deep-verify', plan.policyId, verifyId, file);
  const planned: PlannedPolicyVerify = {
    verifyId,
    policyId: plan.policyId,
    jobList: await writeItemList(deps.store, deps.bucket, key('jobs.json'), plan.jobs),
    skipped: firstWithin(plan.skipped, LISTING_BYTES / 4),
    skippedCount: plan.skipped.length,
    skippedList: await writeItemList(deps.store, deps.bucket, key('skipped.json'), plan.skipped),
  };
  const { skipped: _listed, ...record } = planned;
  await deps.recovery.putRecord('DEEPVERIFY', verifyId, { status: 'running', startedAt: deps.now().toISOString(), policy: record });
  return planned;
}

export const recordDeepVerifyPolicyInput = z.looseObject({
  verifyId: text,
  policyId: text,
  jobList: itemList,
  skipped: z.array(z.object({ vmId: text, reason: z.string() })),
  skippedCount: z.number().int().min(0),
  verified: mapRunResult,
});

/** The error DeepVerifyPolicy fails with when a VM's verification failed (the others ran to their end). */
export const DEEP_VERIFY_VMS_FAILED = 'DeepVerify.VmsFailed';

/** A VM's summary as the policy's output lists it: without the lists that grow with its damage. */
function listed(s: DeepVerifySummary): DeepVerifiedVm {
  const { findings, event: _event, repository: _repository, healed, restoreTestJob: _job, ...rest } = s;
  return { ...rest, findingsCount: findings.length, healed: healed !== null };
}

/**
 * RecordDeepVerifyPolicy: the DeepVerifyVms Map's results, read from its result files:
 * counts over every VM, the first VMs by name (damaged first, then failed), recorded; with
 * `error` when a VM's verification failed, which the workflow then fails with.
 */
export async function recordDeepVerifyPolicy(
  input: z.output<typeof recordDeepVerifyPolicyInput>,
  deps: { recovery: Pick<RecoveryCatalog, 'putRecord'>; store: ObjectStore; now: () => Date },
): Promise<DeepVerifyPolicySummary> {
  const results = await readMapRunResults(deps.store, input.verified.ResultWriterDetails.Key);
  const verified = results.filter((r) => r.status === 'SUCCEEDED').map((r) => listed(r.output as DeepVerifySummary));
  const failed = results.filter((r) => r.status !== 'SUCCEEDED').map(childFailure);
  const damaged = verified.filter((v) => v.damaged);
  const summary: DeepVerifyPolicySummary = {
    verifyId: input.verifyId,
    policyId: input.policyId,
    vms: input.jobList.count,
    verifiedCount: verified.length,
    damagedCount: damaged.length,
    failedCount: failed.length,
    verified: firstWithin([...damaged, ...verified.filter((v) => !v.damaged)]),
    failed: firstWithin(failed, LISTING_BYTES / 4),
    skipped: input.skipped,
    skippedCount: input.skippedCount,
    results: { bucket: input.verified.ResultWriterDetails.Bucket, key: input.verified.ResultWriterDetails.Key },
  };
  if (failed.length) summary.error = vmsFailedError(DEEP_VERIFY_VMS_FAILED, 'verified', { ...summary, failed: summary.failed });
  const { verified: _v, failed: _f, skipped: _s, ...counts } = summary;
  await deps.recovery.putRecord('DEEPVERIFY', input.verifyId, {
    status: failed.length ? 'failed' : damaged.length ? 'damaged' : 'intact',
    finishedAt: deps.now().toISOString(),
    summary: counts,
  });
  return summary;
}

const now = () => new Date();

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planPolicyHandler: lambdaHandler('PlanDeepVerifyPolicy', planDeepVerifyPolicyInput, async (input) =>
      publishDeepVerifyPolicyPlan(input.verifyId, await planDeepVerifyPolicy(input, { catalog: c.catalog, recovery: c.recovery, now }), {
        recovery: c.recovery,
        ...runStore(c, 'DeepVerifyPolicy'),
        now,
      }),
    ),
    recordPolicyHandler: lambdaHandler('RecordDeepVerifyPolicy', recordDeepVerifyPolicyInput, (input) =>
      recordDeepVerifyPolicy(input, { recovery: c.recovery, store: runStore(c, 'DeepVerifyPolicy').store, now }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planPolicyHandler, recordPolicyHandler } = fromEnvironment(makeHandlers);
