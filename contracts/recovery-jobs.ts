/**
 * What flows through the Restore and Deep verify workflows: the plans the control plane
 * makes, the mover tasks they dispatch, and what the movers answer. Both `functions/`
 * and `mover/` import these; the state machines' paths name these fields.
 */
import type { RepositoryLocation } from './endpoints.ts';
import type { RestoreTestJob } from './restore-test.ts';
import type { ExportJob } from './export-job.ts';

/** One disk to restore and where it goes on the mover's host. */
export interface RestoreDiskTarget {
  diskId: string;
  sizeBytes: number;
  /** Absolute path of the file the disk is written to. */
  path: string;
}

/** A restore, as PlanRestore resolved it. */
export interface RestoreJob {
  /** The execution's name: one restore record per execution. */
  restoreId: string;
  vmId: string;
  backupId: string;
  moverGroup: string;
  repository: RepositoryLocation;
  /** The folder of a whole-VM restore, or the file of a single-disk restore. */
  target: string;
  /** Set for a single-disk restore; null restores every disk and the VM's config. */
  diskId: string | null;
  disks: RestoreDiskTarget[];
  /** Overwrite what is at the target (a file holding data, a non-empty folder, the VM's own folder); default: refuse. */
  force?: boolean;
  /** A whole-VM restore of a libvirt backup: define (and start, or boot-test) a new domain from it. */
  define?: DefineDomainRequest;
  /** Said to the operator when an older backup is restored because newer ones are damaged. */
  notice?: string;
  /**
   * Instant recovery (with `define`): the VM runs at once on local qcow2 overlays backed by
   * NBD exports of the backup, then moves to its disks in `target` while it runs
   * (mover/recovery/instant.ts).
   */
  instant?: InstantRequest;
}

/** How an instant recovery runs. */
export interface InstantRequest {
  /** Cap of the move to final storage, MiB/s per disk (absent: no cap). */
  moveBandwidthMiBs?: number;
  /** Take up an instant recovery of this domain whose move failed (its VM paused, its overlays kept). */
  resume?: boolean;
  /**
   * Start the move once the guest shows this sign of life (a console line, the guest agent),
   * so the copy does not compete with its boot; after `timeoutSeconds` without it the move
   * starts anyway. Absent: the move starts as soon as the VM runs.
   */
  moveAfter?: BootCheck;
}

/** What an instant recovery did. */
export interface InstantRecovery {
  domain: string;
  uuid: string;
  /** The final disk images the VM runs on after the move. */
  disks: string[];
  consoleLog: string;
  /** From the task's start to the domain running on its overlays. */
  runningSeconds: number;
  /** The move to final storage, all disks. */
  moveSeconds: number;
  /** Bytes the exports served to QEMU, and downloaded from the repository for them. */
  bytesServed: number;
  bytesDownloaded: number;
  /** Set when this task took up a failed or interrupted instant recovery. */
  resumed: boolean;
}

/** Defining a restored VM on a libvirt host (mover/recovery/define-domain.ts). */
export interface DefineDomainRequest {
  /** The target host's libvirt URI, as the restoring mover reaches it. */
  uri: string;
  /** Default: `<original name>-restore-<backup time>`. */
  name?: string;
  /** Disk image format (default qcow2). */
  format?: 'raw' | 'qcow2';
  /**
   * Restore the disks as volumes of this libvirt storage pool on the host (active, with
   * room for the disks' data) instead of files in the restore folder; the domain's disks
   * are `<disk type='volume'>` in it (mover/recovery/pool-volumes.ts).
   */
  pool?: string;
  start?: boolean;
  /**
   * A restore test: boot with no network, wait for the sign of life — a line matching
   * `consoleLine` on the serial console, the guest agent answering `guest-ping` (`agent`),
   * or both, each within `timeoutSeconds` of the start (default 300 s) — then remove the
   * domain and its disks, also when the wait fails.
   */
  bootCheck?: BootCheck;
  /** The new domain's `<description>` (restore tests record their owner there). */
  description?: string;
}

/** The sign of life of a restore test (at least one of `consoleLine` and `agent`). */
export interface BootCheck {
  consoleLine?: string;
  agent?: boolean;
  timeoutSeconds?: number;
}

/** How a restore test's boot went. */
export interface BootCheckResult {
  passed: boolean;
  /** From the start of the domain to the sign of life, or to giving up. */
  seconds: number;
  /** The console line that matched ('' when none was asked for or it did not come). */
  line: string;
  /** The guest agent answered `guest-ping` (only when asked). */
  agent?: boolean;
  /** Why it did not pass. */
  reason?: string;
}

/** The domain a restore defined. */
export interface DefinedDomain {
  name: string;
  uuid: string;
  started: boolean;
  consoleLog: string;
  /** Its disk images (none after a restore test, which removes them). */
  disks: string[];
  bootCheck?: BootCheckResult;
}

/** What a mover reports for one restored disk, after re-reading what it wrote. */
export interface RestoredDisk {
  diskId: string;
  path: string;
  sizeBytes: number;
  /** Sealed bytes fetched from the repository. */
  bytesDownloaded: number;
  /** Chunks whose keyed id was recomputed from the written file and matched the manifest. */
  chunksVerified: number;
  /** Hex SHA-256 of the written disk, computed while re-reading it. */
  sha256: string;
  seconds: number;
  /** Set when the disk was restored into a libvirt storage pool (`define.pool`): `path` is the volume's path. */
  volume?: PoolVolume;
}

/** A libvirt storage volume a restore created. */
export interface PoolVolume {
  pool: string;
  name: string;
  format: 'raw' | 'qcow2';
}

/** A deep verification of one backup, as PlanDeepVerify resolved it. */
export interface DeepVerifyJob {
  verifyId: string;
  vmId: string;
  backupId: string;
  moverGroup: string;
  repository: RepositoryLocation;
  /** Fraction of each disk's distinct chunks to read back, in (0, 1]; 1 reads all. */
  sample: number;
  disks: { diskId: string; sizeBytes: number }[];
  /** After a clean verification: restore this backup as a throwaway VM and boot it (a libvirt VM; see contracts/restore-test.ts). */
  restoreTest?: RestoreTestJob;
  /** Why a restore test asked for was not planned (not a libvirt VM, not due yet). */
  restoreTestSkipped?: string;
}

/** One damaged object, named so an operator can find it. */
export interface DamageFinding {
  backupId: string;
  diskId: string;
  /** Disk offsets (bytes) whose data is in the object; empty for a manifest. */
  offsets: number[];
  /** The damaged object: a chunk object (`chunks/…`, format 1), a pack (`packs/…`, format 2) or a manifest. */
  objectKey: string;
  /** The damaged chunk's id; absent for a manifest (a pack's key does not name the chunk). */
  chunkId?: string;
  /** Format 2: the bytes of the pack `objectKey` that hold the chunk's envelope. */
  range?: { offset: number; length: number };
  reason: string;
}

/** What a mover reports for one disk of a deep verification. */
export interface DeepVerifiedDisk {
  diskId: string;
  /** Distinct chunks in the manifest, and how many were read back. */
  chunksTotal: number;
  chunksChecked: number;
  bytesRead: number;
  damaged: DamageFinding[];
  /**
   * Chunks whose copy at the manifest's location is missing or damaged but another copy
   * the repository's index lists is intact (a later backup stored them again): readers use
   * that copy, so they are not damage. Absent from movers of before format 2.
   */
  chunksFromOtherCopies?: number;
  seconds: number;
}

/** A replication of one backup to a DR repository, as PlanReplicate or PlanFailover resolved it. */
export interface ReplicateJob {
  replicationId: string;
  vmId: string;
  backupId: string;
  /** The DR site's mover group: it copies, and it keeps the standby replica. */
  moverGroup: string;
  source: RepositoryLocation;
  target: RepositoryLocation;
  disks: { diskId: string; sizeBytes: number }[];
  /** Folder (on the DR movers) of the warm standby replica: `<replicaDir>/<vmId>/<diskId>.raw`; null keeps none. */
  replicaDir: string | null;
  /** When the backup's snapshot was taken: the recovery point a failover to it gives. */
  recoveryPoint: string;
}

/** What a DR mover reports for one disk copied to the DR repository. */
export interface ReplicatedDisk {
  diskId: string;
  /** Distinct chunks the disk's manifest references. */
  chunks: number;
  /** Chunks the target lacked and that were copied (each opened and checked first); format 2: the disk's chunks in the packs copied. */
  chunksCopied: number;
  /** Stored bytes copied: chunk objects (format 1) or packs and the index objects listing them (format 2), the manifest and (with the first disk) the VM config. */
  bytesCopied: number;
  seconds: number;
}

/** What a DR mover reports for one disk of the standby replica brought to a backup. */
export interface StandbyDisk {
  diskId: string;
  path: string;
  sizeBytes: number;
  /** The backup the replica disk held before (null: none, or a half-written update, so every chunk was compared). */
  fromBackupId: string | null;
  chunksWritten: number;
  bytesWritten: number;
  chunksUnchanged: number;
  /** Hex SHA-256 of the replica disk after the update (re-read and every chunk id checked). */
  sha256: string;
  seconds: number;
}

/** Activity task inputs of the recovery workflows, discriminated by `task`. */
export type RecoveryTask =
  | { task: 'restoreDisk'; restore: RestoreJob; disk: RestoreDiskTarget }
  | { task: 'restoreVmConfig'; restore: RestoreJob; disks: RestoredDisk[] }
  | { task: 'discardPoolVolumes'; restore: RestoreJob }
  | { task: 'deepVerifyDisk'; verify: DeepVerifyJob; disk: { diskId: string; sizeBytes: number } }
  | { task: 'replicateDisk'; replicate: ReplicateJob; disk: { diskId: string; sizeBytes: number }; index: number }
  | { task: 'updateStandbyDisk'; replicate: ReplicateJob; disk: { diskId: string; sizeBytes: number } }
  | { task: 'standbyVmConfig'; replicate: ReplicateJob; disks: StandbyDisk[] }
  | { task: 'restoreTest'; test: RestoreTestJob }
  /** Serve a backup's disks over NBD until idle or stopped (contracts/export-job.ts; `export` is unknown input until parsed). */
  | { task: 'export'; export: ExportJob }
  /** Instant recovery of a whole VM (RestoreJob with `define` and `instant`). */
  | { task: 'instantRecover'; restore: RestoreJob }
  /** List or extract files of a backup's disk (contracts/files-job.ts; `files` is unknown input until parsed). */
  | { task: 'files'; files: unknown }
  /** Failback steps (contracts/failback.ts; unknown input until parsed). */
  | { task: 'failbackDisk' | 'stopDrVm' | 'startProductionVm'; failback: unknown };

export const recoveryTaskNames: readonly string[] = ['restoreDisk', 'restoreVmConfig', 'discardPoolVolumes', 'deepVerifyDisk', 'replicateDisk', 'updateStandbyDisk', 'standbyVmConfig', 'restoreTest', 'export', 'instantRecover', 'files', 'failbackDisk', 'stopDrVm', 'startProductionVm'];
