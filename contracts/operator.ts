/**
 * The operator's views as the read-only operator API answers them (functions/operator/):
 * what `lifeboat vms|backups|runs|policies|restore-points|alerts --json` print and the web
 * console renders. Stated once here; the API builds them, the CLI and the console read them.
 */
import { z } from 'zod';
import type { Consistency } from './jobs.ts';
import type { TaskProgress } from './progress.ts';

export type RpoStatus = 'ok' | 'late' | 'never' | 'none';

export interface VmRow {
  vmId: string;
  name: string;
  host: string;
  /** The mover group serving its host: it backs the VM up (and, by default, restores and verifies it). */
  moverGroup: string;
  /** `protected`: a policy selects it; `gone`: discovery no longer finds it. */
  protection: 'protected' | 'unprotected' | 'gone';
  policies: string[];
  lastBackup: { backupId: string; at: string; status: string } | null;
  consistency: Consistency['level'] | null;
  /** The tightest RPO of its policies, in hours. */
  rpoHours: number | null;
  recoveryPointAgeHours: number | null;
  /** `late`: past its RPO; `never`: no committed backup yet; `none`: no policy sets an RPO. */
  rpo: RpoStatus;
  /** The tightest DR RPO of its replicating policies, in hours (`drRpoHours`, default twice `rpoHours`); null: none replicates it. */
  drRpoHours: number | null;
  /** Replication lag: hours since the newest restore point at the DR site was taken (its backup's start); null: none there yet. */
  drLagHours: number | null;
  /** The backup that newest restore point at the DR site is. */
  drRestorePoint: string | null;
  /** `late`: lag past the DR RPO, or no restore point at the DR site while a backup older than the DR RPO exists; `never`: none there yet; `none`: not replicated. */
  drRpo: RpoStatus;
  /** Its active failover (the catalog's record: the plan run, the restore point the replica was powered on at, when); null: not failed over. */
  failedOver: { runId: string; plan: string; backupId: string; at: string } | null;
}

export interface BackupRow {
  vmId: string;
  backupId: string;
  policyId: string;
  runId: string;
  status: string;
  startedAt: string;
  committedAt: string | null;
  sizeBytes: number;
  bytesNew: number;
  bytesStored: number;
  consistency: Consistency['level'] | null;
  verified: { at: string; full: boolean } | null;
  damaged: boolean;
  damage: { verifyId: string; foundAt: string; objects: number } | null;
  error: { Error: string; Cause: string } | null;
}

export interface DiskProgressRow {
  diskId: string;
  segment: number | null;
  phase: TaskProgress['phase'];
  bytesDone: number;
  bytesTotal: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
  mover: string;
}

/**
 * The progress of one operation's disks (`GET /api/progress/<id>`): a restore or a deep
 * verification (its id is its execution's name), or a backup (its backup id).
 */
export interface OperationProgressRow {
  id: string;
  operation: NonNullable<TaskProgress['operation']>;
  vmId: string;
  backupId: string;
  bytesDone: number;
  bytesTotal: number;
  disks: DiskProgressRow[];
}

export interface RunVmRow {
  vmId: string;
  backupId: string;
  /** snapshot → transfer → verify (every disk moved, Verify/Commit pending) → committed | failed. */
  phase: 'snapshot' | 'transfer' | 'verify' | 'committed' | 'failed';
  bytesDone: number;
  bytesTotal: number;
  error: { Error: string; Cause: string } | null;
  disks: DiskProgressRow[];
}

export interface RunRow {
  runId: string;
  policyId: string | null;
  status: string;
  startedAt: string;
  stoppedAt: string | null;
  committed: number;
  failed: number;
  error: { Error: string; Cause: string } | null;
  vms: RunVmRow[];
}

export interface PolicyRow {
  policyId: string;
  repositoryId: string | null;
  bucket: string;
  vms: number;
  rpoHours: number | null;
  replicateTo: string | null;
  /** GFS retention as configured (keep-last, daily, weekly, ...). */
  retention: Record<string, unknown> | null;
}

export interface RestorePointRow {
  vmId: string;
  policyId: string;
  repositoryId: string;
  bucket: string;
  backupId: string;
  replicatedAt: string;
  ageHours: number;
}

export type AlertKind = 'damage' | 'rpo' | 'dr-rpo' | 'mover-group-silent' | 'run-failed';

export interface Alert {
  /** Stable while the condition lasts (a new damaged backup, a new late VM backup, a new failed run get a new id). */
  id: string;
  kind: AlertKind;
  /** What it is about: a backup, a VM, a mover group, a run. */
  subject: string;
  message: string;
  since: string;
}

/**
 * `POST /api/vms` (`lifeboat vm add`, the API's one write): put a VM into the inventory, or
 * move it to another host. Its host (one of the configuration's) decides its mover group.
 */
export const addVmRequest = z.strictObject({
  vmId: z.string().min(1).max(256),
  host: z.string().min(1).max(256),
  /** Where the host's source driver finds it (the folder driver: a folder with vm.json and disk images). */
  source: z.string().min(1).max(4096),
  datastores: z.array(z.string().min(1).max(256)).max(64).optional(),
});
export type AddVmRequest = z.infer<typeof addVmRequest>;

export interface AddVmAnswer {
  vmId: string;
  host: string;
  moverGroup: string;
}
