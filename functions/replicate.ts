/**
 * The Replicate and Failover workflows' functions. PlanReplicate resolves the backup,
 * its source and DR repositories (the policy's `replicateTo` unless the input names a
 * bucket) and makes sure the DR repository holds the same wrapped repository key.
 * RecordReplication marks the backup complete in the DR repository. PlanFailover picks
 * the newest committed backup that is complete at the DR site; RecordFailover reports
 * the standby replica and its recovery point.
 */
import { z } from 'zod';
import { keys as objectKeys } from '../core/format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { RecoveryRequestInvalid } from '../core/recovery-errors.ts';
import type { ReplicatedDisk, ReplicateJob, StandbyDisk } from '../core/recovery-jobs.ts';
import type { Catalog } from './catalog/catalog.ts';
import type { RecoveryCatalog } from './catalog/recovery-catalog.ts';
import { clients } from './commons/clients.ts';
import { lambdaHandler } from './commons/lambda.ts';
import { policyVms, resolveBackup } from './recovery/backups.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();
const absolute = text.refine((p) => p.startsWith('/'), 'must be an absolute path on the DR movers');

interface Deps {
  catalog: Catalog;
  recovery: RecoveryCatalog;
  store: (bucket: string) => ObjectStore;
  now: () => Date;
}

/** The DR repository must hold the source's wrapped key (copied on first use), so sealed objects copy as they are. */
async function ensureSameKey(deps: Deps, source: string, target: string): Promise<void> {
  const key = objectKeys.masterKey();
  const [s, t] = await Promise.all([deps.store(source).get(key), deps.store(target).get(key)]);
  if (!s) throw new RecoveryRequestInvalid(`source repository ${source} has no key object ${key}`);
  if (!t) {
    await deps.store(target).put(key, s);
    return;
  }
  if (!s.equals(t)) throw new RecoveryRequestInvalid(`DR repository ${target} holds another repository key than ${source}; a DR repository receives copies of sealed objects and must share the source's key (use an empty bucket)`);
}

async function targetBucketOf(catalog: Catalog, policyId: string, requested: string | undefined, source: string): Promise<string> {
  const policy = await catalog.getPolicy(policyId);
  const target = requested ?? policy?.replicateTo?.bucket;
  if (!target) throw new RecoveryRequestInvalid(`policy '${policyId}' replicates nowhere (no replicateTo) and the input names no targetBucket`);
  if (target === source) throw new RecoveryRequestInvalid(`the DR repository ${target} is the backup's own repository`);
  return target;
}

export const replicateRequest = z.object({
  vmId: text,
  backupId: text.optional(),
  /** The DR site's mover group. */
  moverGroup: text,
  /** Default: the policy's replicateTo repository. */
  targetBucket: text.optional(),
  /** Keep a warm standby replica of the VM's disks in this folder on the DR movers. */
  replicaDir: absolute.optional(),
}).strict();
export const planReplicateInput = z.object({ replicationId: text, request: replicateRequest }).strict();

export async function planReplicate({ replicationId, request }: z.output<typeof planReplicateInput>, deps: Deps): Promise<ReplicateJob> {
  const { backup, bucket } = await resolveBackup(deps.catalog, request.vmId, request.backupId);
  const target = await targetBucketOf(deps.catalog, backup.policyId, request.targetBucket, bucket);
  await ensureSameKey(deps, bucket, target);
  return {
    replicationId, vmId: request.vmId, backupId: backup.backupId, moverGroup: request.moverGroup,
    source: { bucket }, target: { bucket: target }, disks: backup.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
    replicaDir: request.replicaDir ?? null, recoveryPoint: backup.startedAt,
  };
}

const replicateJob: z.ZodType<ReplicateJob> = z.looseObject({
  replicationId: text, vmId: text, backupId: text, moverGroup: text, source: z.looseObject({ bucket: text }), target: z.looseObject({ bucket: text }),
  disks: z.array(z.looseObject({ diskId: text, sizeBytes: count })), replicaDir: text.nullable(), recoveryPoint: text,
});
const replicatedDisk: z.ZodType<ReplicatedDisk> = z.looseObject({ diskId: text, chunks: count, chunksCopied: count, bytesCopied: count, seconds: z.number() });
const standbyDisk: z.ZodType<StandbyDisk> = z.looseObject({
  diskId: text, path: text, sizeBytes: count, fromBackupId: text.nullable(), chunksWritten: count, bytesWritten: count, chunksUnchanged: count, sha256: text, seconds: z.number(),
});
export const recordReplicationInput = z.intersection(replicateJob, z.looseObject({ replicated: z.array(replicatedDisk) }));

export interface ReplicationSummary {
  replicationId: string;
  vmId: string;
  backupId: string;
  target: string;
  chunks: number;
  chunksCopied: number;
  bytesCopied: number;
}

export async function recordReplication(input: z.output<typeof recordReplicationInput>, deps: Pick<Deps, 'recovery' | 'now'>): Promise<ReplicationSummary> {
  const want = input.disks.map((d) => d.diskId).sort().join(',');
  const got = input.replicated.map((d) => d.diskId).sort().join(',');
  if (want !== got) throw new RecoveryRequestInvalid(`replication ${input.replicationId} planned disks ${want} but movers reported ${got}`);
  const at = deps.now().toISOString();
  await deps.recovery.putReplica({ vmId: input.vmId, backupId: input.backupId, bucket: input.target.bucket, replicatedAt: at, replicationId: input.replicationId });
  const summary: ReplicationSummary = {
    replicationId: input.replicationId, vmId: input.vmId, backupId: input.backupId, target: input.target.bucket,
    chunks: input.replicated.reduce((n, d) => n + d.chunks, 0),
    chunksCopied: input.replicated.reduce((n, d) => n + d.chunksCopied, 0),
    bytesCopied: input.replicated.reduce((n, d) => n + d.bytesCopied, 0),
  };
  await deps.recovery.putRecord('REPLICATION', input.replicationId, { status: 'succeeded', finishedAt: at, summary });
  return summary;
}

export const replicatePolicyRequest = z.object({
  policyId: text,
  moverGroup: text,
  targetBucket: text.optional(),
  replicaDir: absolute.optional(),
}).strict();
export const planReplicatePolicyInput = z.object({ replicationId: text, request: replicatePolicyRequest }).strict();

/** One job per VM of the policy whose newest committed backup the DR repository does not have. */
export async function planReplicatePolicy({ replicationId, request }: z.output<typeof planReplicatePolicyInput>, deps: Deps) {
  const policy = await deps.catalog.getPolicy(request.policyId);
  if (!policy) throw new RecoveryRequestInvalid(`policy '${request.policyId}' does not exist`);
  const jobs: ReplicateJob[] = [];
  const skipped: { vmId: string; reason: string }[] = [];
  for (const vmId of await policyVms(deps.catalog, policy)) {
    const newest = (await deps.catalog.listBackups(vmId)).find((b) => b.status === 'committed' && b.policyId === policy.policyId);
    if (!newest) {
      skipped.push({ vmId, reason: 'no committed backup' });
      continue;
    }
    const target = await targetBucketOf(deps.catalog, policy.policyId, request.targetBucket, policy.bucket);
    if (await deps.recovery.getReplica(vmId, target, newest.backupId)) {
      skipped.push({ vmId, reason: `newest backup ${newest.backupId} is in ${target} already` });
      continue;
    }
    jobs.push(await planReplicate({ replicationId: `${replicationId}-${vmId}`, request: { vmId, backupId: newest.backupId, moverGroup: request.moverGroup, targetBucket: target, ...(request.replicaDir ? { replicaDir: request.replicaDir } : {}) } }, deps));
  }
  return { policyId: policy.policyId, jobs, skipped };
}

export const failoverRequest = z.object({
  vmId: text,
  moverGroup: text,
  replicaDir: absolute,
  /** Default: the repository the VM's policy replicates to. */
  targetBucket: text.optional(),
}).strict();
export const planFailoverInput = z.object({ failoverId: text, request: failoverRequest }).strict();

/** The newest committed backup of the VM that is complete in the DR repository. */
export async function planFailover({ failoverId, request }: z.output<typeof planFailoverInput>, deps: Deps): Promise<ReplicateJob> {
  const vm = await deps.catalog.getVm(request.vmId);
  if (!vm) throw new RecoveryRequestInvalid(`VM '${request.vmId}' is not in the inventory`);
  const committed = (await deps.catalog.listBackups(request.vmId)).filter((b) => b.status === 'committed');
  for (const b of committed) {
    const { bucket } = await resolveBackup(deps.catalog, request.vmId, b.backupId);
    const target = await targetBucketOf(deps.catalog, b.policyId, request.targetBucket, bucket);
    if (!(await deps.recovery.getReplica(request.vmId, target, b.backupId))) continue;
    return {
      replicationId: failoverId, vmId: request.vmId, backupId: b.backupId, moverGroup: request.moverGroup,
      source: { bucket }, target: { bucket: target }, disks: b.disks!.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
      replicaDir: request.replicaDir, recoveryPoint: b.startedAt,
    };
  }
  throw new RecoveryRequestInvalid(`VM '${request.vmId}' has no committed backup that is complete in its DR repository; run the Replicate workflow first`);
}

export const recordFailoverInput = z.intersection(replicateJob, z.looseObject({ standby: z.array(standbyDisk), vmConfig: z.looseObject({ path: text }) }));

export interface FailoverSummary {
  vmId: string;
  backupId: string;
  /** When the backup's snapshot was taken: what the replica now holds. */
  recoveryPoint: string;
  recoveryPointAgeSeconds: number;
  vmConfigPath: string;
  disks: StandbyDisk[];
}

export async function recordFailover(input: z.output<typeof recordFailoverInput>, deps: Pick<Deps, 'recovery' | 'now'>): Promise<FailoverSummary> {
  const now = deps.now();
  const summary: FailoverSummary = {
    vmId: input.vmId, backupId: input.backupId, recoveryPoint: input.recoveryPoint,
    recoveryPointAgeSeconds: Math.round((now.getTime() - new Date(input.recoveryPoint).getTime()) / 1000),
    vmConfigPath: input.vmConfig.path, disks: input.standby,
  };
  await deps.recovery.putRecord('FAILOVER', input.replicationId, { status: 'ready', finishedAt: now.toISOString(), summary });
  return summary;
}

const deps = (): Deps => ({ catalog: clients().catalog, recovery: clients().recovery, store: (b) => clients().store(b), now: () => new Date() });
export const planHandler = lambdaHandler('PlanReplicate', planReplicateInput, (input) => planReplicate(input, deps()));
export const planPolicyHandler = lambdaHandler('PlanReplicatePolicy', planReplicatePolicyInput, (input) => planReplicatePolicy(input, deps()));
export const recordHandler = lambdaHandler('RecordReplication', recordReplicationInput, (input) => recordReplication(input, deps()));
export const planFailoverHandler = lambdaHandler('PlanFailover', planFailoverInput, (input) => planFailover(input, deps()));
export const recordFailoverHandler = lambdaHandler('RecordFailover', recordFailoverInput, (input) => recordFailover(input, deps()));
