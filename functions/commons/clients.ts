/**
 * SDK clients, created once per Lambda container (or embedded process) at the entry
 * point and handed to the logic modules as narrow interfaces.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KMSClient } from '@aws-sdk/client-kms';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { deriveKeys, type RepositoryKeys } from '../../core/format.ts';
import { KeyFileWrapper, KmsKeyWrapper, loadMasterKey, type KeyWrapper } from '../../core/keyring.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../../core/s3-store.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { S3RepositoryAdmin, type RepositoryAdmin } from '../../core/repository-admin.ts';
import { Catalog } from '../catalog/catalog.ts';
import { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { readEnv, type FunctionEnv } from './env.ts';

export interface Clients {
  env: FunctionEnv;
  catalog: Catalog;
  /** Records of restores, deep verifications and prunes (functions/catalog/recovery-catalog.ts). */
  recovery: RecoveryCatalog;
  store(bucket: string): ObjectStore;
  /** Listing and deleting in a repository (Prune, garbage collection): the control plane only. */
  admin(bucket: string): RepositoryAdmin;
  /** The wrapper of a repository's master key: KMS in AWS, the key file in the embedded stack. */
  keyWrapper(bucket: string): Promise<KeyWrapper>;
  /** The repository's keys, unwrapped once per container and bucket. */
  repositoryKeys(bucket: string): Promise<RepositoryKeys>;
}

let cached: Clients | undefined;
const repositoryKeys = new Map<string, Promise<RepositoryKeys>>();

let kms: KMSClient | undefined;

/** The repository key's wrapper: KMS in AWS (REPOSITORY_KMS_KEY_ID), a key file in the embedded stack. */
async function keyWrapper(env: FunctionEnv, bucket: string): Promise<KeyWrapper> {
  if (env.kmsKeyId) return new KmsKeyWrapper({ client: (kms ??= new KMSClient({ region: env.region })), keyId: env.kmsKeyId, repository: bucket });
  if (env.keyFile) return KeyFileWrapper.load(env.keyFile);
  throw new Error('no repository key wrapper configured: set REPOSITORY_KMS_KEY_ID (AWS; the CDK app does) or LIFEBOAT_KEY_FILE (embedded stack)');
}

export function clients(): Clients {
  if (cached) return cached;
  const env = readEnv();
  const local = env.dynamodbEndpoint ? { credentials: LOCAL_ENDPOINT_CREDENTIALS } : {};
  const db = DynamoDBDocumentClient.from(new DynamoDBClient({ region: env.region, ...(env.dynamodbEndpoint ? { endpoint: env.dynamodbEndpoint } : {}), ...local }), {
    marshallOptions: { removeUndefinedValues: true },
  });
  const s3 = s3Client({ region: env.region, endpoint: env.s3Endpoint, forcePathStyle: !!env.s3Endpoint, ...local });
  cached = {
    env,
    catalog: new Catalog(db, env.tableName),
    recovery: new RecoveryCatalog(db, env.tableName),
    store: (bucket) => new S3ObjectStore(s3, bucket),
    admin: (bucket) => new S3RepositoryAdmin(s3, bucket),
    keyWrapper: (bucket) => keyWrapper(env, bucket),
    repositoryKeys: (bucket) => {
      let k = repositoryKeys.get(bucket);
      if (!k) {
        k = keyWrapper(env, bucket).then(async (w) => deriveKeys(await loadMasterKey(cached!.store(bucket), w)));
        k.catch(() => repositoryKeys.delete(bucket)); // a failure is not cached
        repositoryKeys.set(bucket, k);
      }
      return k;
    },
  };
  return cached;
}

/** Forget cached clients (the embedded stack calls this when its endpoints change). */
export function resetClients(): void {
  cached = undefined;
  repositoryKeys.clear();
}
