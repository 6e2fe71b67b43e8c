/**
 * The catalog records of restores, deep verifications and prunes, and the backup-status
 * changes they make (committed → damaged, committed → pruning → gone). Same table and
 * backup keys as `catalog.ts`; every status change is a conditional write.
 */
import { DeleteCommand, GetCommand, paginateQuery, PutCommand, QueryCommand, UpdateCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { FailoverRecord } from '../../contracts/dr.ts';
import type { DamageFinding } from '../../contracts/recovery-jobs.ts';
import { isConditionFailed } from './catalog.ts';

export type RecoveryRecordKind = 'RESTORE' | 'DEEPVERIFY' | 'PRUNE' | 'GC' | 'REPLICATION' | 'FAILOVER' | 'FAILBACK';

const backupKey = (vmId: string, backupId: string) => ({ pk: `VM#${vmId}`, sk: `BACKUP#${backupId}` });
const recordKey = (kind: RecoveryRecordKind, id: string) => ({ pk: `${kind}#${id}`, sk: kind });
/** A backup's copy in another repository lives beside the VM's backups (not under `BACKUP#`). */
const replicaKey = (vmId: string, bucket: string, backupId: string) => ({ pk: `VM#${vmId}`, sk: `REPLICA#${bucket}#${backupId}` });
/** A failover of a VM beside its backups, in time order (a plan run fails a VM over once). */
const failoverKey = (r: Pick<FailoverRecord, 'vmId' | 'failedOverAt' | 'runId'>) => ({ pk: `VM#${r.vmId}`, sk: `FAILOVER#${r.failedOverAt}#${r.runId}` });
/** A quarantined chunk, under its repository (`locationKey`: a bucket name is unique only per endpoint). */
const quarantinePk = (repository: string) => `QUARANTINE#${repository}`;
const quarantineKey = (repository: string, chunkId: string) => ({ pk: quarantinePk(repository), sk: `CHUNK#${chunkId}` });

/** A chunk set aside (repository/quarantine.ts) because a deep verification found it damaged or missing. */
export interface QuarantineRecord {
  chunkId: string;
  /** The object that held it (`chunks/…`, or its pack `packs/…`), and the copy of its bytes kept for forensics (absent when they were missing). */
  objectKey: string;
  quarantineKey?: string;
  reason: string;
  vmId: string;
  backupId: string;
  verifyId: string;
  quarantinedAt: string;
}

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
  /**
   * Set when the damage was found verifying another backup whose manifests share the
   * damaged chunks (a chunk is stored once for every backup that holds it): that backup.
   */
  foundIn?: { vmId: string; backupId: string };
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
    return this.setDamaged(vmId, backupId, damage, ['committed', 'damaged']);
  }

  /**
   * committed → damaged for a backup whose manifests reference chunks another backup's
   * deep verification found damaged. A backup already damaged keeps its own findings.
   * Returns false when the backup was not committed.
   */
  async markSharedDamage(vmId: string, backupId: string, damage: BackupDamage & { foundIn: { vmId: string; backupId: string } }): Promise<boolean> {
    return this.setDamaged(vmId, backupId, damage, ['committed']);
  }

  /** Sets the backup `damaged` with `damage` if its status is one of `from`; false when it is not. */
  private async setDamaged(vmId: string, backupId: string, damage: BackupDamage, from: readonly ('committed' | 'damaged')[]): Promise<boolean> {
    const values = Object.fromEntries(from.map((status, i) => [`:f${i}`, status]));
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: backupKey(vmId, backupId),
          UpdateExpression: 'SET #s = :d, damage = :g',
          ConditionExpression: `#s IN (${Object.keys(values).join(', ')})`,
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: { ':d': 'damaged', ':g': damage, ...values },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /**
   * damaged → committed after a full deep verification found every object intact (the
   * damaged chunks were uploaded again by a later backup). Returns the damage it had, or
   * undefined when the backup was not damaged (nothing changes then).
   */
  async markHealthy(vmId: string, backupId: string, healed: { verifyId: string; healedAt: string }): Promise<BackupDamage | undefined> {
    try {
      const out = await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: backupKey(vmId, backupId),
          UpdateExpression: 'SET #s = :c, healed = :h REMOVE damage',
          ConditionExpression: '#s = :d',
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: { ':d': 'damaged', ':c': 'committed', ':h': healed },
          ReturnValues: 'ALL_OLD',
        }),
      );
      return (out.Attributes?.damage as BackupDamage | undefined) ?? { verifyId: '', foundAt: '', findings: [] };
    } catch (err) {
      if (isConditionFailed(err)) return undefined;
      throw err;
    }
  }

  /**
   * Records a quarantined chunk of `repository` (`locationKey`). A record without a kept
   * copy (the object was missing: moved aside already) never replaces one with a copy.
   */
  async putQuarantine(repository: string, r: QuarantineRecord): Promise<void> {
    try {
      await this.db.send(
        new PutCommand({
          TableName: this.table,
          Item: { ...quarantineKey(repository, r.chunkId), repository, ...r },
          ...(r.quarantineKey ? {} : { ConditionExpression: 'attribute_not_exists(quarantineKey)' }),
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  /** Up to `limit` chunk ids quarantined in `repository` (one Query page, in id order). */
  async quarantinedChunks(repository: string, limit: number): Promise<string[]> {
    const out = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': quarantinePk(repository) },
        ProjectionExpression: 'chunkId',
        Limit: limit,
        ConsistentRead: true,
      }),
    );
    return (out.Items ?? []).map((it) => it.chunkId as string);
  }

  /** Forgets quarantined chunks that a deep verification found stored intact again. */
  async clearQuarantine(repository: string, chunkIds: string[]): Promise<void> {
    for (const id of new Set(chunkIds)) await this.db.send(new DeleteCommand({ TableName: this.table, Key: quarantineKey(repository, id) }));
  }

  /**
   * committed/damaged → pruning: from now on no restore or plan uses the backup, and a
   * prune that stopped half-way finds it again. Idempotent for a backup already pruning.
   */
  async beginPrune(vmId: string, backupId: string, reason: string, at: Date): Promise<boolean> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: backupKey(vmId, backupId),
          UpdateExpression: 'SET #s = :p, pruneReason = :r, pruneStartedAt = :t',
          ConditionExpression: '#s IN (:c, :d, :p)',
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: { ':p': 'pruning', ':c': 'committed', ':d': 'damaged', ':r': reason, ':t': at.toISOString() },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
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

  /** Records on a backup (if it still exists) that a deep verification found it intact. */
  async markVerified(vmId: string, backupId: string, verified: { verifyId: string; at: string; chunksChecked: number; chunksTotal: number }): Promise<void> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: backupKey(vmId, backupId),
          UpdateExpression: 'SET verified = :v',
          ConditionExpression: 'attribute_exists(pk)',
          ExpressionAttributeValues: { ':v': verified },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  /** The VM's backups complete in the repository `bucket`, newest first. */
  async listReplicas(vmId: string, bucket: string): Promise<ReplicaRecord[]> {
    const out: ReplicaRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :r)',
          ExpressionAttributeValues: { ':pk': `VM#${vmId}`, ':r': `REPLICA#${bucket}#` },
          ScanIndexForward: false,
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const { pk: _pk, sk: _sk, ...rest } of page.Items ?? []) out.push(rest as ReplicaRecord);
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }

  /** The VM's newest backup complete in the repository `bucket` (backup ids sort by time), if any. */
  async newestReplica(vmId: string, bucket: string): Promise<ReplicaRecord | undefined> {
    const out = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :r)',
        ExpressionAttributeValues: { ':pk': `VM#${vmId}`, ':r': `REPLICA#${bucket}#` },
        ScanIndexForward: false,
        Limit: 1,
        ConsistentRead: true,
      }),
    );
    const item = out.Items?.[0];
    if (!item) return undefined;
    const { pk: _pk, sk: _sk, ...rest } = item;
    return rest as ReplicaRecord;
  }

  deleteReplica(vmId: string, bucket: string, backupId: string) {
    return this.db.send(new DeleteCommand({ TableName: this.table, Key: replicaKey(vmId, bucket, backupId) }));
  }

  /** Records that a plan run powered the VM's replica on (idempotent: a retried RecordFailoverPlan writes the same item). */
  putFailover(r: FailoverRecord) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...failoverKey(r), ...r } }));
  }

  /** The VM's failovers, test and real, newest first. */
  async listFailovers(vmId: string): Promise<FailoverRecord[]> {
    const out: FailoverRecord[] = [];
    const pages = paginateQuery(
      { client: this.db },
      {
        TableName: this.table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :f)',
        ExpressionAttributeValues: { ':pk': `VM#${vmId}`, ':f': 'FAILOVER#' },
        ScanIndexForward: false,
        ConsistentRead: true,
      },
    );
    for await (const page of pages) for (const { pk: _pk, sk: _sk, ...rest } of page.Items ?? []) out.push(rest as FailoverRecord);
    return out;
  }

  /** The VM's active failover: its newest real one, unless a failback released it. */
  async activeFailover(vmId: string): Promise<FailoverRecord | undefined> {
    const real = (await this.listFailovers(vmId)).find((f) => !f.test);
    return real && !real.releasedAt ? real : undefined;
  }

  /** Marks every real failover of the VM not yet released as released by `by` (a failback): none is active afterwards. Returns those it released. */
  async releaseFailovers(vmId: string, by: string, at: Date): Promise<FailoverRecord[]> {
    const active = (await this.listFailovers(vmId)).filter((f) => !f.test && !f.releasedAt);
    for (const f of active)
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: failoverKey(f),
          UpdateExpression: 'SET releasedAt = :t, releasedBy = :b',
          ExpressionAttributeValues: { ':t': at.toISOString(), ':b': by },
        }),
      );
    return active;
  }

  /** Removes a backup whose manifests are gone; only one that is `pruning`. */
  async finishPrune(vmId: string, backupId: string): Promise<void> {
    try {
      await this.db.send(
        new DeleteCommand({
          TableName: this.table,
          Key: backupKey(vmId, backupId),
          ConditionExpression: '#s = :p',
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: { ':p': 'pruning' },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }
}
