/**
 * A Backup run's members: which VMs it backs up, under which backup ids. Plan writes one
 * item per VM (`RUN#<runId>` / `VM#<vmId>`, beside the run record `RUN#<runId>` / `RUN`);
 * Summarize reads them back in pages and fetches their backup records in batches, so no
 * payload of the workflow carries the list of a run's VMs.
 */
import { BatchGetCommand, BatchWriteCommand, QueryCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { Backup } from './catalog.ts';

/** One VM of a run. */
export interface RunMember {
  vmId: string;
  backupId: string;
}

const memberKey = (runId: string, vmId: string) => ({ pk: `RUN#${runId}`, sk: `VM#${vmId}` });
const backupKey = (m: RunMember) => ({ pk: `VM#${m.vmId}`, sk: `BACKUP#${m.backupId}` });

/** DynamoDB's batch sizes: BatchWriteItem takes 25 requests, BatchGetItem 100 keys. */
const WRITE_BATCH = 25;
const GET_BATCH = 100;

async function untilDone<T>(first: T, send: (req: T) => Promise<T | undefined>): Promise<void> {
  let pending: T | undefined = first;
  for (let attempt = 0; pending; attempt++) {
    if (attempt > 8) throw new Error('the catalog kept returning unprocessed batch items (throttled) after 8 attempts');
    if (attempt) await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
    pending = await send(pending);
  }
}

export class RunCatalog {
  private readonly db: DynamoDBDocumentClient;
  private readonly table: string;

  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  /** Records the run's members (idempotent: a retried Plan writes the same items). */
  async addMembers(runId: string, members: readonly RunMember[]): Promise<void> {
    for (let i = 0; i < members.length; i += WRITE_BATCH) {
      const requests = members.slice(i, i + WRITE_BATCH).map((m) => ({ PutRequest: { Item: { ...memberKey(runId, m.vmId), ...m } } }));
      await untilDone<Record<string, unknown>[]>(requests, async (items) => {
        const out = await this.db.send(new BatchWriteCommand({ RequestItems: { [this.table]: items as never } }));
        const left = out.UnprocessedItems?.[this.table];
        return left?.length ? (left as Record<string, unknown>[]) : undefined;
      });
    }
  }

  /** The run's members, a page at a time (at most `pageSize` each). */
  async *members(runId: string, pageSize = GET_BATCH): AsyncGenerator<RunMember[]> {
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :v)',
          ExpressionAttributeValues: { ':pk': `RUN#${runId}`, ':v': 'VM#' },
          ExclusiveStartKey: start,
          Limit: pageSize,
          ConsistentRead: true,
        }),
      );
      const page = (out.Items ?? []).map((it) => ({ vmId: it.vmId as string, backupId: it.backupId as string }));
      if (page.length) yield page;
      start = out.LastEvaluatedKey;
    } while (start);
  }

  /** The backup records of `members` (at most 100), in their order; a member whose record is missing is left out. */
  async backups(members: readonly RunMember[]): Promise<Backup[]> {
    if (members.length > GET_BATCH) throw new Error(`at most ${GET_BATCH} backups per batch, got ${members.length}`);
    const found = new Map<string, Backup>();
    await untilDone<Record<string, unknown>[]>(members.map(backupKey), async (keys) => {
      const out = await this.db.send(new BatchGetCommand({ RequestItems: { [this.table]: { Keys: keys, ConsistentRead: true } } }));
      for (const it of out.Responses?.[this.table] ?? []) {
        const { pk: _pk, sk: _sk, ...b } = it;
        found.set(`${b.vmId}|${b.backupId}`, b as Backup);
      }
      const left = out.UnprocessedKeys?.[this.table]?.Keys;
      return left?.length ? left : undefined;
    });
    return members.flatMap((m) => found.get(`${m.vmId}|${m.backupId}`) ?? []);
  }
}
