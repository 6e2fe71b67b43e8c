/**
 * The Prune workflow's functions. PlanPrune applies the policy's GFS retention to each of
 * its VMs' backups and lists what goes and why (a dry run stops there). PruneBackup
 * removes one backup: catalog status `pruning` first (no restore or plan uses it from
 * then on, and a prune that stopped half-way finds it again), then its manifests and VM
 * config from the repository, then its catalog record. Chunks are left to garbage
 * collection, which deletes only what no manifest references.
 */
import { z } from 'zod';
import { PolicyNotFound } from '../../contracts/errors.ts';
import { location, type RepositoryLocation, repositoryLocation, type StorageEndpoint, storageEndpoint } from '../../contracts/endpoints.ts';
import type { RepositoryAdmin } from '../../repository/admin.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { Catalog, Policy } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { policyVms } from '../recovery/backups.ts';
import { applyRetention, retentionProblem } from './gfs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { mapRunResult, readMapRunResults, runStore, writeItemList, type ItemList } from '../commons/map-run.ts';

const text = z.string().min(1);

/** The execution input of the Prune workflow. */
export const pruneRequest = z
  .object({
    policyId: text,
    /** List what would go and why; change nothing. */
    dryRun: z.boolean().optional(),
    /** Calendar periods are counted in this zone (default: the policy's, else UTC). */
    timeZone: text.optional(),
    /**
     * Prune this one backup of the policy now, whatever the retention: only a `damaged` one
     * (a deep verification found it does not open), e.g. one whose manifest is torn, which
     * stops garbage collection until it is gone.
     */
    backupId: text.optional(),
  })
  .strict();
export const planPruneInput = z.object({ pruneId: text, request: pruneRequest }).strict();

export interface PruneDecision {
  backupId: string;
  time: string;
  status: string;
  keep: boolean;
  reason: string;
}

export interface PruneItem {
  pruneId: string;
  vmId: string;
  backupId: string;
  bucket: string;
  /** The repository's endpoint, when it is not the stack's own S3. */
  endpoint?: StorageEndpoint;
  /** DR repositories the policy replicates to: the backup's copies there go too (the DR site follows the retention). */
  replicas: RepositoryLocation[];
  reason: string;
}

export interface PrunePlan {
  pruneId: string;
  policyId: string;
  dryRun: boolean;
  timeZone: string;
  retention: Record<string, number>;
  vms: { vmId: string; decisions: PruneDecision[] }[];
  remove: PruneItem[];
  keepCount: number;
  removeCount: number;
}

export async function planPrune(
  { pruneId, request }: z.output<typeof planPruneInput>,
  deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date },
): Promise<PrunePlan> {
  const policy = await deps.catalog.getPolicy(request.policyId);
  if (!policy) throw new PolicyNotFound(request.policyId);
  const retention = policy.retention;
  if (!retention)
    throw new RecoveryRequestInvalid(
      `policy '${policy.policyId}' has no retention rules, so there is nothing to prune by; add "retention" to it in the configuration`,
    );
  const problem = retentionProblem(retention);
  if (problem) throw new RecoveryRequestInvalid(`policy '${policy.policyId}': ${problem}`);
  const timeZone = request.timeZone ?? (policy as Policy & { timeZone?: string }).timeZone ?? 'UTC';
  try {
    new Intl.DateTimeFormat('en', { timeZone });
  } catch {
    throw new RecoveryRequestInvalid(`timeZone '${timeZone}' is not an IANA time zone such as "Europe/Berlin" or "UTC"`);
  }

  const plan: PrunePlan = {
    pruneId,
    policyId: policy.policyId,
    dryRun: request.dryRun === true,
    timeZone,
    retention: retention as Record<string, number>,
    vms: [],
    remove: [],
    keepCount: 0,
    removeCount: 0,
  };
  const item = (vmId: string, backupId: string, reason: string): PruneItem => ({
    pruneId,
    vmId,
    backupId,
    ...location(policy.bucket, policy.endpoint),
    replicas: policy.replicateTo ? [location(policy.replicateTo.bucket, policy.replicateTo.endpoint)] : [],
    reason,
  });
  if (request.backupId) {
    const named = await namedDamagedBackup(deps.catalog, policy, request.backupId);
    const reason = `pruned by name: damaged (deep verification ${named.verifyId})`;
    plan.vms.push({ vmId: named.vmId, decisions: [{ backupId: named.backupId, time: named.startedAt, status: 'damaged', keep: false, reason }] });
    plan.remove.push(item(named.vmId, named.backupId, reason));
    plan.removeCount = 1;
    return plan;
  }
  for (const vmId of await policyVms(deps.catalog, policy)) {
    const backups = (await deps.catalog.listBackups(vmId)).filter((b) => b.policyId === policy.policyId);
    const status = new Map(backups.map((b) => [b.backupId, b.status as string]));
    // Only finished backups take part: running ones are not done, failed ones were never visible.
    const candidates = backups
      .filter((b) => b.status === 'committed' || (b.status as string) === 'damaged')
      .map((b) => ({ id: b.backupId, time: b.startedAt }));
    const decisions: PruneDecision[] = applyRetention(candidates, retention, { timeZone }).map((d) => ({
      backupId: d.id,
      time: d.time,
      status: status.get(d.id)!,
      keep: d.keep,
      reason: d.reason,
    }));
    for (const b of backups.filter((x) => (x.status as string) === 'pruning')) {
      decisions.push({
        backupId: b.backupId,
        time: b.startedAt,
        status: 'pruning',
        keep: false,
        reason: `an earlier prune began removing it (${(b as { pruneReason?: string }).pruneReason ?? 'no reason recorded'}) and did not finish`,
      });
    }
    if (decisions.length === 0) continue;
    plan.vms.push({ vmId, decisions });
    for (const d of decisions) {
      if (d.keep) plan.keepCount++;
      else plan.remove.push(item(vmId, d.backupId, d.reason));
    }
  }
  plan.removeCount = plan.remove.length;
  return plan;
}

/** PlanPrune's answer to the workflow: counts, and where the plan and the list of backups to remove are (never the lists: a payload is capped at 256 KiB). */
export interface PlannedPrune {
  pruneId: string;
  policyId: string;
  dryRun: boolean;
  timeZone: string;
  keepCount: number;
  removeCount: number;
  /** The whole plan (every VM's decisions and reasons), as JSON in the stack's bucket: what a dry run lists. */
  plan: { bucket: string; key: string };
  /** The PruneItems to remove, one JSON array, read by the PruneBackups Map. */
  removeList: ItemList;
}

/** Where a prune's plan and list go (`runs/`, beside the Backup runs' VM lists). */
export const pruneKeys = (policyId: string, pruneId: string) => {
  const base = `runs/prune/${encodeURIComponent(policyId)}/${encodeURIComponent(pruneId)}`;
  return { plan: `${base}/plan.json`, remove: `${base}/remove.json` };
};

/** Writes the plan and the list to the stack's bucket and records the prune (with where its plan is). */
export async function publishPrunePlan(
  plan: PrunePlan,
  deps: { recovery: Pick<RecoveryCatalog, 'putRecord'>; store: ObjectStore; bucket: string; now: () => Date },
): Promise<PlannedPrune> {
  const at = pruneKeys(plan.policyId, plan.pruneId);
  await deps.store.put(at.plan, Buffer.from(JSON.stringify(plan)));
  const removeList = await writeItemList(deps.store, deps.bucket, at.remove, plan.remove);
  const planned: PlannedPrune = {
    pruneId: plan.pruneId,
    policyId: plan.policyId,
    dryRun: plan.dryRun,
    timeZone: plan.timeZone,
    keepCount: plan.keepCount,
    removeCount: plan.removeCount,
    plan: { bucket: deps.bucket, key: at.plan },
    removeList,
  };
  await deps.recovery.putRecord('PRUNE', plan.pruneId, { status: plan.dryRun ? 'dry-run' : 'running', startedAt: deps.now().toISOString(), plan: planned });
  return planned;
}

/** The backup a prune names: one of the policy's VMs', and `damaged`; any other is refused, saying why. */
async function namedDamagedBackup(
  catalog: Catalog,
  policy: Policy,
  backupId: string,
): Promise<{ vmId: string; backupId: string; startedAt: string; verifyId: string }> {
  for (const vmId of await policyVms(catalog, policy)) {
    const b = await catalog.getBackup(vmId, backupId);
    if (!b || b.policyId !== policy.policyId) continue;
    if ((b.status as string) !== 'damaged') {
      throw new RecoveryRequestInvalid(
        `backup '${backupId}' of VM '${vmId}' is '${b.status}': only a backup a deep verification found damaged is pruned by name; ` +
          `deep-verify it first (Deep verify workflow, or lifeboat verify --vm ${vmId} --backup ${backupId} --group <its group>), or let the retention prune it`,
      );
    }
    return { vmId, backupId, startedAt: b.startedAt, verifyId: (b as { damage?: { verifyId?: string } }).damage?.verifyId ?? 'unknown' };
  }
  throw new RecoveryRequestInvalid(`policy '${policy.policyId}' has no backup '${backupId}' (among the backups of its VMs)`);
}

export interface PrunedBackup {
  vmId: string;
  backupId: string;
  /** pruned: gone from repository and catalog; kept: the store refused to delete (Object Lock), retried next time; skipped: no longer prunable. */
  outcome: 'pruned' | 'kept' | 'skipped';
  objectsDeleted: number;
  bytesDeleted: number;
  failed: { key: string; reason: string }[];
}

export const pruneItem = z.looseObject({
  pruneId: text,
  vmId: text,
  backupId: text,
  bucket: text,
  endpoint: storageEndpoint.optional(),
  replicas: z.array(repositoryLocation).default([]),
  reason: z.string(),
});

export async function pruneBackup(
  item: PruneItem,
  deps: { catalog: Catalog; recovery: RecoveryCatalog; admin: (repository: RepositoryLocation) => RepositoryAdmin; now: () => Date },
): Promise<PrunedBackup> {
  const result: PrunedBackup = { vmId: item.vmId, backupId: item.backupId, outcome: 'skipped', objectsDeleted: 0, bytesDeleted: 0, failed: [] };
  if (!(await deps.recovery.beginPrune(item.vmId, item.backupId, item.reason, deps.now()))) return result; // gone already, or changed state since planning
  // The DR copies first: a replica record never outlives the DR manifests it vouches for.
  for (const repository of [...item.replicas, location(item.bucket, item.endpoint)]) {
    const { bucket } = repository;
    const admin = deps.admin(repository);
    const objects = [];
    for await (const o of admin.list(`manifests/${item.backupId}/`)) objects.push(o);
    const out = await admin.delete(objects.map((o) => o.key));
    const sizes = new Map(objects.map((o) => [o.key, o.size]));
    result.objectsDeleted += out.deleted.length;
    result.bytesDeleted += out.deleted.reduce((n, k) => n + (sizes.get(k) ?? 0), 0);
    result.failed.push(...out.failed.map((f) => ({ ...f, key: `s3://${bucket}/${f.key}` })));
  }
  if (result.failed.length > 0) {
    result.outcome = 'kept'; // stays `pruning`: the next prune tries again
    return result;
  }
  for (const r of item.replicas) await deps.recovery.deleteReplica(item.vmId, r.bucket, item.backupId);
  await deps.recovery.finishPrune(item.vmId, item.backupId);
  result.outcome = 'pruned';
  return result;
}

export const recordPruneInput = z.looseObject({
  pruneId: text,
  policyId: text,
  keepCount: z.number().int(),
  removeCount: z.number().int(),
  plan: z.object({ bucket: text, key: text }),
  pruned: mapRunResult,
});

/** Most kept backups listed by name in a prune's summary (the count is always whole). */
const KEPT_LISTED = 100;

/** RecordPrune: the PruneBackups Map's results, read from its result files, summed and recorded. */
export async function recordPrune(input: z.output<typeof recordPruneInput>, deps: { recovery: RecoveryCatalog; store: ObjectStore; now: () => Date }) {
  const results = await readMapRunResults(deps.store, input.pruned.ResultWriterDetails.Key);
  const pruned = results.filter((r) => r.status === 'SUCCEEDED').map((r) => r.output as PrunedBackup);
  const kept = pruned.filter((p) => p.outcome === 'kept');
  const summary = {
    pruneId: input.pruneId,
    policyId: input.policyId,
    dryRun: false,
    pruned: pruned.filter((p) => p.outcome === 'pruned').length,
    kept: kept.slice(0, KEPT_LISTED).map((p) => ({ backupId: p.backupId, failed: p.failed.slice(0, 5) })),
    keptCount: kept.length,
    skipped: pruned.filter((p) => p.outcome === 'skipped').length,
    objectsDeleted: pruned.reduce((n, p) => n + p.objectsDeleted, 0),
    bytesDeleted: pruned.reduce((n, p) => n + p.bytesDeleted, 0),
    keepCount: input.keepCount,
    removeCount: input.removeCount,
    /** Every decision and its reason, in the stack's bucket. */
    plan: input.plan,
  };
  await deps.recovery.putRecord('PRUNE', input.pruneId, { status: summary.keptCount ? 'partial' : 'succeeded', finishedAt: deps.now().toISOString(), summary });
  return summary;
}

const now = () => new Date();

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanPrune', planPruneInput, async (input) =>
      publishPrunePlan(await planPrune(input, { catalog: c.catalog, recovery: c.recovery, now }), { recovery: c.recovery, ...runStore(c, 'Prune'), now }),
    ),
    pruneHandler: lambdaHandler('PruneBackup', pruneItem, (input) =>
      pruneBackup(input, { catalog: c.catalog, recovery: c.recovery, admin: (r) => c.admin(r.bucket, r.endpoint), now }),
    ),
    recordHandler: lambdaHandler('RecordPrune', recordPruneInput, (input) =>
      recordPrune(input, { recovery: c.recovery, store: runStore(c, 'Prune').store, now }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, pruneHandler, recordHandler } = fromEnvironment(makeHandlers);
