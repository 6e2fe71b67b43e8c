/**
 * Direct catalog access for the few commands that only work on the embedded stack because
 * they open the repository with its key file on this machine (`lifeboat export`,
 * `lifeboat host-config list|restore`). Every other command goes through StackClient
 * (stack-client.ts): the operator API and Step Functions, as for a deployed stack.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { Catalog } from '../functions/catalog/catalog.ts';
import { LOCAL_ENDPOINT_CREDENTIALS as LOCAL_CREDENTIALS } from '../core/s3-store.ts';
import type { StackEndpoints } from '../local/stack.ts';

/** The catalog of a running embedded stack. */
export function embeddedCatalog(e: StackEndpoints): Catalog {
  const db = new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS });
  return new Catalog(DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } }), e.table);
}
