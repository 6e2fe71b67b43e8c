/** Test fixture: a real dynalite server in process with the catalog's table, and a Catalog (and RecoveryCatalog) on it. */
import { CreateTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import dynalite from 'dynalite';
import type { AddressInfo } from 'node:net';
import { Catalog } from '../../functions/catalog/catalog.ts';
import { RecoveryCatalog } from '../../functions/catalog/recovery-catalog.ts';
import { LOCAL_CREDENTIALS } from '../../local/stack.ts';

/** Creates the catalog's table (`catalog`, keys pk and sk) through `db`. */
export async function createCatalogTable(db: DynamoDBClient): Promise<void> {
  await db.send(
    new CreateTableCommand({
      TableName: 'catalog',
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
    }),
  );
}

export async function startTestCatalog(): Promise<{ catalog: Catalog; recovery: RecoveryCatalog; doc: DynamoDBDocumentClient; close(): Promise<void> }> {
  const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const db = new DynamoDBClient({
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    credentials: LOCAL_CREDENTIALS,
  });
  await createCatalogTable(db);
  const doc = DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } });
  const catalog = new Catalog(doc, 'catalog');
  return {
    catalog,
    recovery: new RecoveryCatalog(doc, 'catalog'),
    doc,
    close: async () => {
      db.destroy();
      await new Promise<void>((ok) => server.close(() => ok()));
    },
  };
}
