/**
 * The data that flows through the Backup workflow: what Plan emits per VM, what each
 * mover task takes and returns. Both the handlers and the mover import these; the state
 * machine's paths (`$.snapshot`, `$.disks`, ...) name these fields.
 */

import type { StorageEndpoint } from './endpoints.ts';
import type { LibvirtExports } from './libvirt-exports.ts';

/** Repository coordinates a mover needs: where to write, and how. */
export interface RepositoryRef {
  bucket: string;
  /** The bucket's S3-compatible endpoint, when it is not the stack's own S3 (contracts/endpoints.ts). */
  endpoint?: StorageEndpoint;
  /** Chunk size in bytes, fixed per repository (see repository/format.ts). */
  chunkSize: number;
}

/** One VM's work item, emitted by Plan and carried through the per-VM iteration. */
export interface VmJob {
  runId: string;
  policyId: string;
  backupId: string;
  vmId: string;
  host: string;
  moverGroup: string;
  /** Where the source driver finds the VM (for the folder driver: a directory). */
  source: string;
  repository: RepositoryRef;
  parentBackupId: string | null;
  /** The parent backup's manifest key per disk id: chunks listed there are not re-sent. */
  parentManifests: Record<string, string>;
  /**
   * Concurrency limits this VM's backup counts against: its host, and each datastore of
   * its disks that has a limit. AcquireSlot takes one slot in every scope, or none.
   */
  slotScopes: SlotScope[];
  /** Filled by AcquireSlot; null until then. */
  slot: SlotLease | null;
  /** The driver and hypervisor of the VM's host (absent: the folder driver). */
  hypervisor?: Hypervisor;
  /** The policy's quiesce hooks (absent: freeze through the agent, no hooks). */
  quiesce?: QuiesceSettings;
  /** The parent backup's checkpoint, if it recorded one: the snapshot reads the changes since it. */
  parentCheckpoint?: string | null;
  /** Filled by Snapshot; null until then, so cleanup after a failure knows what to release. */
  snapshot: SnapshotResult | null;
  /**
   * The oldest mover version allowed to run this job (core/version.ts). Plan always sets it;
   * an older mover upgrades itself from a signed release before taking the job (mover/upgrade.ts).
   */
  minMoverVersion?: string;
  /** Disks larger than this are split into segments of this size, transferred in parallel by different movers. */
  segmentBytes: number;
  /**
   * Chunk ids the control plane quarantined in this repository (a deep verification found
   * their objects damaged and moved them aside, repository/quarantine.ts): not trusted from the
   * parent manifest, so they are checked against the repository and uploaded again.
   */
  healChunks?: string[];
}

/** A contiguous, chunk-aligned part of a disk, transferred as one Dispatch task. */
export interface DiskSegment {
  index: number;
  count: number;
  offset: number;
  length: number;
}

/**
 * The manifest id of one segment of a disk: its manifest is stored like a disk's
 * (keys.manifest(backupId, segmentManifestId(...))) and JoinSegments merges them into
 * the disk's manifest.
 */
export const segmentManifestId = (diskId: string, index: number) => `${diskId}.seg-${index}`;

/** One Dispatch task: a whole disk (segment null) or one segment of it. */
export interface DispatchItem {
  disk: DiskRef;
  segment: DiskSegment | null;
}

export interface SlotScope {
  /** `host:<host>` or `datastore:<host>/<datastore>`. */
  scope: string;
  limit: number;
}

export interface SlotLease {
  /** One catalog key (`pk|sk`) per scope held. */
  keys: string[];
  holder: string;
}

/**
 * What a snapshot's disk offers for changed-block tracking: the changes since the
 * checkpoint of backup `sinceBackupId` (a dirty bitmap the reader lists), or why it
 * offers none (first backup, checkpoint lost, VM shut off, ...).
 */
export type ChangeTrackingOffer = { since: string; sinceBackupId: string } | { unavailable: string };

/** Whether one disk's transfer read only the changed extents, and if not, why (the run's report shows it). */
export type ChangeTracking = { used: true; since: string } | { used: false; reason: string };

/** A disk of a snapshot, as the source driver presents it. */
export interface DiskRef {
  diskId: string;
  /**
   * Driver-specific locator of the frozen disk contents: for the folder driver a file, for
   * the libvirt driver an NBD URI (`nbd+unix:///vda?socket=...`).
   */
  path: string;
  sizeBytes: number;
  /** Absent: the driver does not track changes (every byte is read and compared by id). */
  changeTracking?: ChangeTrackingOffer;
}

/** How consistent a snapshot is, and why (a guest agent that did not answer, a VM that was off). */
export interface Consistency {
  level: 'application' | 'filesystem' | 'crash';
  reason: string;
}

export interface SnapshotResult {
  handle: string;
  disks: DiskRef[];
  /** The VM's configuration as the hypervisor describes it (stored with the backup). */
  config: Record<string, unknown>;
  /** The checkpoint this snapshot created: the next backup reads the changes since it (committed with the backup). */
  checkpoint?: string;
  consistency?: Consistency;
}

/** A VM as a host's hypervisor describes it (the Discover workflow's inventory). */
export interface DiscoveredVm {
  name: string;
  uuid: string;
  /** The hypervisor's word for it: `running`, `shut off`, `paused`, ... */
  state: string;
  /** Tags from the domain's metadata (`<lifeboat:tags>`), for policies that select by tag. */
  tags: string[];
  /** Whether it has a guest agent channel (backups can be quiesced). */
  agent: boolean;
  disks: { target: string; type: string; format: string; sizeBytes: number; source?: string }[];
}

/**
 * How a policy quiesces its VMs: commands run inside the guest through its agent before
 * the file systems are frozen (`pre`: flush a database, ...) and after they are thawed
 * (`post`), each an argv (`["/usr/local/bin/db-flush", "--all"]`). A failing `pre` fails the
 * VM's backup unless `onHookFailure` is `continue` (then it is taken crash-consistent).
 */
export interface QuiesceSettings {
  pre?: string[];
  post?: string[];
  /** Seconds each hook may run (default 300). */
  hookTimeoutSeconds?: number;
  onHookFailure?: 'fail' | 'continue';
}

/** Which driver reads a VM, and where its hypervisor is: from the host's configuration. */
export type Hypervisor = { driver: 'folder' } | {
  driver: 'libvirt';
  uri: string;
  /** How backup jobs export the disks (absent: a unix socket, the mover on the host). */
  exports?: LibvirtExports;
};

/** Counters from one disk's transfer. */
export interface TransferStats {
  bytesScanned: number;
  /** Bytes of chunks that were not all-zero and not in the parent backup. */
  bytesNew: number;
  /** Bytes of all-zero chunks (never stored). */
  bytesZero: number;
  /**
   * Of bytesZero, those in holes the source reported (a thin disk's unallocated space):
   * not even read. Absent from the stats of movers that did not map holes.
   */
  bytesUnallocated?: number;
  /** Of bytesScanned, those taken from the parent backup unread because changed-block tracking said they had not changed. */
  bytesUnchanged?: number;
  /** Bytes actually read from the source. */
  bytesRead?: number;
  /** Plaintext bytes of the chunks this transfer uploaded. */
  bytesUploaded: number;
  /** Bytes written to the repository (after compression and encryption). */
  bytesStored: number;
  chunks: number;
  zeroChunks: number;
  parentChunks: number;
  dedupedChunks: number;
  uploadedChunks: number;
  seconds: number;
  /** Storage requests retried (throttling, 5xx, dropped connections) while the mover ran this transfer; absent from older movers. */
  storageRetries?: number;
}

export interface DiskResult {
  diskId: string;
  sizeBytes: number;
  manifestKey: string;
  stats: TransferStats;
  /** Set on the result of one segment's transfer; JoinSegments turns those into one result per disk. */
  segment?: DiskSegment;
  /** Absent where the driver tracks no changes. */
  changeTracking?: ChangeTracking;
}

/** Inputs of the activity tasks, discriminated by `task`. */
export type MoverTask =
  | { task: 'snapshot'; job: VmJob }
  | { task: 'dispatch'; job: VmJob; disk: DiskRef; segment?: DiskSegment | null }
  | { task: 'releaseSnapshot'; job: VmJob };

/** A finished VM iteration, as Summarize sees it. */
export interface VmOutcome {
  vmId: string;
  backupId: string;
  status: 'committed' | 'failed';
  error?: { Error: string; Cause: string };
  /** How consistent the committed backup is, and why. */
  consistency?: Consistency;
  /** Disks of a committed backup that were read whole although the source tracks changes, and why. */
  fullReads?: { diskId: string; reason: string }[];
}
