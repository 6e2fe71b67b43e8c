/**
 * What each Lambda function may touch: the catalog's DynamoDB actions, the repository's
 * S3 actions by key prefix, and the repository key. The stack turns these into IAM
 * statements on the exact table, prefixes and KMS key, and nothing else.
 *
 * A function added to contracts/functions.ts needs an entry here; without one it gets no
 * data access at all and test/cdk.test.ts names it.
 */
import { Stack } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { KMS_CONTEXT_PURPOSE } from '../../repository/keyring.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';

/** DynamoDB actions the catalog code sends (lib-dynamodb Get/Put/Update/Delete/Query/Scan). */
export type CatalogAction = 'GetItem' | 'PutItem' | 'UpdateItem' | 'DeleteItem' | 'Query' | 'Scan' | 'BatchGetItem' | 'BatchWriteItem' | 'ConditionCheckItem';

/**
 * Top-level prefixes of the repository bucket: repository/format.ts `keys` (chunk objects of
 * format 1, packs and index objects of format 2, manifests, the repository key), mover
 * records (core/mover-registry.ts), releases (core/release.ts), damaged chunks moved
 * aside (repository/quarantine.ts), host configuration backups (repository/host-config.ts), Backup
 * runs' VM lists and their child executions' results (`runs/`, cdk/lib/backup-workflow.ts).
 */
export type RepositoryPrefix =
  | 'chunks/'
  | 'packs/'
  | 'index/'
  | 'manifests/'
  | 'keys/'
  | 'movers/'
  | 'releases/'
  | 'quarantine/'
  | 'host-config/'
  | 'progress/'
  | 'runs/';

export interface FunctionAccess {
  catalog?: CatalogAction[];
  /** Query the catalog's secondary indexes too. */
  catalogIndexes?: boolean;
  repository?: {
    /** s3:GetObject (also HEAD) under these prefixes. */
    read?: RepositoryPrefix[];
    /** s3:PutObject under these prefixes. */
    write?: RepositoryPrefix[];
    /**
     * s3:ListBucket. Without it S3 answers HEAD of a missing key with 403 instead of 404,
     * so any code that asks "does this object exist" needs it.
     */
    list?: boolean;
    /** s3:DeleteObject under these prefixes (Prune: manifests of expired backups). */
    delete?: RepositoryPrefix[];
    /**
     * Object Lock: s3:GetObjectRetention under `read` (HEAD then reports an object's
     * retain-until) with s3:GetBucketObjectLockConfiguration, and s3:PutObjectRetention under
     * `extend`, which only ExtendLocks may have (test/cdk.test.ts checks the template).
     */
    retention?: { read?: RepositoryPrefix[]; extend?: RepositoryPrefix[] };
  };
  /** The repository KMS key: unwrap (kms:Decrypt) / wrap (kms:Encrypt) the repository key; read SSE-KMS objects. */
  repositoryKey?: ('unwrap' | 'wrap')[];
  /**
   * Step Functions reads of the Backup workflow (ListExecutions on it, DescribeExecution of
   * its executions), granted by the construct that knows it (cdk/lib/operator-api.ts).
   */
  backupExecutions?: ('ListExecutions' | 'DescribeExecution')[];
  /**
   * states:SendTaskSuccess: answers tasks waiting on a token (the slot queue answers the
   * AcquireSlot tasks of the Backup workflow's VMs). IAM cannot scope the tokens of a
   * service integration's task (`lambda:invoke.waitForTaskToken`) to a resource, so it is
   * granted on `*`.
   */
  taskResponses?: boolean;
  /** Seconds before Lambda stops the function (default 60). */
  timeoutSeconds?: number;
  memoryMiB?: number;
}

/**
 * Memory of the per-VM steps that only read and write a few catalog items or compute a
 * small plan: their time is the catalog's round trips, which more memory (and the CPU that
 * comes with it) does not shorten, and they run several times per VM-backup, so their
 * GB-seconds are most of the Backup workflow's Lambda bill.
 */
const LIGHT_MIB = 256;

export const functionAccess: Partial<Record<LambdaFunctionId, FunctionAccess>> = {
  // Query: also the repository's quarantined chunks, which each job re-checks.
  // The run's host list and each host's VM list to runs/ (read by the BackupHosts and BackupVms Maps), and one member item per VM (BatchWriteItem).
  Plan: { catalog: ['GetItem', 'Query', 'PutItem', 'BatchWriteItem'], repository: { write: ['runs/'] }, timeoutSeconds: 900 },
  // The slot queue (functions/catalog/slot-queue-catalog.ts): waiters and lines (Put, Get, Update, Delete, Query), the slots (conditional Put, Query, Delete).
  AcquireSlot: { catalog: ['PutItem', 'GetItem', 'UpdateItem', 'DeleteItem', 'Query'], taskResponses: true, memoryMiB: LIGHT_MIB },
  PlanDispatch: { memoryMiB: LIGHT_MIB },
  JoinSegments: { repository: { read: ['manifests/', 'keys/'], write: ['manifests/'] }, repositoryKey: ['unwrap'], timeoutSeconds: 300, memoryMiB: 1024 },
  ReleaseSlot: { catalog: ['PutItem', 'GetItem', 'UpdateItem', 'DeleteItem', 'Query'], taskResponses: true, memoryMiB: LIGHT_MIB },
  // HEADs the chunk objects (format 1) or packs (format 2) of the new manifests.
  Verify: { repository: { read: ['manifests/', 'chunks/', 'packs/', 'keys/'], list: true }, repositoryKey: ['unwrap'], timeoutSeconds: 900, memoryMiB: 1024 },
  // Verify by range (functions/backup/verify-ranges.ts): the plan reads the manifests' heads and lists the ranges under runs/ (read by the VerifyRanges Map);
  // each range HEADs what Verify HEADs for its chunks; the join reads the Map's result files there.
  PlanVerifyRanges: { repository: { read: ['manifests/', 'keys/'], write: ['runs/'] }, repositoryKey: ['unwrap'], memoryMiB: LIGHT_MIB },
  VerifyRange: {
    repository: { read: ['manifests/', 'chunks/', 'packs/', 'keys/'], list: true },
    repositoryKey: ['unwrap'],
    timeoutSeconds: 900,
    memoryMiB: 1024,
  },
  JoinVerifyRanges: { repository: { read: ['runs/'] }, memoryMiB: LIGHT_MIB },
  Commit: { catalog: ['UpdateItem', 'GetItem'], memoryMiB: LIGHT_MIB },
  RecordFailure: { catalog: ['UpdateItem'], memoryMiB: LIGHT_MIB },
  // The policy's run lease: a conditional put, and a read of its holder to name it to a refused run.
  AcquireRunLease: { catalog: ['PutItem', 'GetItem'], memoryMiB: LIGHT_MIB },
  ReleaseRunLease: { catalog: ['DeleteItem'], memoryMiB: LIGHT_MIB },
  // A dead run's running backups and held slots (Scans), its VMs, hosts and policies.
  PlanReconcile: { catalog: ['Scan', 'GetItem'] },
  // The run's members (Query), their backup records (BatchGetItem); a backup its VM's execution left running is failed (UpdateItem).
  Summarize: { catalog: ['PutItem', 'Query', 'BatchGetItem', 'UpdateItem'], timeoutSeconds: 300 },
  SyncConfig: { catalog: ['PutItem', 'Scan', 'DeleteItem'], timeoutSeconds: 300 },
  // Restore, deep verify, prune (issue 6): the movers touch the data; these keep the records.
  PlanRestore: { catalog: ['GetItem', 'Query', 'PutItem'] },
  RecordRestore: { catalog: ['PutItem', 'UpdateItem'] },
  RecordRestoreFailure: { catalog: ['PutItem'] },
  // With a restore test: the VM's host (its libvirt URI and group) and, for everyDays, its backups' last restore test.
  PlanDeepVerify: { catalog: ['GetItem', 'Query', 'PutItem'] },
  PlanFiles: { catalog: ['GetItem', 'Query'] },
  // Scan: the backups damaged through chunks a healed backup shares (recovery/shared-damage.ts).
  RecordDeepVerify: { catalog: ['UpdateItem', 'PutItem', 'DeleteItem', 'Scan'] },
  // The restore test's outcome on the backup (UpdateItem) and in the verification's record (PutItem).
  RecordRestoreTest: { catalog: ['UpdateItem', 'PutItem'] },
  // Moves damaged chunks aside: reads and re-checks them (a chunk object, or its range of a pack), copies to quarantine/, deletes a format-1 chunk object (a pack stays).
  // Then marks damaged the committed backups whose manifests share a damaged chunk (Scan, UpdateItem; reads manifests/).
  QuarantineDamage: {
    catalog: ['PutItem', 'Scan', 'UpdateItem'],
    repository: { read: ['chunks/', 'packs/', 'keys/', 'manifests/'], write: ['quarantine/'], delete: ['chunks/'], list: true },
    repositoryKey: ['unwrap'],
    timeoutSeconds: 300,
    memoryMiB: 1024,
  },
  // The jobs and the VMs left out go to runs/ (read by the DeepVerifyVms Map); RecordDeepVerifyPolicy reads the Map's result files there.
  PlanDeepVerifyPolicy: { catalog: ['GetItem', 'Query', 'PutItem'], repository: { write: ['runs/'] } },
  RecordDeepVerifyPolicy: { catalog: ['PutItem'], repository: { read: ['runs/'] } },
  // The prune's plan and its list of backups to remove go to runs/ (read by the PruneBackups Map); RecordPrune reads the Map's result files there.
  PlanPrune: { catalog: ['GetItem', 'Query', 'PutItem'], repository: { write: ['runs/'] } },
  PruneBackup: { catalog: ['UpdateItem', 'DeleteItem'], repository: { delete: ['manifests/'], list: true } },
  RecordPrune: { catalog: ['PutItem'], repository: { read: ['runs/'] } },
  // Takes and gives back the repository's GC lease (PutItem, DeleteItem); lists and marks; reads the packs it lists in the index again (packs/); replaces index objects that list a deleted pack, and merges small index objects (write index/); deletes chunk objects, packs and replaced or merged index objects, and failed backups' manifests; reads the backups' statuses and the policies' run leases (Scan, GetItem).
  // Reads the Object Lock retain-until of unreferenced chunk objects and packs (HEAD: read chunks/ too) before deleting them.
  CollectGarbage: {
    catalog: ['PutItem', 'GetItem', 'Scan', 'DeleteItem'],
    repository: {
      read: ['manifests/', 'index/', 'keys/', 'packs/', 'chunks/'],
      write: ['index/'],
      delete: ['chunks/', 'packs/', 'index/', 'manifests/'],
      list: true,
      retention: { read: ['chunks/', 'packs/'] },
    },
    repositoryKey: ['unwrap'],
    timeoutSeconds: 900,
    memoryMiB: 2048,
  },
  // The only function that may extend Object Lock retention: of every object a retained backup references (its manifests, their chunk objects or packs, the repository key).
  // Reads policies and backups (Scan), its per-backup records (Query, PutItem, DeleteItem), the manifests (decoded: the key).
  ExtendLocks: {
    catalog: ['Scan', 'Query', 'PutItem', 'DeleteItem'],
    repository: {
      read: ['manifests/', 'keys/', 'chunks/', 'packs/'],
      list: true,
      retention: { read: ['manifests/', 'keys/', 'chunks/', 'packs/'], extend: ['manifests/', 'keys/', 'chunks/', 'packs/'] },
    },
    repositoryKey: ['unwrap'],
    timeoutSeconds: 900,
    memoryMiB: 1024,
  },
  // Gives the repository's GC lease back on the Gc workflow's failure path (a conditional delete: only its own execution's).
  ReleaseGcLease: { catalog: ['DeleteItem'] },
  PlanReplicate: { catalog: ['GetItem', 'Query'], repository: { read: ['keys/'], write: ['keys/'], list: true } },
  // As PlanReplicate for each VM; the jobs and the VMs left out go to runs/ (read by the ReplicateVms Map); RecordReplicatePolicy reads the Map's result files there.
  PlanReplicatePolicy: { catalog: ['GetItem', 'Query', 'PutItem'], repository: { read: ['keys/'], write: ['keys/', 'runs/'], list: true } },
  RecordReplicatePolicy: { catalog: ['PutItem'], repository: { read: ['runs/'] } },
  AcquireReplicaLease: { catalog: ['PutItem', 'Query', 'GetItem'] },
  ReleaseReplicaLease: { catalog: ['DeleteItem'] },
  VerifyReplica: {
    repository: { read: ['manifests/', 'chunks/', 'packs/', 'keys/'], list: true },
    repositoryKey: ['unwrap'],
    timeoutSeconds: 300,
    memoryMiB: 1024,
  },
  RecordReplication: { catalog: ['PutItem'] },
  ReportReplication: { catalog: ['GetItem', 'Query'] },
  PlanFailover: { catalog: ['GetItem', 'Query'] },
  RecordFailover: { catalog: ['PutItem'] },
  // The plan's VMs' replica leases (conditional puts; given back if one is busy).
  PlanFailoverPlan: { catalog: ['GetItem', 'Query', 'PutItem', 'DeleteItem'] },
  // The report, and each VM's failover record (the point a failback starts from).
  RecordFailoverPlan: { catalog: ['PutItem'] },
  // Failback: the VMs, hosts, policies (Scan) and backups of both sites, the VM's failover records and the DR copies' records; the final DR backup's record; the report, and the VM's active failovers marked released (Query, UpdateItem).
  PlanFailback: { catalog: ['GetItem', 'Query', 'Scan'] },
  CheckFinalBackup: { catalog: ['Query'] },
  RecordFailback: { catalog: ['PutItem', 'Query', 'UpdateItem'] },
  RecordRecoveryFailure: { catalog: ['GetItem', 'PutItem'] },
  // Discovery: the hosts from the catalog's host listing; each discovered VM written conditionally (a VM added by hand is left alone), its host membership put, gone VMs marked.
  ListDiscoveryHosts: { catalog: ['GetItem', 'Query'] },
  // The DR sites to sweep of test failover leftovers: the policies (Scan) and the hosts' listing (Query).
  ListDrSites: { catalog: ['Scan', 'Query', 'GetItem'] },
  RecordInventory: { catalog: ['UpdateItem', 'PutItem', 'GetItem', 'Query'] },
  SummarizeDiscovery: {},
  // Host configuration backups: the libvirt hosts and the settings SyncConfig wrote; each archive recorded (PutItem), the host's archives listed newest first (Query), and those beyond `keep` deleted from the repository, then their records; unrecorded archives found by listing the host's prefix.
  PlanHostConfigBackup: { catalog: ['GetItem', 'Query'] },
  RecordHostConfig: { catalog: ['PutItem', 'Query', 'DeleteItem'], repository: { delete: ['host-config/'], list: true } },
  SummarizeHostConfigBackup: {},
  PlanExport: { catalog: ['GetItem', 'Query'] },
  OnDeploy: {
    catalog: ['PutItem', 'Scan', 'DeleteItem'],
    repository: { read: ['keys/'], write: ['keys/'] },
    repositoryKey: ['wrap', 'unwrap'],
    timeoutSeconds: 300,
  },
  // The operator's read model: every read of the catalog (VM, backup, run, policy, host configuration listings), mover records and progress objects; its one write, a VM put into the inventory (POST /api/vms: the VM's item and its host membership).
  OperatorApi: {
    catalog: ['GetItem', 'Query', 'Scan', 'PutItem'],
    repository: { read: ['movers/', 'progress/'], list: true },
    backupExecutions: ['ListExecutions', 'DescribeExecution'],
    timeoutSeconds: 30,
  },
};

/** The resources a function's access is granted on. */
export interface AccessTargets {
  table: dynamodb.ITableV2;
  repositories: { bucket: s3.IBucket; key: kms.IKey }[];
}

/** IAM statements for one function's declared access; none for an undeclared one. */
export function accessStatements(access: FunctionAccess | undefined, on: AccessTargets): iam.PolicyStatement[] {
  if (!access) return [];
  const out: iam.PolicyStatement[] = [];
  if (access.catalog?.length) {
    out.push(
      new iam.PolicyStatement({
        sid: 'Catalog',
        actions: access.catalog.map((a) => `dynamodb:${a}`),
        resources: [on.table.tableArn, ...(access.catalogIndexes ? [`${on.table.tableArn}/index/*`] : [])],
      }),
    );
  }
  if (access.taskResponses) out.push(new iam.PolicyStatement({ sid: 'TaskResponses', actions: ['states:SendTaskSuccess'], resources: ['*'] }));
  const objects = (prefixes: RepositoryPrefix[]) => on.repositories.flatMap((r) => prefixes.map((p) => r.bucket.arnForObjects(`${p}*`)));
  if (access.repository?.read?.length)
    out.push(new iam.PolicyStatement({ sid: 'RepositoryRead', actions: ['s3:GetObject'], resources: objects(access.repository.read) }));
  if (access.repository?.write?.length)
    out.push(new iam.PolicyStatement({ sid: 'RepositoryWrite', actions: ['s3:PutObject'], resources: objects(access.repository.write) }));
  if (access.repository?.delete?.length)
    out.push(new iam.PolicyStatement({ sid: 'RepositoryDelete', actions: ['s3:DeleteObject'], resources: objects(access.repository.delete) }));
  if (access.repository?.list)
    out.push(new iam.PolicyStatement({ sid: 'RepositoryList', actions: ['s3:ListBucket'], resources: on.repositories.map((r) => r.bucket.bucketArn) }));
  const retention = access.repository?.retention;
  if (retention?.read?.length) {
    out.push(new iam.PolicyStatement({ sid: 'RepositoryRetentionRead', actions: ['s3:GetObjectRetention'], resources: objects(retention.read) }));
    out.push(
      new iam.PolicyStatement({
        sid: 'RepositoryLockConfiguration',
        actions: ['s3:GetBucketObjectLockConfiguration'],
        resources: on.repositories.map((r) => r.bucket.bucketArn),
      }),
    );
  }
  if (retention?.extend?.length)
    out.push(new iam.PolicyStatement({ sid: 'RepositoryRetentionExtend', actions: ['s3:PutObjectRetention'], resources: objects(retention.extend) }));
  const keyActions = [...(access.repositoryKey?.includes('unwrap') ? ['kms:Decrypt'] : []), ...(access.repositoryKey?.includes('wrap') ? ['kms:Encrypt'] : [])];
  if (keyActions.length) {
    out.push(
      new iam.PolicyStatement({
        sid: 'RepositoryKey',
        actions: keyActions,
        resources: on.repositories.map((r) => r.key.keyArn),
        conditions: { StringEquals: { [`kms:EncryptionContext:${KMS_CONTEXT_PURPOSE}`]: 'repository-key' } },
      }),
    );
  }
  // Objects are SSE-KMS: reading needs kms:Decrypt, writing kms:GenerateDataKey, both only through S3.
  const s3Kms = [...(access.repository?.read?.length ? ['kms:Decrypt'] : []), ...(access.repository?.write?.length ? ['kms:GenerateDataKey'] : [])];
  if (s3Kms.length) {
    out.push(
      new iam.PolicyStatement({
        sid: 'RepositoryObjectsEncryption',
        actions: s3Kms,
        resources: on.repositories.map((r) => r.key.keyArn),
        conditions: { StringEquals: { 'kms:ViaService': `s3.${Stack.of(on.table).region}.amazonaws.com` } },
      }),
    );
  }
  return out;
}
