/**
 * The Deep verify workflow's functions: PlanDeepVerify resolves the backup and its
 * disks; RecordDeepVerify keeps the result, marks a damaged backup `damaged` in the
 * catalog (QuarantineDamage, `quarantine.ts`, then sets its damaged chunks aside) and
 * shapes the event the workflow emits; a full verification that finds a `damaged` backup
 * intact again (a later backup stored its quarantined chunks again: format 1 under the
 * same key, format 2 in a new pack that readers find through the repository's index)
 * marks it `committed` and clears those chunks' quarantine records (by each finding's
 * `chunkId`; a pack's key does not name the chunk).
 */
import { z } from 'zod';
import { RecoveryRequestInvalid } from '../core/recovery-errors.ts';
import type { DamageFinding, DeepVerifiedDisk, DeepVerifyJob } from '../core/recovery-jobs.ts';
import { locationKey, type RepositoryLocation } from '../core/endpoints.ts';
import { chunkIdOfKey } from '../core/format.ts';
import type { Catalog } from './catalog/catalog.ts';
import type { RecoveryCatalog } from './catalog/recovery-catalog.ts';
import { clients } from './commons/clients.ts';
import { lambdaHandler } from './commons/lambda.ts';
import { repositoryLocation } from './commons/schemas.ts';
import { policyVms, resolveBackup } from './recovery/backups.ts';
import { healShared } from './recovery/shared-damage.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

/** The execution input of the Deep verify workflow. */
export const deepVerifyRequest = z.object({
  vmId: text,
  /** Default: the VM's newest committed backup. */
  backupId: text.optional(),
  /** Fraction of each disk's chunks to read back, in (0, 1]; default 1 (all). */
  sample: z.number().gt(0, 'must be above 0').lte(1, 'must be at most 1 (all chunks)').optional(),
  moverGroup: text,
}).strict();
export const planDeepVerifyInput = z.object({ verifyId: text, request: deepVerifyRequest }).strict();

export async function planDeepVerify({ verifyId, request }: z.output<typeof planDeepVerifyInput>, deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date }): Promise<DeepVerifyJob> {
  const { backup, repository } = await resolveBackup(deps.catalog, request.vmId, request.backupId, { allowDamaged: true });
  const job: DeepVerifyJob = {
    verifyId, vmId: request.vmId, backupId: backup.backupId, moverGroup: request.moverGroup, repository,
    sample: request.sample ?? 1, disks: backup.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
  };
  await deps.recovery.putRecord('DEEPVERIFY', verifyId, { status: 'running', startedAt: deps.now().toISOString(), job });
  return job;
}

export const deepVerifyPolicyRequest = z.object({
  policyId: text,
  sample: z.number().gt(0, 'must be above 0').lte(1, 'must be at most 1 (all chunks)').optional(),
}).strict();
export const planDeepVerifyPolicyInput = z.object({ verifyId: text, request: deepVerifyPolicyRequest }).strict();

/** One job per VM of the policy: its newest committed backup, verified by the group serving its host. */
export async function planDeepVerifyPolicy({ verifyId, request }: z.output<typeof planDeepVerifyPolicyInput>, deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date }) {
  const policy = await deps.catalog.getPolicy(request.policyId);
  if (!policy) throw new RecoveryRequestInvalid(`policy '${request.policyId}' does not exist`);
  const jobs: DeepVerifyJob[] = [];
  const skipped: { vmId: string; reason: string }[] = [];
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
    jobs.push(await planDeepVerify({ verifyId: `${verifyId}-${vmId}`, request: { vmId, moverGroup: group, ...(request.sample ? { sample: request.sample } : {}) } }, deps));
  }
  return { policyId: policy.policyId, jobs, skipped };
}

const damageFinding: z.ZodType<DamageFinding> = z.looseObject({
  backupId: text, diskId: text, offsets: z.array(count), objectKey: text, reason: z.string(),
  chunkId: z.string().regex(/^[0-9a-f]{64}$/, 'must be a chunk id').optional(),
  range: z.object({ offset: count, length: count }).strict().optional(),
});
const deepVerifiedDisk: z.ZodType<DeepVerifiedDisk> = z.looseObject({
  diskId: text, chunksTotal: count, chunksChecked: count, bytesRead: count, damaged: z.array(damageFinding), chunksFromOtherCopies: count.optional(), seconds: z.number().nonnegative(),
});
const deepVerifyJob: z.ZodType<DeepVerifyJob> = z.looseObject({
  verifyId: text, vmId: text, backupId: text, moverGroup: text, repository: repositoryLocation, sample: z.number(),
  disks: z.array(z.looseObject({ diskId: text, sizeBytes: count })),
});
export const recordDeepVerifyInput = z.intersection(deepVerifyJob, z.looseObject({ verified: z.array(deepVerifiedDisk) }));

export interface DeepVerifySummary {
  verifyId: string;
  vmId: string;
  backupId: string;
  sample: number;
  chunksTotal: number;
  chunksChecked: number;
  bytesRead: number;
  damaged: boolean;
  findings: DamageFinding[];
  /** The repository verified (QuarantineDamage moves damaged chunks aside in it). */
  repository: RepositoryLocation;
  /**
   * Set when this full verification found intact a backup that was `damaged`: it is
   * `committed` again and the chunks its damage named are no longer quarantined.
   */
  healed: { previousVerifyId: string; chunks: string[]; otherBackups?: { vmId: string; backupId: string }[] } | null;
  /** The event's detail (EventBridge `Lifeboat Backup Damaged`) when damage was found. */
  event: { vmId: string; backupId: string; verifyId: string; findings: DamageFinding[]; message: string } | null;
}

export async function recordDeepVerify(input: z.output<typeof recordDeepVerifyInput>, deps: { recovery: RecoveryCatalog; catalog: Pick<Catalog, 'backupsWithStatus'>; now: () => Date }): Promise<DeepVerifySummary> {
  const want = input.disks.map((d) => d.diskId).sort().join(',');
  const got = input.verified.map((d) => d.diskId).sort().join(',');
  if (want !== got) throw new RecoveryRequestInvalid(`deep verification ${input.verifyId} planned disks ${want} but movers reported ${got}`);
  const findings = input.verified.flatMap((d) => d.damaged);
  const at = deps.now().toISOString();
  const summary: DeepVerifySummary = {
    verifyId: input.verifyId, vmId: input.vmId, backupId: input.backupId, sample: input.sample,
    chunksTotal: input.verified.reduce((n, d) => n + d.chunksTotal, 0),
    chunksChecked: input.verified.reduce((n, d) => n + d.chunksChecked, 0),
    bytesRead: input.verified.reduce((n, d) => n + d.bytesRead, 0),
    damaged: findings.length > 0, findings, repository: input.repository, healed: null, event: null,
  };
  if (findings.length > 0) {
    // Keep the event small (EventBridge takes 256 KB): the catalog keeps every finding.
    const first = findings[0]!;
    summary.event = {
      vmId: input.vmId, backupId: input.backupId, verifyId: input.verifyId, findings: findings.slice(0, 20),
      message: `backup ${input.backupId} of VM '${input.vmId}' is damaged: ${findings.length} object(s), first ${first.objectKey}${first.range ? ` bytes ${first.range.offset}+${first.range.length}` : ''}${first.chunkId ? ` (chunk ${first.chunkId}, disk '${first.diskId}'` : ` (disk '${first.diskId}'`}, offset ${first.offsets[0] ?? 'n/a'}): ${first.reason}`,
    };
    const marked = await deps.recovery.markDamaged(input.vmId, input.backupId, { verifyId: input.verifyId, foundAt: at, findings });
    if (!marked) summary.event.message += ' (the backup was no longer committed, so its catalog status is unchanged)';
  }
  // Only a full verification proves every chunk intact; a sample may have missed the damaged ones.
  if (findings.length === 0 && summary.chunksChecked === summary.chunksTotal) {
    const was = await deps.recovery.markHealthy(input.vmId, input.backupId, { verifyId: input.verifyId, healedAt: at });
    if (was) {
      // Findings of movers from before format 2 carry no chunk id: their key (`chunks/…`) names it.
      const chunks = [...new Set(was.findings.map((f) => f.chunkId ?? chunkIdOfKey(f.objectKey)).filter((id): id is string => id !== undefined))];
      await deps.recovery.clearQuarantine(locationKey(input.repository), chunks);
      // Backups damaged only through these chunks (they share them) are whole again too.
      const others = await healShared(chunks, { verifyId: input.verifyId, healedAt: at }, deps);
      summary.healed = { previousVerifyId: was.verifyId, chunks, ...(others.length ? { otherBackups: others } : {}) };
    }
  }
  await deps.recovery.putRecord('DEEPVERIFY', input.verifyId, { status: summary.healed ? 'healed' : summary.damaged ? 'damaged' : 'intact', finishedAt: at, summary });
  return summary;
}

const now = () => new Date();
export const planHandler = lambdaHandler('PlanDeepVerify', planDeepVerifyInput, (input) => planDeepVerify(input, { catalog: clients().catalog, recovery: clients().recovery, now }));
export const planPolicyHandler = lambdaHandler('PlanDeepVerifyPolicy', planDeepVerifyPolicyInput, (input) => planDeepVerifyPolicy(input, { catalog: clients().catalog, recovery: clients().recovery, now }));
export const recordHandler = lambdaHandler('RecordDeepVerify', recordDeepVerifyInput, (input) => recordDeepVerify(input, { recovery: clients().recovery, catalog: clients().catalog, now }));
