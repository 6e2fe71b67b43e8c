/**
 * Failback: after a real failover, the VM runs at the DR site (a libvirt domain on a DR
 * host, protected there by a DR-site policy that backs it up into a DR repository with
 * changed-block tracking). The Failback workflow brings the production VM's disks from the
 * failover's recovery point B (a backup of the production VM) to the DR VM's newest backup D
 * by writing only the chunks whose ids differ between B's and D's manifests, then switches
 * back with a short planned outage: the DR VM is shut down cleanly, a final backup is
 * taken at the DR site, its delta is applied, and the production VM is started and watched
 * until it is ready. Stated once here: the request, the plan, the mover tasks and their
 * answers, and the report. The functions, the mover and the state machine's paths use these.
 */
import { z } from 'zod';
import { repositoryLocation } from './endpoints.ts';
import { LifeboatError } from './errors.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

/** The sign of life of the production VM after failback (like a restore test's): a serial console line and/or the guest agent. */
export const failbackReadiness = z
  .object({
    consoleLine: text.optional(),
    agent: z.boolean().optional(),
    timeoutSeconds: z.number().int().min(5).max(3600).optional(),
  })
  .strict()
  .refine((r) => r.consoleLine !== undefined || r.agent === true, 'must name a sign of life: "consoleLine" (a regular expression) and/or "agent": true');

/** The Failback workflow's input. */
export const failbackRequest = z
  .object({
    /** The production VM (its inventory id): the failback writes its disks and starts it. */
    vmId: text,
    /** The VM running at the DR site since the failover (its inventory id on a DR-site host). */
    drVmId: text,
    /** The failover's recovery point: the production backup the DR VM was started from (default: the restore point of the VM's failover recorded in the catalog; without one, its newest backup complete in the DR repository). */
    baseBackupId: text.optional(),
    /** Seconds the DR VM gets to shut down cleanly (default 120). */
    shutdownTimeoutSeconds: z.number().int().min(5).max(3600).optional(),
    /** When the production VM counts as ready (default: the guest agent answers). */
    readiness: failbackReadiness.optional(),
  })
  .strict();
export type FailbackRequest = z.infer<typeof failbackRequest>;

/** A libvirt domain as the mover reaches it. */
export const domainRef = z.object({ uri: text, name: text }).strict();
export type DomainRef = z.infer<typeof domainRef>;

/** One side of a delta: a backup in a repository. */
export const backupRef = z.object({ backupId: text, repository: repositoryLocation }).strict();
export type BackupRef = z.infer<typeof backupRef>;

/** What PlanFailback resolved. */
export const failbackJob = z
  .object({
    failbackId: text,
    vmId: text,
    drVmId: text,
    /** The production site's mover group: it writes the production disks and starts the VM. */
    productionGroup: text,
    /** The DR site's mover group: it shuts the DR VM down. */
    drGroup: text,
    production: domainRef,
    dr: domainRef,
    /** The DR-site policy that backs the DR VM up (the final backup runs it for the DR VM). */
    drPolicyId: text,
    /** The failover's recovery point B, in the production repository. */
    base: backupRef,
    /** Where B came from: the request's `baseBackupId`, the VM's active failover in the catalog, or (no failover recorded) its newest backup complete in the DR repository. */
    baseFrom: z.enum(['request', 'failover', 'newestReplica']).optional(),
    /** The plan run of that active failover. */
    failoverRunId: text.optional(),
    /** The DR VM's newest backup D when the failback started, in the DR repository. */
    target: backupRef,
    disks: z.array(z.object({ diskId: text, sizeBytes: count }).strict()).min(1),
    /**
     * The production VM's replica VM at the DR site (when its DR repository keeps replica VMs):
     * after production is ready, a DR mover clears its failed-over state, so the next
     * replication updates it again (contracts/dr.ts).
     */
    replica: z.object({ replicaDir: text, uri: text, moverGroup: text }).strict().optional(),
    shutdownTimeoutSeconds: z.number().int().positive(),
    readiness: failbackReadiness,
  })
  .strict();
export type FailbackJob = z.infer<typeof failbackJob>;

/**
 * How a production disk is brought from `base` to `target`: `hash` reads every chunk of
 * the production disk and writes where it differs from the target (so a disk that no
 * longer matches the base is still made equal: the drift is counted); `trust` writes only
 * the chunks whose ids differ between the two manifests (the disk was just made equal to
 * `base` by this failback: the final delta during the outage).
 */
export const deltaMode = z.enum(['hash', 'trust']);

/** The mover task `failbackDisk`. */
export const failbackDiskTask = z
  .object({
    task: z.literal('failbackDisk'),
    failback: failbackJob,
    disk: z.object({ diskId: text, sizeBytes: count }).strict(),
    from: backupRef,
    to: backupRef,
    mode: deltaMode,
  })
  .strict();

/** What the mover reports for one production disk. */
export const failbackDiskResult = z
  .object({
    diskId: text,
    path: text,
    fromBackupId: text,
    toBackupId: text,
    mode: deltaMode,
    chunks: count,
    /** Chunks whose ids differ between the two manifests, and their bytes: what changed at the DR site. */
    chunksChanged: count,
    bytesChanged: count,
    /** `hash` mode: production chunks that no longer matched the base (written too when they differ from the target). */
    chunksDrifted: count,
    chunksWritten: count,
    bytesWritten: count,
    /** Sealed bytes fetched from the DR repository for the written chunks (zeros cost nothing): what crossed the WAN. */
    bytesSent: count,
    /** `hash` mode: SHA-256 of the production disk as it now is; null in `trust` mode (not read). */
    sha256: z.string().nullable(),
    seconds: z.number(),
  })
  .strict();
export type FailbackDiskResult = z.infer<typeof failbackDiskResult>;

/** The mover task `stopDrVm`: shut the DR VM down cleanly within `shutdownTimeoutSeconds`. */
export const stopDrVmTask = z.object({ task: z.literal('stopDrVm'), failback: failbackJob }).strict();
/** The mover task `startProductionVm`: start it and wait for its `readiness`. */
export const startProductionVmTask = z.object({ task: z.literal('startProductionVm'), failback: failbackJob }).strict();
/** The mover task `releaseReplica`: the replica VM, shut off, back on its newest restore point and no longer failed over. */
export const releaseReplicaTask = z.object({ task: z.literal('releaseReplica'), failback: failbackJob }).strict();
export type FailbackTask =
  | z.infer<typeof failbackDiskTask>
  | z.infer<typeof stopDrVmTask>
  | z.infer<typeof startProductionVmTask>
  | z.infer<typeof releaseReplicaTask>;

export const stoppedVm = z.object({ domain: text, state: text, seconds: z.number(), stoppedAt: text }).strict();
/** What `releaseReplica` did: the replica's domain (null: no replica VM), the failover run it was released from (null: it was not failed over), the point its disks are back on. */
export const releasedReplica = z
  .object({ domain: text.nullable(), failoverRunId: text.nullable(), backupId: text.nullable(), checkpointsRemoved: count })
  .strict();
export type ReleasedReplica = z.infer<typeof releasedReplica>;
export const startedVm = z
  .object({ domain: text, state: text, readySeconds: z.number(), readyAt: text, line: z.string(), agent: z.boolean().optional() })
  .strict();

/** The Failback workflow's output (also recorded as the FAILBACK record). */
export interface FailbackReport {
  failbackId: string;
  vmId: string;
  drVmId: string;
  baseBackupId: string;
  /** Where the base came from (the failover recorded in the catalog, the request, or the newest DR-complete backup), and the failover's plan run. */
  baseFrom?: 'request' | 'failover' | 'newestReplica';
  failoverRunId?: string;
  /** The catalog's failovers of the VM this failback ended (released). */
  failoversReleased?: string[];
  /** The DR VM's backup the bulk sync went to, and the final one taken after it stopped. */
  syncBackupId: string;
  finalBackupId: string;
  /** Over both deltas: what changed at the DR site, and what was written and sent. */
  bytesChanged: number;
  bytesWritten: number;
  bytesSent: number;
  chunksDrifted: number;
  /** From the DR VM's shutdown to the production VM being ready. */
  outageSeconds: number;
  production: { domain: string; state: string; readyAt: string };
  /** The replica VM released after the switch (absent: the production VM has no replica VM). */
  replica?: ReleasedReplica;
  disks: { sync: FailbackDiskResult[]; final: FailbackDiskResult[] };
}

/** The DR VM did not shut down within the time allowed. */
export class DrVmDidNotStop extends LifeboatError {
  static readonly code = 'Failback.DrVmDidNotStop';
  constructor(message: string) {
    super(DrVmDidNotStop.code, message, { retryable: false });
  }
}

/** The production VM did not show its sign of life after the failback. */
export class ProductionNotReady extends LifeboatError {
  static readonly code = 'Failback.ProductionNotReady';
  constructor(message: string) {
    super(ProductionNotReady.code, message, { retryable: false });
  }
}
