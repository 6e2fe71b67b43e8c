/** The catalog's records (catalog.ts reads and writes them): policies, hosts, VMs, backups, restore tests, settings. */
import type { Retention } from '../../core/config.ts';
import type { DiscoveredVm } from '../../contracts/discovery.ts';
import type { ReplicaJob } from '../../contracts/dr.ts';
import type { StorageEndpoint } from '../../contracts/endpoints.ts';
import type { Consistency, DiskResult, Hypervisor, QuiesceSettings } from '../../contracts/jobs.ts';
import type { RestoreTestSettings } from '../../contracts/restore-test.ts';

export interface Policy {
  policyId: string;
  /** VMs selected by id ... */
  vmIds: string[];
  /** ... and every inventory VM on these hosts (filtered by `names` and `tags` when given). */
  hosts?: string[];
  /** Name patterns (`*`, `?`): of the hosts' VMs, those whose name matches one (core/config.ts matchesNamePattern). */
  names?: string[];
  /** Of the hosts' VMs, those carrying any of these tags (and matching `names`, if given). */
  tags?: string[];
  /** Repository bucket and chunk size the policy's backups go to. */
  bucket: string;
  chunkSize: number;
  /** Concurrent backups of this policy per hypervisor host (the host's own limit also applies). */
  slotLimit: number;
  repositoryId?: string;
  retention?: Retention;
  rpoHours?: number;
  /** The endpoint of the policy's repository, when it is not the stack's own S3. */
  endpoint?: StorageEndpoint;
  /**
   * The repository backups are replicated to after each run, if any: its bucket and
   * endpoint, the DR mover group that copies into it and the folder of its warm standby replica.
   */
  replicateTo?: {
    repositoryId: string;
    bucket: string;
    endpoint?: StorageEndpoint;
    moverGroup?: string;
    standbyPath?: string;
    replicaVms?: ReplicaTarget;
    /** Hours the newest DR restore point may age before the DR alert (configuration: drRpoHoursOf). */
    drRpoHours?: number;
  };
  /** Commands run in each guest around the freeze. */
  quiesce?: QuiesceSettings;
  /** Disks larger than this are split into segments for parallel transfer (default: Plan's DEFAULT_SEGMENT_BYTES). */
  segmentBytes?: number;
  /** Restore tests of the policy's libvirt VMs at deep verifications (contracts/restore-test.ts). */
  restoreTest?: RestoreTestSettings;
  /** 'config' for policies written by SyncConfig (removed again when the configuration drops them). */
  managedBy?: 'config';
}

/** Where a DR repository keeps replica VMs: the DR site, its libvirt host, its network map and the restore points kept (contracts/dr.ts). */
export type ReplicaTarget = ReplicaJob;

/** A hypervisor host as configured: which mover group serves it, and its concurrency limits. */
export interface Host {
  hostId: string;
  moverGroup: string;
  site: string;
  maxConcurrentBackups: number;
  /** Concurrent backups allowed per datastore of this host, by datastore id. */
  datastores: Record<string, number>;
  /** The source driver and hypervisor (absent: the folder driver). */
  hypervisor?: Hypervisor;
}

/** A VM of the inventory. Its host decides which mover group backs it up. */
export interface Vm {
  vmId: string;
  host: string;
  source: string;
  /** Datastores holding the VM's disks (each may have its own concurrency limit). */
  datastores?: string[];
  /** The VM's name on its hypervisor (a discovered VM's domain name; policies match `names` against it, else against the id). */
  name?: string;
  /**
   * When the Discover workflow last found the VM on its host. Absent: the VM was added by
   * hand, and discovery never changes or marks it.
   */
  discoveredAt?: string;
  /** What discovery found (a discovered VM only). */
  uuid?: string;
  state?: string;
  tags?: string[];
  agent?: boolean;
  disks?: DiscoveredVm['disks'];
  /** The last discovery did not find the VM on its host: backups skip it and report it failed (never deleted). */
  gone?: boolean;
  goneSince?: string;
}

/** What recording one discovered VM did: a new VM, one seen before, one that was gone and is back, or a VM added by hand with that id (left alone). */
export type DiscoveredVmWrite = 'new' | 'seen' | 'returned' | 'manual';

/** A restore test: the backup restored as a new VM, booted without network, and removed. */
export interface RestoreTest {
  passed: boolean;
  /** From the start of the test VM to its sign of life (or to giving up). */
  seconds: number;
  /** The restore (Restore workflow) or deep verification (DeepVerify with a restore test) that ran it. */
  restoreId: string;
  at: string;
  /** Why it did not pass. */
  reason?: string;
}

export type BackupStatus = 'running' | 'committed' | 'failed';

export interface Backup {
  vmId: string;
  backupId: string;
  runId: string;
  policyId: string;
  status: BackupStatus;
  parentBackupId: string | null;
  startedAt: string;
  committedAt?: string;
  disks?: DiskResult[];
  /** The hypervisor checkpoint the backup's snapshot created: the next backup reads only what changed since. */
  checkpoint?: string;
  consistency?: Consistency;
  /** The latest restore test of this backup. */
  restoreTest?: RestoreTest;
  /** The latest deep verification that found the backup intact (recovery-catalog.ts markVerified). */
  verified?: { verifyId: string; at: string; chunksChecked: number; chunksTotal: number };
  error?: { Error: string; Cause: string };
}

/** Where host configuration backups go and how many per host are kept: SyncConfig writes it from `hostConfigBackup`. */
export interface HostConfigSettings {
  repositoryId: string;
  bucket: string;
  endpoint?: StorageEndpoint;
  keep: number;
}
