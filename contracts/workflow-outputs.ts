/**
 * What the workflows return (their last state's output): the Backup run's summary, a
 * restore's, a deep verification's, a discovery's and a host configuration backup's. The
 * CLI, the embedded stack's demos and the benchmarks read these; the functions build them.
 */
import type { DefinedDomain, DamageFinding, InstantRecovery, RestoredDisk } from './recovery-jobs.ts';
import type { RepositoryLocation } from './endpoints.ts';
import type { RestoreTestJob } from './restore-test.ts';
import type { TransferStats, VmOutcome } from './jobs.ts';
import type { HostConfigResult } from './host-config.ts';

// functions/backup/summarize.ts

/** Outcomes listed in a run's summary at most (failed first): the summary is a payload and a catalog item, both capped. */
export const SUMMARY_VMS_LISTED = 100;

export interface RunSummary {
  runId: string;
  policyId: string;
  /** Per-VM outcomes, failed first, at most {@link SUMMARY_VMS_LISTED}; every VM's is on its backup record. */
  vms: VmOutcome[];
  /** Outcomes not listed in `vms` (0 for a run of up to 100 VMs). */
  vmsNotListed: number;
  committed: number;
  failed: number;
  totals: Omit<TransferStats, 'seconds'>;
}

// functions/restore/restore.ts

export interface RestoreSummary {
  restoreId: string;
  vmId: string;
  backupId: string;
  target: string;
  disks: RestoredDisk[];
  /** The restored VM description (whole-VM restores only). */
  vmConfigPath: string | null;
  bytesRestored: number;
  bytesDownloaded: number;
  /** Every chunk of every disk was re-read from the target and matched its id. */
  verified: true;
  /** The libvirt domain the restore defined (`define`), with its restore test's result. */
  domain?: DefinedDomain;
  /** Set when an older backup was restored because newer ones are damaged (see resolveBackup). */
  notice?: string;
}

/** An instant recovery's outcome: the VM runs on its final disks (moved while it ran, not re-hashed: the guest wrote to them all along). */
export interface InstantRestoreSummary {
  restoreId: string;
  vmId: string;
  backupId: string;
  target: string;
  instant: InstantRecovery;
  notice?: string;
}

// functions/deep-verify/deep-verify.ts

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
  /**
   * The restore test due after this clean verification: the workflow's RestoreTest runs it,
   * then RecordRestoreTest replaces it by `restoreTest`. Absent when none is due.
   */
  restoreTestJob?: RestoreTestJob;
  /** The restore test's outcome, or why none ran although one was asked for. */
  restoreTest?: RestoreTestOutcome | { skipped: string };
  /** The event's detail (EventBridge `Lifeboat Restore Test Failed`) when the restore test failed; absent otherwise. */
  restoreTestFailed?: RestoreTestFailedEvent;
}

/** A VM's deep verification as a policy's verification lists it: its summary without the lists that grow with its damage. */
export type DeepVerifiedVm = Omit<DeepVerifySummary, 'findings' | 'event' | 'repository' | 'healed' | 'restoreTestJob'> & {
  findingsCount: number;
  /** This verification found intact a backup that was `damaged`. */
  healed: boolean;
};

/** A VM a policy-wide workflow did not get through: its child execution's error. */
export interface PolicyVmFailure {
  vmId: string;
  backupId?: string;
  error: string;
  cause: string;
}

/** What a policy-wide workflow left out, and why. */
export interface PolicyVmSkipped {
  vmId: string;
  reason: string;
}

/**
 * The output of DeepVerifyPolicy (and of RecordDeepVerifyPolicy): counts over every VM, and
 * the first VMs by name (damaged first) as far as a payload allows; every VM's summary is in
 * the Map Run's result files (`results`: its manifest in the stack's bucket).
 */
export interface DeepVerifyPolicySummary {
  verifyId: string;
  policyId: string;
  /** VMs whose verification ran (one child execution each). */
  vms: number;
  verifiedCount: number;
  damagedCount: number;
  failedCount: number;
  verified: DeepVerifiedVm[];
  failed: PolicyVmFailure[];
  skipped: PolicyVmSkipped[];
  skippedCount: number;
  results: { bucket: string; key: string };
  /** Set when a VM's verification failed: the execution then fails with it (after recording it). */
  error?: { Error: string; Cause: string };
}

/** The detail of a `Lifeboat Restore Test Failed` event. */
export interface RestoreTestFailedEvent {
  vmId: string;
  backupId: string;
  verifyId: string;
  reason: string;
  /** As the outcome's `seconds`: from the start of the test VM to giving up (0 when it never started). */
  seconds: number;
}

/** A restore test as the deep verification reports it (and the backup records it: passed, seconds, reason). */
export interface RestoreTestOutcome {
  passed: boolean;
  /** From the start of the test VM to its sign of life, or to giving up (0 when it never started). */
  seconds: number;
  /** Restoring the disks (0 when it never finished). */
  restoreSeconds: number;
  domain: string | null;
  line?: string;
  agent?: boolean;
  reason?: string;
  /** Leftover test domains and folders of dead movers the mover removed first. */
  swept: string[];
}

// functions/discover/inventory.ts

/** Counts of one host's inventory so far (carried from page to page); `next` is where the next page starts, null after the last. */
export interface HostInventory {
  hostId: string;
  /** VMs on the host. */
  found: number;
  /** Of those, first recorded by this discovery. */
  new: number;
  /** Of those, marked gone before and back now. */
  returned: number;
  /** Of those, whose id a VM added by hand already has (left alone). */
  manual: number;
  /** Discovered VMs of the host no longer there, marked gone by this discovery (or one running beside it). */
  gone: number;
  /** Discovered VMs of the host that were already gone before this discovery. */
  stillGone: number;
  next: string | null;
}

/** A host the Discover execution could not inventory: the mover's or the function's error. */
export interface HostFailure {
  hostId: string;
  error: { Error: string; Cause?: string };
}

export interface DiscoverySummary {
  discoveryId: string;
  hosts: (Omit<HostInventory, 'next'> | HostFailure)[];
  /** Totals over the hosts that were inventoried. */
  found: number;
  new: number;
  gone: number;
  /** Hosts that could not be inventoried (unreachable URI, no mover answering). */
  failedHosts: string[];
}

// functions/host-config/backups.ts

/** One host's outcome: its new archive, and what retention removed or could not remove. */
export interface HostConfigOutcome extends HostConfigResult {
  /** Archives of the host now stored (this one included). */
  kept: number;
  /** Backup ids of older archives deleted with their records. */
  deleted: string[];
  /** Archives no record named, older than a day, deleted. */
  orphansDeleted: number;
  /** Archives the repository refused to delete (Object Lock, permissions): their records stay, the next run tries again. */
  notDeleted?: { key: string; reason: string }[];
}

/** A host the execution could not back up, with the error the workflow caught. */
export interface HostConfigFailure {
  hostId: string;
  error: { Error: string; Cause?: string };
}

export interface HostConfigSummary {
  runId: string;
  hosts: (HostConfigOutcome | HostConfigFailure)[];
  succeeded: number;
  failedHosts: string[];
}
