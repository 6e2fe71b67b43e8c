/**
 * What lock extension (functions/gc/extend-locks.ts) has done, per repository and backup:
 * every object the backup references is locked until at least `until`. A later run skips
 * a backup whose record reaches its target, so no object is asked twice for the same
 * target. Items `LOCKS#<repository>` / `BACKUP#<backupId>` (`repository`: core/endpoints.ts
 * `locationKey`, as a bucket name is unique only per endpoint).
 */
import { DeleteCommand, PutCommand, QueryCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';

const pk = (repository: string) => `LOCKS#${repository}`;

export class LockCatalog {
  private readonly db: DynamoDBDocumentClient;
  readonly table: string;
  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  /** Until when each backup's objects are known to be locked (epoch ms), by backup id. */
  async lockedUntil(repository: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk',
          ExpressionAttributeValues: { ':pk': pk(repository) },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const it of page.Items ?? []) out.set(String(it.backupId), Date.parse(String(it.until)));
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }

  record(repository: string, backupId: string, until: Date, at: Date) {
    return this.db.send(
      new PutCommand({
        TableName: this.table,
        Item: { pk: pk(repository), sk: `BACKUP#${backupId}`, backupId, until: until.toISOString(), at: at.toISOString() },
      }),
    );
  }

  /** Forgets a backup that is no longer retained (pruned). */
  forget(repository: string, backupId: string) {
    return this.db.send(new DeleteCommand({ TableName: this.table, Key: { pk: pk(repository), sk: `BACKUP#${backupId}` } }));
  }
}
