/**
 * What each Lambda function may touch: the catalog's DynamoDB actions, the repository's
 * S3 actions by key prefix, and the repository key. The stack turns these into IAM
 * statements on the exact table, prefixes and KMS key, and nothing else.
 *
 * A function added to functions/registry.ts needs an entry here; without one it gets no
 * data access at all and test/cdk.test.ts names it.
 */
import type { LambdaFunctionId } from '../../functions/registry.ts';

/** DynamoDB actions the catalog code sends (lib-dynamodb Get/Put/Update/Delete/Query/Scan). */
export type CatalogAction = 'GetItem' | 'PutItem' | 'UpdateItem' | 'DeleteItem' | 'Query' | 'Scan' | 'BatchGetItem' | 'BatchWriteItem' | 'ConditionCheckItem';

/** Top-level prefixes of the repository layout (core/format.ts `keys`). */
export type RepositoryPrefix = 'chunks/' | 'manifests/' | 'keys/';

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
  };
  /** The repository KMS key: unwrap (kms:Decrypt) / wrap (kms:Encrypt) the repository key; read SSE-KMS objects. */
  repositoryKey?: ('unwrap' | 'wrap')[];
  /** Seconds before Lambda stops the function (default 60). */
  timeoutSeconds?: number;
  memoryMiB?: number;
}

export const functionAccess: Partial<Record<LambdaFunctionId, FunctionAccess>> = {
  Plan: { catalog: ['GetItem', 'Query', 'PutItem'] },
  AcquireSlot: { catalog: ['PutItem', 'DeleteItem'] },
  ReleaseSlot: { catalog: ['DeleteItem'] },
  Verify: { repository: { read: ['manifests/', 'chunks/', 'keys/'], list: true }, repositoryKey: ['unwrap'], timeoutSeconds: 300, memoryMiB: 1024 },
  Commit: { catalog: ['UpdateItem', 'GetItem'] },
  RecordFailure: { catalog: ['UpdateItem'] },
  Summarize: { catalog: ['PutItem', 'Query'] },
  SyncConfig: { catalog: ['PutItem', 'Scan', 'DeleteItem'], timeoutSeconds: 300 },
  OnDeploy: { catalog: ['PutItem', 'Scan', 'DeleteItem'], repository: { read: ['keys/'], write: ['keys/'] }, repositoryKey: ['wrap', 'unwrap'], timeoutSeconds: 300 },
};
