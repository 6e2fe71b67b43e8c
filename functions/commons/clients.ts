/**
 * SDK clients, created once per Lambda container (or embedded process) at the entry
 * point and handed to the logic modules as narrow interfaces.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { KeyFileWrapper, type KeyWrapper } from '../../core/keyring.ts';
import { S3ObjectStore, s3Client } from '../../core/s3-store.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { Catalog } from '../catalog/catalog.ts';
import { readEnv, type FunctionEnv } from './env.ts';

export interface Clients {
  env: FunctionEnv;
  catalog: Catalog;
  store(bucket: string): ObjectStore;
  keyWrapper(): Promise<KeyWrapper>;
}

let cached: Clients | undefined;

export function clients(): Clients {
  if (cached) return cached;
  const env = readEnv();
  const local = env.dynamodbEndpoint ? { credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } } : {};
  const db = DynamoDBDocumentClient.from(new DynamoDBClient({ region: env.region, ...(env.dynamodbEndpoint ? { endpoint: env.dynamodbEndpoint } : {}), ...local }), {
    marshallOptions: { removeUndefinedValues: true },
  });
  const s3 = s3Client({ region: env.region, endpoint: env.s3Endpoint, forcePathStyle: !!env.s3Endpoint, ...local });
  cached = {
    env,
    catalog: new Catalog(db, env.tableName),
    store: (bucket) => new S3ObjectStore(s3, bucket),
    keyWrapper: async () => {
      if (env.keyFile) return KeyFileWrapper.load(env.keyFile);
      throw new Error('no repository key wrapper configured: set LIFEBOAT_KEY_FILE (embedded stack); the KMS wrapper is not built yet');
    },
  };
  return cached;
}

/** Forget cached clients (the embedded stack calls this when its endpoints change). */
export function resetClients(): void {
  cached = undefined;
}
