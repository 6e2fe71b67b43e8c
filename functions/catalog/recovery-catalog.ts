/**
 * The catalog records of restores, deep verifications and prunes, and the backup-status
 * changes they make (committed → damaged, committed → pruning → gone). Same table and
 * backup keys as `catalog.ts`; every status change is a conditional write.
 */
import { DeleteCommand, GetCommand, PutCommand, ScanCommand, UpdateCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { DamageFinding } from '../../core/recovery-jobs.ts';
import { isConditionFailed } from './catalog.ts';

export type RecoveryRecordKind = 'RESTORE' | 'DEEPVERIFY' | 'PRUNE' | 'GC' | 'REPLICATION' | 'FAILOVER';

const backupKey = (vmId: string, backupId: string) => ({ pk: `VM#${vmId}`, sk: `BACKUP#${backupId}` });
const recordKey = (kind: RecoveryRecordKind, id: string) => ({ pk: `${kind}#${id}`, sk: kind });
/** A backup's copy in another repository lives beside the VM's backups (not under `BACKUP#`). */
const replicaKey = (vmId: string, bucket: string, backupId: string) => ({ pk: `VM#${vmId}`, sk: `REPLICA#${bucket}#${backupId}` });

export interface ReplicaRecord {
  vmId: string;
  backupId: string;
  bucket: string;
  replicatedAt: string;
  replicationId: string;
}

/** A backup's damage as a deep verification found it. */
export interface BackupDamage {
  verifyId: string;
  foundAt: string;
  findings: DamageFinding[];
}

export class RecoveryCatalog {
  private readonly db: DynamoDBDocumentClient;
  readonly table: string;
  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  putRecord(kind: RecoveryRecordKind, id: string, item: Record<string, unknown>) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...recordKey(kind, id), kind, id, ...item } }));
  }

  async getRecord(kind: RecoveryRecordKind, id: string): Promise<Record<string, unknown> | undefined> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: recordKey(kind, id), ConsistentRead: true }));
    if (!out.Item) return undefined;
    const { pk: _pk, sk: _sk, ...rest } = out.Item;
    return rest;
  }

  /**
   * committed (or already damaged) → damaged, keeping the findings. Returns false when
   * the backup is in another state (pruned meanwhile, never committed).
   */
  async markDamaged(vmId: string, backupId: string, damage: BackupDamage): Promise<boolean> {
    try {
      await this.db.send(new UpdateCommand({
        TableName: this.table, Key: backupKey(vmId, backupId),
        UpdateExpression: 'SET #s = :d, damage = :g',
        ConditionExpression: '#s IN (:c, :d)',
        ExpressionAttributeNames: { '#s': 'status' },
        ExpressionAttributeValues: { ':d': 'damaged', ':c': 'committed', ':g': damage },
      }));
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /**
   * committed/damaged → pruning: from now on no restore or plan uses the backup, and a
   * prune that stopped half-way finds it again. Idempotent for a backup already pruning.
   */
  async beginPrune(vmId: string, backupId: string, reason: string, at: Date): Promise<boolean> {
    try {
      await this.db.send(new UpdateCommand({
        TableName: this.table, Key: backupKey(vmId, backupId),
        UpdateExpression: 'SET #s = :p, pruneReason = :r, pruneStartedAt = :t',
        ConditionExpression: '#s IN (:c, :d, :p)',
        ExpressionAttributeNames: { '#s': 'status' },
        ExpressionAttributeValues: { ':p': 'pruning', ':c': 'committed', ':d': 'damaged', ':r': reason, ':t': at.toISOString() },
      }));
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /**
   * Backups recorded `running` that started after `since` (older ones belong to dead
   * executions), as `vmId/backupId`. A Scan: fine for a catalog of thousands of items.
   */
  async runningBackups(since: Date): Promise<string[]> {
    const out: string[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(new ScanCommand({
        TableName: this.table, ConsistentRead: true, ExclusiveStartKey: start,
        FilterExpression: 'begins_with(sk, :b) AND #s = :r AND startedAt > :since',
        ExpressionAttributeNames: { '#s': 'status' },
        ExpressionAttributeValues: { ':b': 'BACKUP#', ':r': 'running', ':since': since.toISOString() },
      }));
      for (const it of page.Items ?? []) out.push(`${it.vmId as string}/${it.backupId as string}`);
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }

  /** Records that `backupId` of `vmId` is complete in the repository `bucket`. */
  putReplica(r: ReplicaRecord) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...replicaKey(r.vmId, r.bucket, r.backupId), ...r } }));
  }

  async getReplica(vmId: string, bucket: string, backupId: string): Promise<ReplicaRecord | undefined> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: replicaKey(vmId, bucket, backupId), ConsistentRead: true }));
    if (!out.Item) return undefined;
    const { pk: _pk, sk: _sk, ...rest } = out.Item;
    return rest as ReplicaRecord;
  }

  deleteReplica(vmId: string, bucket: string, backupId: string) {
    return this.db.send(new DeleteCommand({ TableName: this.table, Key: replicaKey(vmId, bucket, backupId) }));
  }

  /** Removes a backup whose manifests are gone; only one that is `pruning`. */
  async finishPrune(vmId: string, backupId: string): Promise<void> {
    try {
      await this.db.send(new DeleteCommand({
        TableName: this.table, Key: backupKey(vmId, backupId),
        ConditionExpression: '#s = :p', ExpressionAttributeNames: { '#s': 'status' }, ExpressionAttributeValues: { ':p': 'pruning' },
      }));
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }
}
