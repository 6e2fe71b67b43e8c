/**
 * The Replicate and Failover workflows' functions. PlanReplicate resolves the backup,
 * its source and DR repositories (the policy's `replicateTo` unless the input names a
 * bucket) with their endpoints, the DR mover group and the standby folder (the DR
 * repository's `replication` settings unless the input names them), and makes sure the
 * DR repository holds the same wrapped repository key.
 * RecordReplication marks the backup complete in the DR repository. PlanFailover picks
 * the newest committed backup that is complete at the DR site; RecordFailover reports
 * the standby replica and its recovery point.
 */
import { z } from 'zod';
import { text } from '../../contracts/zod.ts';
import { endpointKey, location, type RepositoryLocation } from '../../contracts/endpoints.ts';
import { objectKeys } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { RecoveryRequestInvalid, ReplicaBusy } from '../../contracts/recovery-errors.ts';
import type { SlotLease } from '../../contracts/jobs.ts';
import { replicatedDisk, replicateJob, standbyDisk, type ReplicateJob, type StandbyDisk } from '../../contracts/recovery-jobs.ts';
import type { ReplicaJob } from '../../contracts/dr.ts';
import { Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { resolveBackup } from '../recovery/backups.ts';
import type { VerifyOutput } from '../../contracts/backup-steps.ts';
import { verifyManifests } from '../backup/verify.ts';

export const absolute = text.refine((p) => p.startsWith('/'), 'must be an absolute path on the DR movers');

export interface Deps {
  catalog: Catalog;
  recovery: RecoveryCatalog;
  /** A repository's objects, on its own endpoint. */
  store: (repository: RepositoryLocation) => ObjectStore;
  now: () => Date;
}

/** The DR repository must hold the source's wrapped key (copied on first use), so sealed objects copy as they are. */
async function ensureSameKey(deps: Deps, source: RepositoryLocation, target: RepositoryLocation): Promise<void> {
  const key = objectKeys.masterKey();
  const [s, t] = await Promise.all([deps.store(source).get(key), deps.store(target).get(key)]);
  if (!s) throw new RecoveryRequestInvalid(`source repository ${source.bucket} has no key object ${key}`);
  if (!t) {
    await deps.store(target).put(key, s);
    return;
  }
  if (!s.equals(t))
    throw new RecoveryRequestInvalid(
      `DR repository ${target.bucket} holds another repository key than ${source.bucket}; a DR repository receives copies of sealed objects and must share the source's key (use an empty bucket)`,
    );
}

/** Where a backup of a policy is replicated to: the DR repository, the mover group serving it and its standby folder. */
interface DrTarget {
  repository: RepositoryLocation;
  moverGroup?: string;
  standbyPath?: string;
  replicaVms?: ReplicaJob;
}

/** The policy's DR repository, or the bucket the request names (on the stack's own S3 unless it is the policy's DR bucket). */
export async function drTargetOf(catalog: Catalog, policyId: string, requested: string | undefined, source: RepositoryLocation): Promise<DrTarget> {
  const dr = (await catalog.getPolicy(policyId))?.replicateTo;
  const bucket = requested ?? dr?.bucket;
  if (!bucket) throw new RecoveryRequestInvalid(`policy '${policyId}' replicates nowhere (no replicateTo) and the input names no targetBucket`);
  const target: DrTarget =
    dr?.bucket === bucket
      ? {
          repository: location(bucket, dr.endpoint),
          ...(dr.moverGroup ? { moverGroup: dr.moverGroup } : {}),
          ...(dr.standbyPath ? { standbyPath: dr.standbyPath } : {}),
          ...(dr.replicaVms ? { replicaVms: dr.replicaVms } : {}),
        }
      : { repository: { bucket } };
  if (bucket === source.bucket && endpointKey(target.repository.endpoint) === endpointKey(source.endpoint)) {
    throw new RecoveryRequestInvalid(`the DR repository ${bucket} is the backup's own repository`);
  }
  return target;
}

/** The request's mover group, else the one configured to replicate into the DR repository. */
function drGroup(requested: string | undefined, target: DrTarget): string {
  const group = requested ?? target.moverGroup;
  if (!group)
    throw new RecoveryRequestInvalid(
      `the DR repository ${target.repository.bucket} names no mover group that replicates into it (configuration: repositories[].replication.moverGroup); name one with "moverGroup"`,
    );
  return group;
}

export const replicateRequest = z
  .object({
    vmId: text,
    backupId: text.optional(),
    /** The DR site's mover group (default: the one the DR repository's configuration names). */
    moverGroup: text.optional(),
    /** Default: the policy's replicateTo repository. */
    targetBucket: text.optional(),
    /** Keep a warm standby replica of the VM's disks in this folder on the DR movers (default: the DR repository's standbyPath, if any). */
    replicaDir: absolute.optional(),
  })
  .strict();
export const planReplicateInput = z.object({ replicationId: text, request: replicateRequest }).strict();

export async function planReplicate({ replicationId, request }: z.output<typeof planReplicateInput>, deps: Deps): Promise<ReplicateJob> {
  const { backup, repository: source } = await resolveBackup(deps.catalog, request.vmId, request.backupId);
  const target = await drTargetOf(deps.catalog, backup.policyId, request.targetBucket, source);
  const moverGroup = drGroup(request.moverGroup, target);
  await ensureSameKey(deps, source, target.repository);
  const replicaDir = request.replicaDir ?? target.standbyPath ?? null;
  // A libvirt VM's replica is a VM when the DR repository keeps replica VMs.
  const vm = target.replicaVms && replicaDir ? await deps.catalog.getVm(request.vmId) : undefined;
  const libvirt = vm ? (await deps.catalog.getHost(vm.host))?.hypervisor?.driver === 'libvirt' : false;
  return {
    replicationId,
    vmId: request.vmId,
    backupId: backup.backupId,
    moverGroup,
    source,
    target: target.repository,
    disks: backup.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
    replicaDir,
    recoveryPoint: backup.startedAt,
    ...(libvirt ? { replica: target.replicaVms! } : {}),
  };
}

/** A replication or failover that died frees its VM's replica after this long (the workflows time out after 24 h; a disk task after 12 h). */
export const REPLICA_LEASE_MS = 24 * 3600_000;
/** The catalog slot that is a VM's replica lease in a DR repository (held by a replication, a failover plan or a test failover). */
export const replicaLeaseScope = (bucket: string, vmId: string) => `replica:${bucket}/${vmId}`;
const leaseScope = (job: ReplicateJob) => replicaLeaseScope(job.target.bucket, job.vmId);

/**
 * AcquireReplicaLease: one replication or failover of a VM into a DR repository at a
 * time (a conditional write in the catalog, like a backup slot), so two runs' replications
 * never write the standby replica at once; a busy lease is `Replication.Busy`, retried by
 * the workflow. Holding it, a replication whose backup is older than one already
 * replicated there still copies (harmless, content-addressed) but leaves the standby
 * replica alone: it never goes back to an older backup.
 */
export async function acquireReplicaLease(job: ReplicateJob, deps: Pick<Deps, 'catalog' | 'recovery' | 'now'>): Promise<ReplicateJob & { lease: SlotLease }> {
  const now = deps.now().getTime();
  const scope = leaseScope(job);
  if (!(await deps.catalog.takeSlot(scope, 0, job.replicationId, now, now + REPLICA_LEASE_MS))) {
    throw new ReplicaBusy(`another replication or failover of VM '${job.vmId}' into ${job.target.bucket} is running; waiting for it`);
  }
  const key = Catalog.slotKey(scope, 0);
  let replicaDir = job.replicaDir;
  if (replicaDir) {
    for (const b of await deps.catalog.listBackups(job.vmId)) {
      // newest first
      if (b.backupId === job.backupId) break;
      if (b.status === 'committed' && (await deps.recovery.getReplica(job.vmId, job.target.bucket, b.backupId))) {
        replicaDir = null; // the standby holds (or will hold) the newer backup
        break;
      }
    }
  }
  return { ...job, replicaDir, lease: { keys: [`${key.pk}|${key.sk}`], holder: job.replicationId } };
}

/** ReleaseReplicaLease: frees the VM's replica lease if this execution holds it (idempotent; a no-op without one). */
export async function releaseReplicaLease(input: { lease?: SlotLease | null }, deps: Pick<Deps, 'catalog'>): Promise<null> {
  for (const key of input.lease?.keys ?? []) {
    const [pk, sk] = key.split('|') as [string, string];
    await deps.catalog.releaseSlot({ pk, sk }, input.lease!.holder);
  }
  return null;
}
const leaseInput = z.looseObject({ lease: z.looseObject({ keys: z.array(text), holder: text }).nullish() });

export const recordReplicationInput = z.intersection(replicateJob, z.looseObject({ replicated: z.array(replicatedDisk) }));
export const verifyReplicaInput = replicateJob;

/**
 * VerifyReplica: the copy in the DR repository, read through the DR repository's own
 * endpoint, is complete — every chunk its manifests reference is there with the stored
 * size they record (HEADs, no data read), as Verify checks a new backup. Only then does
 * RecordReplication vouch for it (restores and failovers trust that record).
 */
export async function verifyReplica(job: ReplicateJob, deps: { repository: Repository }): Promise<VerifyOutput> {
  return verifyManifests(
    job.backupId,
    job.disks.map((d) => ({ diskId: d.diskId, manifestKey: objectKeys.manifest(job.backupId, d.diskId) })),
    deps,
  );
}

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
  const want = input.disks
    .map((d) => d.diskId)
    .sort()
    .join(',');
  const got = input.replicated
    .map((d) => d.diskId)
    .sort()
    .join(',');
  if (want !== got) throw new RecoveryRequestInvalid(`replication ${input.replicationId} planned disks ${want} but movers reported ${got}`);
  const at = deps.now().toISOString();
  await deps.recovery.putReplica({
    vmId: input.vmId,
    backupId: input.backupId,
    bucket: input.target.bucket,
    replicatedAt: at,
    replicationId: input.replicationId,
  });
  const summary: ReplicationSummary = {
    replicationId: input.replicationId,
    vmId: input.vmId,
    backupId: input.backupId,
    target: input.target.bucket,
    chunks: input.replicated.reduce((n, d) => n + d.chunks, 0),
    chunksCopied: input.replicated.reduce((n, d) => n + d.chunksCopied, 0),
    bytesCopied: input.replicated.reduce((n, d) => n + d.bytesCopied, 0),
  };
  await deps.recovery.putRecord('REPLICATION', input.replicationId, { status: 'succeeded', finishedAt: at, summary });
  return summary;
}

export const failoverRequest = z
  .object({
    vmId: text,
    /** Default: the mover group that replicates into the DR repository. */
    moverGroup: text.optional(),
    /** Default: the DR repository's standbyPath. */
    replicaDir: absolute.optional(),
    /** Default: the repository the VM's policy replicates to. */
    targetBucket: text.optional(),
  })
  .strict();
export const planFailoverInput = z.object({ failoverId: text, request: failoverRequest }).strict();

/** The newest committed backup of the VM that is complete in the DR repository. */
export async function planFailover({ failoverId, request }: z.output<typeof planFailoverInput>, deps: Deps): Promise<ReplicateJob> {
  const vm = await deps.catalog.getVm(request.vmId);
  if (!vm) throw new RecoveryRequestInvalid(`VM '${request.vmId}' is not in the inventory`);
  const committed = (await deps.catalog.listBackups(request.vmId)).filter((b) => b.status === 'committed');
  for (const b of committed) {
    const { repository: source } = await resolveBackup(deps.catalog, request.vmId, b.backupId);
    const target = await drTargetOf(deps.catalog, b.policyId, request.targetBucket, source);
    if (!(await deps.recovery.getReplica(request.vmId, target.repository.bucket, b.backupId))) continue;
    const replicaDir = request.replicaDir ?? target.standbyPath;
    if (!replicaDir)
      throw new RecoveryRequestInvalid(
        `the DR repository ${target.repository.bucket} keeps no standby replica (configuration: repositories[].replication.standbyPath); name one with "replicaDir"`,
      );
    return {
      replicationId: failoverId,
      vmId: request.vmId,
      backupId: b.backupId,
      moverGroup: drGroup(request.moverGroup, target),
      source,
      target: target.repository,
      disks: b.disks!.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
      replicaDir,
      recoveryPoint: b.startedAt,
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
    vmId: input.vmId,
    backupId: input.backupId,
    recoveryPoint: input.recoveryPoint,
    recoveryPointAgeSeconds: Math.round((now.getTime() - new Date(input.recoveryPoint).getTime()) / 1000),
    vmConfigPath: input.vmConfig.path,
    disks: input.standby,
  };
  await deps.recovery.putRecord('FAILOVER', input.replicationId, { status: 'ready', finishedAt: now.toISOString(), summary });
  return summary;
}

/** The functions' dependencies from the clients. */
export const depsOf = (c: Clients): Deps => ({ catalog: c.catalog, recovery: c.recovery, store: (r) => c.store(r.bucket, r.endpoint), now: () => new Date() });

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  const deps = () => depsOf(c);
  return {
    planHandler: lambdaHandler('PlanReplicate', planReplicateInput, (input) => planReplicate(input, deps())),
    acquireLeaseHandler: lambdaHandler('AcquireReplicaLease', replicateJob, (job) => acquireReplicaLease(job, deps())),
    releaseLeaseHandler: lambdaHandler('ReleaseReplicaLease', leaseInput, (input) => releaseReplicaLease(input, deps())),
    verifyReplicaHandler: lambdaHandler('VerifyReplica', verifyReplicaInput, async (job) => {
      const { bucket, endpoint } = job.target;
      return verifyReplica(job, { repository: await c.repository(bucket, endpoint) });
    }),
    recordHandler: lambdaHandler('RecordReplication', recordReplicationInput, (input) => recordReplication(input, deps())),
    planFailoverHandler: lambdaHandler('PlanFailover', planFailoverInput, (input) => planFailover(input, deps())),
    recordFailoverHandler: lambdaHandler('RecordFailover', recordFailoverInput, (input) => recordFailover(input, deps())),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, acquireLeaseHandler, releaseLeaseHandler, verifyReplicaHandler, recordHandler, planFailoverHandler, recordFailoverHandler } =
  fromEnvironment(makeHandlers);
