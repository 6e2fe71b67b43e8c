/**
 * Every Lambda function of the control plane: its id (also its CDK construct id and the
 * LIFEBOAT_FUNCTION environment variable), its entry file and exported handler. The CDK
 * app bundles from this list; the embedded stack loads the same modules from it.
 */
export const lambdaFunctions = {
  Plan: { entry: 'functions/plan.ts', handler: 'handler' },
  AcquireSlot: { entry: 'functions/slots.ts', handler: 'acquireHandler' },
  PlanDispatch: { entry: 'functions/dispatch.ts', handler: 'planHandler' },
  JoinSegments: { entry: 'functions/dispatch.ts', handler: 'joinHandler' },
  ReleaseSlot: { entry: 'functions/slots.ts', handler: 'releaseHandler' },
  Verify: { entry: 'functions/verify.ts', handler: 'handler' },
  Commit: { entry: 'functions/commit.ts', handler: 'handler' },
  RecordFailure: { entry: 'functions/record-failure.ts', handler: 'handler' },
  AcquireRunLease: { entry: 'functions/run-lease.ts', handler: 'acquireHandler' },
  ReleaseRunLease: { entry: 'functions/run-lease.ts', handler: 'releaseHandler' },
  PlanReconcile: { entry: 'functions/reconcile.ts', handler: 'handler' },
  Summarize: { entry: 'functions/summarize.ts', handler: 'handler' },
  SyncConfig: { entry: 'functions/sync-config.ts', handler: 'handler' },
  OnDeploy: { entry: 'functions/on-deploy.ts', handler: 'handler' },
  PlanRestore: { entry: 'functions/restore.ts', handler: 'planHandler' },
  RecordRestore: { entry: 'functions/restore.ts', handler: 'recordHandler' },
  RecordRestoreFailure: { entry: 'functions/restore.ts', handler: 'recordFailureHandler' },
  PlanDeepVerify: { entry: 'functions/deep-verify.ts', handler: 'planHandler' },
  PlanDeepVerifyPolicy: { entry: 'functions/deep-verify.ts', handler: 'planPolicyHandler' },
  RecordDeepVerify: { entry: 'functions/deep-verify.ts', handler: 'recordHandler' },
  RecordRestoreTest: { entry: 'functions/deep-verify.ts', handler: 'recordRestoreTestHandler' },
  QuarantineDamage: { entry: 'functions/quarantine.ts', handler: 'handler' },
  PlanPrune: { entry: 'functions/prune.ts', handler: 'planHandler' },
  PruneBackup: { entry: 'functions/prune.ts', handler: 'pruneHandler' },
  RecordPrune: { entry: 'functions/prune.ts', handler: 'recordHandler' },
  CollectGarbage: { entry: 'functions/gc.ts', handler: 'handler' },
  ReleaseGcLease: { entry: 'functions/gc-lease.ts', handler: 'releaseHandler' },
  PlanReplicate: { entry: 'functions/replicate.ts', handler: 'planHandler' },
  PlanReplicatePolicy: { entry: 'functions/replicate.ts', handler: 'planPolicyHandler' },
  AcquireReplicaLease: { entry: 'functions/replicate.ts', handler: 'acquireLeaseHandler' },
  ReleaseReplicaLease: { entry: 'functions/replicate.ts', handler: 'releaseLeaseHandler' },
  VerifyReplica: { entry: 'functions/replicate.ts', handler: 'verifyReplicaHandler' },
  RecordReplication: { entry: 'functions/replicate.ts', handler: 'recordHandler' },
  ReportReplication: { entry: 'functions/replication-report.ts', handler: 'handler' },
  PlanFailover: { entry: 'functions/replicate.ts', handler: 'planFailoverHandler' },
  RecordFailover: { entry: 'functions/replicate.ts', handler: 'recordFailoverHandler' },
  RecordRecoveryFailure: { entry: 'functions/recovery-failure.ts', handler: 'handler' },
  ListDiscoveryHosts: { entry: 'functions/discover.ts', handler: 'listHostsHandler' },
  RecordInventory: { entry: 'functions/discover.ts', handler: 'recordHandler' },
  SummarizeDiscovery: { entry: 'functions/discover.ts', handler: 'summarizeHandler' },
} as const;

export type LambdaFunctionId = keyof typeof lambdaFunctions;
