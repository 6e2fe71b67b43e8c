/**
 * The data that flows through the Backup workflow: what Plan emits per VM, what each
 * mover task takes and returns. zod schemas first, types inferred from them: the
 * functions' `lambdaHandler` and the mover parse with these, and the state machine's paths
 * (`$.snapshot`, `$.disks`, ...) name these fields. Objects are loose (unknown fields pass
 * through untouched), because the workflow carries state along.
 */
import { z } from 'zod';
import { storageEndpoint } from './endpoints.ts';
import { libvirtExports } from './libvirt-exports.ts';
import { count, text, type Infer } from './zod.ts';

/** Repository coordinates a mover needs: where to write, and how. */
export const repositoryRef = z.looseObject({
  bucket: text,
  /** The bucket's S3-compatible endpoint, when it is not the stack's own S3 (contracts/endpoints.ts). */
  endpoint: storageEndpoint.optional(),
  /** Chunk size in bytes, fixed per repository (see repository/format.ts). */
  chunkSize: z.number().int().positive(),
});
export type RepositoryRef = Infer<typeof repositoryRef>;

export const slotScope = z.looseObject({
  /** `host:<host>` or `datastore:<host>/<datastore>`. */
  scope: text,
  limit: z.number().int().positive(),
});
export type SlotScope = Infer<typeof slotScope>;

export const slotLease = z.looseObject({
  /** One catalog key (`pk|sk`) per scope held. */
  keys: z.array(text),
  holder: text,
});
export type SlotLease = Infer<typeof slotLease>;

/**
 * What a snapshot's disk offers for changed-block tracking: the changes since the
 * checkpoint of backup `sinceBackupId` (a dirty bitmap the reader lists), or why it
 * offers none (first backup, checkpoint lost, VM shut off, ...).
 */
export const changeTrackingOffer = z.union([z.strictObject({ since: text, sinceBackupId: text }), z.strictObject({ unavailable: text })]);
export type ChangeTrackingOffer = Infer<typeof changeTrackingOffer>;

/** Whether one disk's transfer read only the changed extents, and if not, why (the run's report shows it). */
export const changeTracking = z.union([z.strictObject({ used: z.literal(true), since: text }), z.strictObject({ used: z.literal(false), reason: text })]);
export type ChangeTracking = Infer<typeof changeTracking>;

/** A disk of a snapshot, as the source driver presents it. */
export const diskRef = z.looseObject({
  diskId: text,
  /**
   * Driver-specific locator of the frozen disk contents: for the folder driver a file, for
   * the libvirt driver an NBD URI (`nbd+unix:///vda?socket=...`).
   */
  path: text,
  sizeBytes: count,
  /** Absent: the driver does not track changes (every byte is read and compared by id). */
  changeTracking: changeTrackingOffer.optional(),
});
export type DiskRef = Infer<typeof diskRef>;

/** How consistent a snapshot is, and why (a guest agent that did not answer, a VM that was off). */
export const consistency = z.strictObject({ level: z.enum(['application', 'filesystem', 'crash']), reason: text });
export type Consistency = Infer<typeof consistency>;

export const snapshotResult = z.looseObject({
  handle: text,
  disks: z.array(diskRef),
  /** The VM's configuration as the hypervisor describes it (stored with the backup). */
  config: z.record(z.string(), z.unknown()),
  /** The checkpoint this snapshot created: the next backup reads the changes since it (committed with the backup). */
  checkpoint: text.optional(),
  consistency: consistency.optional(),
});
export type SnapshotResult = Infer<typeof snapshotResult>;

/**
 * How a policy quiesces its VMs: commands run inside the guest through its agent before
 * the file systems are frozen (`pre`: flush a database, ...) and after they are thawed
 * (`post`), each an argv (`["/usr/local/bin/db-flush", "--all"]`). A failing `pre` fails the
 * VM's backup unless `onHookFailure` is `continue` (then it is taken crash-consistent).
 */
export const quiesceSettings = z.strictObject({
  pre: z.array(text).min(1).optional(),
  post: z.array(text).min(1).optional(),
  /** Seconds each hook may run (default 300). */
  hookTimeoutSeconds: z.number().int().positive().optional(),
  onHookFailure: z.enum(['fail', 'continue']).optional(),
});
export type QuiesceSettings = Infer<typeof quiesceSettings>;

/** Which driver reads a VM, and where its hypervisor is: from the host's configuration. */
export const hypervisor = z.union([
  z.strictObject({ driver: z.literal('folder') }),
  z.strictObject({
    driver: z.literal('libvirt'),
    uri: text,
    /** How backup jobs export the disks (absent: a unix socket, the mover on the host). */
    exports: libvirtExports.optional(),
  }),
]);
export type Hypervisor = Infer<typeof hypervisor>;

/** One VM's work item, emitted by Plan and carried through the per-VM iteration. */
export const vmJob = z.looseObject({
  runId: text,
  policyId: text,
  backupId: text,
  vmId: text,
  host: text,
  moverGroup: text,
  /** Where the source driver finds the VM (for the folder driver: a directory). */
  source: text,
  repository: repositoryRef,
  parentBackupId: text.nullable(),
  /** The parent backup's manifest key per disk id: chunks listed there are not re-sent. */
  parentManifests: z.record(z.string(), z.string()),
  /**
   * Concurrency limits this VM's backup counts against: its host, and each datastore of
   * its disks that has a limit. AcquireSlot takes one slot in every scope, or none.
   */
  slotScopes: z.array(slotScope),
  /** Filled by AcquireSlot; null until then. */
  slot: slotLease.nullable(),
  /** Filled by Snapshot; null until then, so cleanup after a failure knows what to release. */
  snapshot: snapshotResult.nullable(),
  /** The driver and hypervisor of the VM's host (absent: the folder driver). */
  hypervisor: hypervisor.optional(),
  /** The policy's quiesce hooks (absent: freeze through the agent, no hooks). */
  quiesce: quiesceSettings.optional(),
  /** The parent backup's checkpoint, if it recorded one: the snapshot reads the changes since it. */
  parentCheckpoint: text.nullable().optional(),
  /**
   * The oldest mover version allowed to run this job (core/version.ts). Plan always sets it;
   * an older mover upgrades itself from a signed release before taking the job (mover/upgrade.ts).
   */
  minMoverVersion: z.string().optional(),
  /** Disks larger than this are split into segments of this size, transferred in parallel by different movers. */
  segmentBytes: z.number().int().positive(),
  /**
   * Chunk ids the control plane quarantined in this repository (a deep verification found
   * their objects damaged and moved them aside, repository/quarantine.ts): not trusted from the
   * parent manifest, so they are checked against the repository and uploaded again.
   */
  healChunks: z.array(text).optional(),
});
export type VmJob = Infer<typeof vmJob>;

/** A contiguous, chunk-aligned part of a disk, transferred as one Dispatch task. */
export const diskSegment = z.looseObject({ index: count, count: z.number().int().positive(), offset: count, length: count });
export type DiskSegment = Infer<typeof diskSegment>;

/**
 * The manifest id of one segment of a disk: its manifest is stored like a disk's
 * (objectKeys.manifest(backupId, segmentManifestId(...))) and JoinSegments merges them into
 * the disk's manifest.
 */
export const segmentManifestId = (diskId: string, index: number) => `${diskId}.seg-${index}`;

/** One Dispatch task: a whole disk (segment null) or one segment of it. */
export const dispatchItem = z.looseObject({ disk: diskRef, segment: diskSegment.nullable() });
export type DispatchItem = Infer<typeof dispatchItem>;

/** Counters from one disk's transfer. */
export const transferStats = z.looseObject({
  bytesScanned: count,
  /** Bytes of chunks that were not all-zero and not in the parent backup. */
  bytesNew: count,
  /** Bytes of all-zero chunks (never stored). */
  bytesZero: count,
  /**
   * Of bytesZero, those in holes the source reported (a thin disk's unallocated space):
   * not even read. Absent from the stats of movers that did not map holes.
   */
  bytesUnallocated: count.optional(),
  /** Of bytesScanned, those taken from the parent backup unread because changed-block tracking said they had not changed. */
  bytesUnchanged: count.optional(),
  /** Bytes actually read from the source. */
  bytesRead: count.optional(),
  /** Plaintext bytes of the chunks this transfer uploaded. */
  bytesUploaded: count,
  /** Bytes written to the repository (after compression and encryption). */
  bytesStored: count,
  chunks: count,
  zeroChunks: count,
  parentChunks: count,
  dedupedChunks: count,
  uploadedChunks: count,
  seconds: z.number().nonnegative(),
  /** Storage requests retried (throttling, 5xx, dropped connections) while the mover ran this transfer; absent from older movers. */
  storageRetries: count.optional(),
});
export type TransferStats = Infer<typeof transferStats>;

export const diskResult = z.looseObject({
  diskId: text,
  sizeBytes: count,
  manifestKey: text,
  stats: transferStats,
  /** Set on the result of one segment's transfer; JoinSegments turns those into one result per disk. */
  segment: diskSegment.optional(),
  /** Absent where the driver tracks no changes. */
  changeTracking: changeTracking.optional(),
});
export type DiskResult = Infer<typeof diskResult>;

/** Inputs of the Backup workflow's activity tasks, discriminated by `task`: the mover parses every one with this. */
export const moverTask = z.discriminatedUnion('task', [
  z.looseObject({ task: z.literal('snapshot'), job: vmJob }),
  z.looseObject({ task: z.literal('dispatch'), job: vmJob, disk: diskRef, segment: diskSegment.nullable().optional() }),
  z.looseObject({ task: z.literal('releaseSnapshot'), job: vmJob }),
]);
export type MoverTask = Infer<typeof moverTask>;

/** A finished VM iteration, as Summarize sees it. */
export const vmOutcome = z.looseObject({
  vmId: text,
  backupId: text,
  status: z.enum(['committed', 'failed']),
  error: z.object({ Error: z.string(), Cause: z.string() }).optional(),
  /** How consistent the committed backup is, and why. */
  consistency: consistency.optional(),
  /** Disks of a committed backup that were read whole although the source tracks changes, and why. */
  fullReads: z.array(z.strictObject({ diskId: text, reason: text })).optional(),
});
export type VmOutcome = Infer<typeof vmOutcome>;
