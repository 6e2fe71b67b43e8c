/**
 * The data that flows through the Backup workflow: what Plan emits per VM, what each
 * mover task takes and returns. Both the handlers and the mover import these; the state
 * machine's paths (`$.snapshot`, `$.disks`, ...) name these fields.
 */

/** Repository coordinates a mover needs: where to write, and how. */
export interface RepositoryRef {
  bucket: string;
  /** Chunk size in bytes, fixed per repository (see core/format). */
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
  slotLimit: number;
  /** Filled by AcquireSlot; null until then. */
  slot: SlotLease | null;
  /** Filled by Snapshot; null until then, so cleanup after a failure knows what to release. */
  snapshot: SnapshotResult | null;
  /**
   * The oldest mover version allowed to run this job (core/version.ts). Plan always sets it;
   * an older mover upgrades itself from a signed release before taking the job (mover/upgrade.ts).
   */
  minMoverVersion?: string;
}

export interface SlotLease {
  key: string;
  holder: string;
}

/** A disk of a snapshot, as the source driver presents it. */
export interface DiskRef {
  diskId: string;
  /** Driver-specific locator of the frozen disk contents (for the folder driver: a file). */
  path: string;
  sizeBytes: number;
}

export interface SnapshotResult {
  handle: string;
  disks: DiskRef[];
  /** The VM's configuration as the hypervisor describes it (stored with the backup). */
  config: Record<string, unknown>;
}

/** Counters from one disk's transfer. */
export interface TransferStats {
  bytesScanned: number;
  /** Bytes of chunks that were not all-zero and not in the parent backup. */
  bytesNew: number;
  /** Bytes of all-zero chunks (never stored). */
  bytesZero: number;
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
}

export interface DiskResult {
  diskId: string;
  sizeBytes: number;
  manifestKey: string;
  stats: TransferStats;
}

/** Inputs of the activity tasks, discriminated by `task`. */
export type MoverTask =
  | { task: 'snapshot'; job: VmJob }
  | { task: 'dispatch'; job: VmJob; disk: DiskRef }
  | { task: 'releaseSnapshot'; job: VmJob };

/** A finished VM iteration, as Summarize sees it. */
export interface VmOutcome {
  vmId: string;
  backupId: string;
  status: 'committed' | 'failed';
  error?: { Error: string; Cause: string };
}
