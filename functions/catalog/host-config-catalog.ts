/**
 * The catalog records of host configuration backups: one per host per HostConfigBackup
 * run (`HOSTCONFIG#<hostId>` / `BACKUP#<backupId>`; backup ids sort by time, so a Query
 * lists a host's newest first). Same table as `catalog.ts`.
 */
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { HostConfigRecord } from '../../contracts/host-config.ts';

const recordKey = (hostId: string, backupId: string) => ({ pk: `HOSTCONFIG#${hostId}`, sk: `BACKUP#${backupId}` });

export class HostConfigCatalog {
  private readonly db: DynamoDBDocumentClient;
  readonly table: string;
  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  put(r: HostConfigRecord) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...recordKey(r.hostId, r.backupId), ...r } }));
  }

  async get(hostId: string, backupId: string): Promise<HostConfigRecord | undefined> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: recordKey(hostId, backupId), ConsistentRead: true }));
    if (!out.Item) return undefined;
    const { pk: _pk, sk: _sk, ...rest } = out.Item;
    return rest as HostConfigRecord;
  }

  /** A host's backups, newest first. */
  async list(hostId: string): Promise<HostConfigRecord[]> {
    const records: HostConfigRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :b)',
          ScanIndexForward: false,
          ExpressionAttributeValues: { ':pk': `HOSTCONFIG#${hostId}`, ':b': 'BACKUP#' },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const { pk: _pk, sk: _sk, ...rest } of out.Items ?? []) records.push(rest as HostConfigRecord);
      start = out.LastEvaluatedKey;
    } while (start);
    return records;
  }

  delete(hostId: string, backupId: string) {
    return this.db.send(new DeleteCommand({ TableName: this.table, Key: recordKey(hostId, backupId) }));
  }
}
