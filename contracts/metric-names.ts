/**
 * Names of the custom metrics the functions publish (Powertools EMF, dimensions
 * `service` and `policyId`). The CDK app's alarms and dashboard reference the same names.
 */
export const summaryMetrics = {
  oldestRecoveryPointAgeHours: 'OldestRecoveryPointAgeHours',
  vmsCommitted: 'VmsCommitted',
  vmsFailed: 'VmsFailed',
  bytesStored: 'BytesStored',
  /** Storage requests the movers retried for the run's committed backups (throttling, 5xx, dropped connections). */
  storageRetries: 'StorageRetries',
} as const;

/** Published by any function whose S3 requests needed retries (dimension `service`). */
export const storageMetrics = {
  /** Attempts the SDK made again for the control plane's own S3 requests (each also a `storage.retry` log line). */
  controlPlaneStorageRetries: 'ControlPlaneStorageRetries',
} as const;

/**
 * DR metrics (ReportReplication, after every Backup run of a replicating policy and at the
 * end of each ReplicatePolicy), dimensions `service` and `policyId`.
 */
export const replicationMetrics = {
  /** Hours since the newest recovery point of the policy's VM whose newest verified DR copy is oldest. */
  drRecoveryPointAgeHours: 'DrRecoveryPointAgeHours',
  /** 1 when a Backup run committed backups but could not start their replication (ReplicationNotStarted), else 0. */
  replicationStartFailed: 'ReplicationStartFailed',
} as const;

/** Discovery metrics (SummarizeDiscovery, at the end of every Discover execution), dimension `service`. */
export const discoveryMetrics = {
  /** Hosts the execution could not inventory (an unreachable libvirt URI, no mover answering). */
  hostsFailed: 'DiscoveryHostsFailed',
  /** Discovered VMs the execution marked gone (no longer on their host). */
  vmsGone: 'DiscoveredVmsGone',
} as const;

/** Host configuration backup metrics (SummarizeHostConfigBackup, at the end of every HostConfigBackup execution), dimension `service`. */
export const hostConfigMetrics = {
  /** Hosts whose configuration the execution could not back up (an unreachable libvirt URI, no mover answering). */
  hostsFailed: 'HostConfigBackupHostsFailed',
} as const;

/** Restore test metrics (RecordRestoreTest, once per restore test of a deep verification), dimension `service`. */
export const restoreTestMetrics = {
  /** 1 for a restore test that failed: no sign of life in time, or the test could not run to its end. */
  failed: 'RestoreTestsFailed',
  /** 1 for a restore test whose VM showed its sign of life. */
  passed: 'RestoreTestsPassed',
} as const;
