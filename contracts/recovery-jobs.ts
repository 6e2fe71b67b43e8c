/**
 * What flows through the recovery workflows (Restore, Deep verify, Replicate, Standby,
 * Export, Files): the jobs the control plane plans, the mover tasks they dispatch, and
 * what the movers answer. zod schemas first, types inferred from them: the functions parse
 * with these, and the mover parses every recovery task input with `recoveryTask`
 * (a bad input is `Mover.BadTaskInput` naming the field). Objects are loose (unknown
 * fields pass through untouched), because the state machines carry state along.
 */
import { z } from 'zod';
import { repositoryLocation } from './endpoints.ts';
import { exportJob } from './export-job.ts';
import { failbackDiskTask, releaseReplicaTask, startProductionVmTask, stopDrVmTask } from './failback.ts';
import { filesJob } from './files-job.ts';
import { restoreTestJob } from './restore-test.ts';
import { replicaJob } from './dr.ts';
import { count, text, type Infer } from './zod.ts';

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex SHA-256');
const seconds = z.number().nonnegative();

/** A disk of a backup as a recovery job names it. */
export const jobDisk = z.looseObject({ diskId: text, sizeBytes: count });
export type JobDisk = Infer<typeof jobDisk>;

/** One disk to restore and where it goes on the mover's host. */
export const restoreDiskTarget = z.looseObject({
  diskId: text,
  sizeBytes: count,
  /** Absolute path of the file the disk is written to. */
  path: text,
});
export type RestoreDiskTarget = Infer<typeof restoreDiskTarget>;

/** The sign of life of a restore test (at least one of `consoleLine` and `agent`). */
export const bootCheck = z.looseObject({
  consoleLine: z.string().optional(),
  agent: z.boolean().optional(),
  timeoutSeconds: z.number().int().positive().optional(),
});
export type BootCheck = Infer<typeof bootCheck>;

/** How an instant recovery runs. */
export const instantRequest = z.looseObject({
  /** Cap of the move to final storage, MiB/s per disk (absent: no cap). */
  moveBandwidthMiBs: z.number().positive().optional(),
  /**
   * The move fails when the bytes it still has to copy have not shrunk for this long (the
   * guest writes faster than the cap or the target takes them; default 300).
   */
  moveStallSeconds: z.number().positive().optional(),
  /** Take up an instant recovery of this domain whose move failed or whose mover died (its VM still running, its overlays kept). */
  resume: z.boolean().optional(),
  /**
   * Start the move once the guest shows this sign of life (a console line, the guest agent),
   * so the copy does not compete with its boot; after `timeoutSeconds` without it the move
   * starts anyway. Absent: the move starts as soon as the VM runs.
   */
  moveAfter: bootCheck.optional(),
});
export type InstantRequest = Infer<typeof instantRequest>;

/** Defining a restored VM on a libvirt host (mover/recovery/define-domain.ts). */
export const defineDomainRequest = z.looseObject({
  /** The target host's libvirt URI, as the restoring mover reaches it. */
  uri: text,
  /** Default: `<original name>-restore-<backup time>`. */
  name: text.optional(),
  /** Disk image format (default qcow2). */
  format: z.enum(['raw', 'qcow2']).optional(),
  /**
   * Restore the disks as volumes of this libvirt storage pool on the host (active, with
   * room for the disks' data) instead of files in the restore folder; the domain's disks
   * are `<disk type='volume'>` in it (mover/recovery/pool-volumes.ts).
   */
  pool: text.optional(),
  start: z.boolean().optional(),
  /**
   * A restore test: boot with no network, wait for the sign of life — a line matching
   * `consoleLine` on the serial console, the guest agent answering `guest-ping` (`agent`),
   * or both, each within `timeoutSeconds` of the start (default 300 s) — then remove the
   * domain and its disks, also when the wait fails.
   */
  bootCheck: bootCheck.optional(),
  /** The new domain's `<description>` (restore tests record their owner there). */
  description: z.string().optional(),
});
export type DefineDomainRequest = Infer<typeof defineDomainRequest>;

/** A restore, as PlanRestore resolved it. */
export const restoreJob = z.looseObject({
  /** The execution's name: one restore record per execution. */
  restoreId: text,
  vmId: text,
  backupId: text,
  moverGroup: text,
  repository: repositoryLocation,
  /** The folder of a whole-VM restore, or the file of a single-disk restore. */
  target: text,
  /** Set for a single-disk restore; null restores every disk and the VM's config. */
  diskId: text.nullable(),
  disks: z.array(restoreDiskTarget),
  /** Overwrite what is at the target (a file holding data, a non-empty folder, the VM's own folder); default: refuse. */
  force: z.boolean().optional(),
  /** A whole-VM restore of a libvirt backup: define (and start, or boot-test) a new domain from it. */
  define: defineDomainRequest.optional(),
  /** Said to the operator when an older backup is restored because newer ones are damaged. */
  notice: z.string().optional(),
  /**
   * Instant recovery (with `define`): the VM runs at once on local qcow2 overlays backed by
   * NBD exports of the backup, then moves to its disks in `target` while it runs
   * (mover/recovery/instant.ts).
   */
  instant: instantRequest.optional(),
});
export type RestoreJob = Infer<typeof restoreJob>;

/** What an instant recovery did. */
export const instantRecovery = z.looseObject({
  domain: text,
  uuid: text,
  /** The final disk images the VM runs on after the move. */
  disks: z.array(text),
  consoleLog: text,
  /** From the task's start to the domain running on its overlays. */
  runningSeconds: seconds,
  /** The move to final storage, all disks. */
  moveSeconds: seconds,
  /** Bytes the exports served to QEMU, and downloaded from the repository for them. */
  bytesServed: count,
  bytesDownloaded: count,
  /** Set when this task took up a failed or interrupted instant recovery. */
  resumed: z.boolean(),
  /** Milliseconds of each step of this task until the VM ran (vmConfig, folder, overlays, define, exportWait, start; or reattach). */
  steps: z.record(z.string(), count).optional(),
});
export type InstantRecovery = Infer<typeof instantRecovery>;

/** How a restore test's boot went. */
export const bootCheckResult = z.looseObject({
  passed: z.boolean(),
  /** From the start of the domain to the sign of life, or to giving up. */
  seconds,
  /** The console line that matched ('' when none was asked for or it did not come). */
  line: z.string(),
  /** The guest agent answered `guest-ping` (only when asked). */
  agent: z.boolean().optional(),
  /** Why it did not pass. */
  reason: z.string().optional(),
});
export type BootCheckResult = Infer<typeof bootCheckResult>;

/** The domain a restore defined. */
export const definedDomain = z.looseObject({
  name: text,
  uuid: text,
  started: z.boolean(),
  consoleLog: text,
  /** Its disk images (none after a restore test, which removes them). */
  disks: z.array(text),
  bootCheck: bootCheckResult.optional(),
});
export type DefinedDomain = Infer<typeof definedDomain>;

/** A libvirt storage volume a restore created. */
export const poolVolume = z.looseObject({ pool: text, name: text, format: z.enum(['raw', 'qcow2']) });
export type PoolVolume = Infer<typeof poolVolume>;

/** What a mover reports for one restored disk, after re-reading what it wrote. */
export const restoredDisk = z.looseObject({
  diskId: text,
  path: text,
  sizeBytes: count,
  /** Sealed bytes fetched from the repository. */
  bytesDownloaded: count,
  /** Chunks whose keyed id was recomputed from the written file and matched the manifest. */
  chunksVerified: count,
  /** Hex SHA-256 of the written disk, computed while re-reading it. */
  sha256: sha256Hex,
  seconds,
  /** Set when the disk was restored into a libvirt storage pool (`define.pool`): `path` is the volume's path. */
  volume: poolVolume.optional(),
});
export type RestoredDisk = Infer<typeof restoredDisk>;

/** A deep verification of one backup, as PlanDeepVerify resolved it. */
export const deepVerifyJob = z.looseObject({
  verifyId: text,
  vmId: text,
  backupId: text,
  moverGroup: text,
  repository: repositoryLocation,
  /** Fraction of each disk's distinct chunks to read back, in (0, 1]; 1 reads all. */
  sample: z.number(),
  disks: z.array(jobDisk),
  /** After a clean verification: restore this backup as a throwaway VM and boot it (a libvirt VM; see contracts/restore-test.ts). */
  restoreTest: restoreTestJob.optional(),
  /** Why a restore test asked for was not planned (not a libvirt VM, not due yet). */
  restoreTestSkipped: z.string().optional(),
});
export type DeepVerifyJob = Infer<typeof deepVerifyJob>;

/** One damaged object, named so an operator can find it. */
export const damageFinding = z.looseObject({
  backupId: text,
  diskId: text,
  /** Disk offsets (bytes) whose data is in the object; empty for a manifest. */
  offsets: z.array(count),
  /** The damaged object: a chunk object (`chunks/…`, format 1), a pack (`packs/…`, format 2) or a manifest. */
  objectKey: text,
  /** The damaged chunk's id; absent for a manifest (a pack's key does not name the chunk). */
  chunkId: z
    .string()
    .regex(/^[0-9a-f]{64}$/, 'must be a chunk id')
    .optional(),
  /** Format 2: the bytes of the pack `objectKey` that hold the chunk's envelope. */
  range: z.strictObject({ offset: count, length: count }).optional(),
  reason: z.string(),
});
export type DamageFinding = Infer<typeof damageFinding>;

/** What a mover reports for one disk of a deep verification. */
export const deepVerifiedDisk = z.looseObject({
  diskId: text,
  /**
   * Distinct chunks in the manifest (counted as it streams: a chunk the disk repeats far
   * apart counts again, repository/manifest/recent.ts), and how many were read back.
   */
  chunksTotal: count,
  chunksChecked: count,
  bytesRead: count,
  damaged: z.array(damageFinding),
  /**
   * Chunks whose copy at the manifest's location is missing or damaged but another copy
   * the repository's index lists is intact (a later backup stored them again): readers use
   * that copy, so they are not damage. Absent from movers of before format 2.
   */
  chunksFromOtherCopies: count.optional(),
  seconds,
});
export type DeepVerifiedDisk = Infer<typeof deepVerifiedDisk>;

/** A replication of one backup to a DR repository, as PlanReplicate or PlanFailover resolved it. */
export const replicateJob = z.looseObject({
  replicationId: text,
  vmId: text,
  backupId: text,
  /** The DR site's mover group: it copies, and it keeps the standby replica. */
  moverGroup: text,
  source: repositoryLocation,
  target: repositoryLocation,
  disks: z.array(jobDisk),
  /** Folder (on the DR movers) of the warm standby replica: `<replicaDir>/<vmId>/<diskId>.raw`; null keeps none. */
  replicaDir: text.nullable(),
  /** When the backup's snapshot was taken: the recovery point a failover to it gives. */
  recoveryPoint: text,
  /** A libvirt VM whose DR repository keeps replica VMs: the replica is a VM (contracts/dr.ts) instead of raw standby files. */
  replica: replicaJob.optional(),
});
export type ReplicateJob = Infer<typeof replicateJob>;

/** What a DR mover reports for one disk copied to the DR repository. */
export const replicatedDisk = z.looseObject({
  diskId: text,
  /** Distinct chunks the disk's manifest references (counted as it streams, as deep verify counts them). */
  chunks: count,
  /** Chunks the target lacked and that were copied (each opened and checked first); format 2: the disk's chunks in the packs copied. */
  chunksCopied: count,
  /** Stored bytes copied: chunk objects (format 1) or packs and the index objects listing them (format 2), the manifest and (with the first disk) the VM config. */
  bytesCopied: count,
  seconds: z.number(),
});
export type ReplicatedDisk = Infer<typeof replicatedDisk>;

/** What a DR mover reports for one disk of the standby replica brought to a backup. */
export const standbyDisk = z.looseObject({
  diskId: text,
  path: text,
  sizeBytes: count,
  /** The backup the replica disk held before (null: none, or a half-written update, so every chunk was compared). */
  fromBackupId: text.nullable(),
  chunksWritten: count,
  bytesWritten: count,
  chunksUnchanged: count,
  /** Hex SHA-256 of the replica disk after the update (re-read and every chunk id checked). */
  sha256: text,
  seconds: z.number(),
});
export type StandbyDisk = Infer<typeof standbyDisk>;

/** A replication that keeps a standby replica: the standby tasks need its folder. */
const standbyReplicateJob = replicateJob.extend({ replicaDir: text });

/** Activity task inputs of the recovery workflows, discriminated by `task`: the mover parses every one with this. */
export const recoveryTask = z.discriminatedUnion('task', [
  z.looseObject({ task: z.literal('restoreDisk'), restore: restoreJob, disk: restoreDiskTarget }),
  z.looseObject({ task: z.literal('restoreVmConfig'), restore: restoreJob, disks: z.array(restoredDisk) }),
  z.looseObject({ task: z.literal('discardPoolVolumes'), restore: restoreJob }),
  z.looseObject({ task: z.literal('deepVerifyDisk'), verify: deepVerifyJob, disk: jobDisk }),
  z.looseObject({ task: z.literal('replicateDisk'), replicate: replicateJob, disk: jobDisk, index: count.optional() }),
  z.looseObject({ task: z.literal('updateStandbyDisk'), replicate: standbyReplicateJob, disk: jobDisk }),
  z.looseObject({ task: z.literal('standbyVmConfig'), replicate: standbyReplicateJob, disks: z.array(standbyDisk) }),
  z.looseObject({ task: z.literal('restoreTest'), test: restoreTestJob }),
  /** Serve a backup's disks over NBD until idle or stopped (contracts/export-job.ts). */
  z.looseObject({ task: z.literal('export'), export: exportJob }),
  /** Instant recovery of a whole VM (a restore job with `define` and `instant`). */
  z.looseObject({ task: z.literal('instantRecover'), restore: restoreJob.extend({ define: defineDomainRequest }) }),
  /** List or extract files of a backup's disk (contracts/files-job.ts). */
  z.looseObject({ task: z.literal('files'), files: filesJob }),
  /** Failback's steps (contracts/failback.ts). */
  failbackDiskTask,
  stopDrVmTask,
  startProductionVmTask,
  releaseReplicaTask,
]);
export type RecoveryTask = Infer<typeof recoveryTask>;

/** The recovery task kinds, from the schema. */
export const recoveryTaskNames: readonly string[] = recoveryTask.options.map((o) => o.shape.task.value);
