/**
 * Direct catalog access for the few commands that only work on the embedded stack because
 * they open the repository with its key file on this machine (`lifeboat export`,
 * `lifeboat host-config list|restore`). Every other command goes through StackClient
 * (stack-client.ts): the operator API and Step Functions, as for a deployed stack.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { LOCAL_ENDPOINT_CREDENTIALS as LOCAL_CREDENTIALS } from '../core/s3-store.ts';
import { Catalog } from '../functions/catalog/catalog.ts';
import { HostConfigCatalog } from '../functions/catalog/host-config-catalog.ts';
import type { StackEndpoints } from '../local/stack.ts';

function stackTable(e: StackEndpoints): DynamoDBDocumentClient {
  const db = new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS });
  return DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } });
}

/** The catalog of a running embedded stack. */
export function embeddedCatalog(e: StackEndpoints): Catalog {
  return new Catalog(stackTable(e), e.table);
}

/** The host configuration records of a running embedded stack. */
export function stackHostConfigs(e: StackEndpoints): HostConfigCatalog {
  return new HostConfigCatalog(stackTable(e), e.table);
}
