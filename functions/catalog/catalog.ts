/**
 * The catalog: one DynamoDB table of policies, VMs, backups, runs and slots. Only the
 * control plane writes it; writes that matter are conditional, so retries are safe.
 */
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, ScanCommand, UpdateCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { DiscoveredVm } from '../../contracts/discovery.ts';
import type { DiskResult } from '../../contracts/jobs.ts';
import type { Backup, DiscoveredVmWrite, Host, HostConfigSettings, Policy, RestoreTest, Vm } from './catalog-records.ts';
import { isConditionFailed, k, strip } from './catalog-keys.ts';
import { markVmGone, recordDiscoveredVm } from './discovered-vms.ts';

/** The records are catalog-records.ts's; they are named here too, where most callers take them with the Catalog. */
export type { Backup, BackupStatus, DiscoveredVmWrite, Host, HostConfigSettings, Policy, ReplicaTarget, RestoreTest, Vm } from './catalog-records.ts';
export { isConditionFailed } from './catalog-keys.ts';

/** Typed access to the catalog table. */
export class Catalog {
  private readonly db: DynamoDBDocumentClient;
  readonly table: string;
  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  private async get<T>(key: Record<string, string>): Promise<T | undefined> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: key, ConsistentRead: true }));
    return strip<T>(out.Item);
  }

  putHostConfigSettings(s: HostConfigSettings) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.setting('HOST_CONFIG_BACKUP'), ...s } }));
  }
  /** Undefined until SyncConfig ran with this version. */
  getHostConfigSettings() {
    return this.get<HostConfigSettings>(k.setting('HOST_CONFIG_BACKUP'));
  }

  putPolicy(p: Policy) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.policy(p.policyId), ...p } }));
  }
  getPolicy(id: string) {
    return this.get<Policy>(k.policy(id));
  }
  deletePolicy(id: string) {
    return this.db.send(new DeleteCommand({ TableName: this.table, Key: k.policy(id) }));
  }
  /** Every policy (a small set: one item per configured policy). */
  async listPolicies(): Promise<Policy[]> {
    const out: Policy[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(
        new ScanCommand({
          TableName: this.table,
          FilterExpression: 'begins_with(pk, :p)',
          ExpressionAttributeValues: { ':p': 'POLICY#' },
          ExclusiveStartKey: start,
          ConsistentRead: true,
        }),
      );
      for (const it of page.Items ?? []) out.push(strip<Policy>(it)!);
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }
  async putHost(h: Host) {
    await this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.host(h.hostId), ...h } }));
    await this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.hostListing(h.hostId), hostId: h.hostId } }));
  }
  /** Every host the configuration put in the catalog. */
  async listHosts(): Promise<Host[]> {
    const ids = await this.queryAll('HOSTS', 'HOST#', 'hostId');
    const hosts = await Promise.all(ids.map((id) => this.getHost(id)));
    return hosts.filter((h): h is Host => !!h);
  }
  getHost(id: string) {
    return this.get<Host>(k.host(id));
  }
  /** Adds or updates a VM; moving it to another host moves its membership too. */
  async putVm(v: Vm) {
    const before = await this.getVm(v.vmId);
    await this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.vm(v.vmId), ...v } }));
    await this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.hostVm(v.host, v.vmId), vmId: v.vmId } }));
    if (before && before.host !== v.host) await this.db.send(new DeleteCommand({ TableName: this.table, Key: k.hostVm(before.host, v.vmId) }));
  }
  /** Ids of the inventory VMs on a host. */
  vmsOnHost(host: string): Promise<string[]> {
    return this.queryAll(`HOST#${host}`, 'VM#', 'vmId');
  }
  /** The `attribute` of every item of partition `pk` whose sort key starts with `skPrefix`. */
  private async queryAll(pk: string, skPrefix: string, attribute: string): Promise<string[]> {
    const values: string[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :v)',
          ExpressionAttributeValues: { ':pk': pk, ':v': skPrefix },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const it of out.Items ?? []) values.push(it[attribute] as string);
      start = out.LastEvaluatedKey;
    } while (start);
    return values;
  }

  /**
   * Records a VM the Discover workflow found on `hostId` (id `<name>@<hostId>`, source its
   * name): see discovered-vms.ts.
   */
  recordDiscoveredVm(hostId: string, d: DiscoveredVm, discovery: { id: string; at: string }): Promise<DiscoveredVmWrite> {
    return recordDiscoveredVm(this.db, this.table, hostId, d, discovery);
  }

  /** Marks a discovered VM gone (since `at`) unless a discovery saw it at or after `notSeenSince`: see discovered-vms.ts. */
  markVmGone(vmId: string, at: string, notSeenSince: string): Promise<boolean> {
    return markVmGone(this.db, this.table, vmId, at, notSeenSince);
  }

  getVm(id: string) {
    return this.get<Vm>(k.vm(id));
  }

  /** All backups of a VM, newest first. */
  async listBackups(vmId: string): Promise<Backup[]> {
    const items: Backup[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.db.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :b)',
          ExpressionAttributeValues: { ':pk': `VM#${vmId}`, ':b': 'BACKUP#' },
          ScanIndexForward: false,
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const it of out.Items ?? []) items.push(strip<Backup>(it)!);
      start = out.LastEvaluatedKey;
    } while (start);
    return items;
  }

  async latestCommitted(vmId: string): Promise<Backup | undefined> {
    return (await this.listBackups(vmId)).find((b) => b.status === 'committed');
  }

  /**
   * The parent of a VM's next backup: its newest committed backup, or a newer one damaged
   * only through chunks it shares with a backup whose verification found them (its
   * manifests open; the next backup stores those quarantined chunks again, as Plan names
   * them in `healChunks`).
   */
  async latestParent(vmId: string): Promise<Backup | undefined> {
    return (await this.listBackups(vmId)).find(
      (b) =>
        b.status === 'committed' || ((b.status as string) === 'damaged' && (b as Backup & { damage?: { foundIn?: unknown } }).damage?.foundIn !== undefined),
    );
  }
  getBackup(vmId: string, backupId: string) {
    return this.get<Backup>(k.backup(vmId, backupId));
  }

  /** Records a backup as running; a retry of the same Plan finds it already there. */
  async startBackup(b: Backup): Promise<void> {
    try {
      await this.db.send(
        new PutCommand({ TableName: this.table, Item: { ...k.backup(b.vmId, b.backupId), ...b }, ConditionExpression: 'attribute_not_exists(pk)' }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  /** running → committed; idempotent for a backup that is already committed. */
  async commitBackup(vmId: string, backupId: string, disks: DiskResult[], at: Date, snapshot: Pick<Backup, 'checkpoint' | 'consistency'> = {}): Promise<void> {
    const extra = {
      ...(snapshot.checkpoint ? { checkpoint: snapshot.checkpoint } : {}),
      ...(snapshot.consistency ? { consistency: snapshot.consistency } : {}),
    };
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: k.backup(vmId, backupId),
          UpdateExpression: `SET #s = :c, disks = :d, committedAt = :t${Object.keys(extra)
            .map((n) => `, #${n} = :${n}`)
            .join('')}`,
          ConditionExpression: '#s = :r',
          ExpressionAttributeNames: { '#s': 'status', ...Object.fromEntries(Object.keys(extra).map((n) => [`#${n}`, n])) },
          ExpressionAttributeValues: {
            ':c': 'committed',
            ':r': 'running',
            ':d': disks,
            ':t': at.toISOString(),
            ...Object.fromEntries(Object.entries(extra).map(([n, v]) => [`:${n}`, v])),
          },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
      const b = await this.getBackup(vmId, backupId);
      if (b?.status !== 'committed') throw new Error(`backup ${vmId}/${backupId} cannot be committed from status '${b?.status ?? 'missing'}'`);
    }
  }

  /** Records a restore test of a committed backup (the restored VM booted, or did not). */
  async recordRestoreTest(vmId: string, backupId: string, test: RestoreTest): Promise<void> {
    await this.db.send(
      new UpdateCommand({
        TableName: this.table,
        Key: k.backup(vmId, backupId),
        UpdateExpression: 'SET restoreTest = :t',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':t': test },
      }),
    );
  }

  /** running → failed; a committed backup is never downgraded. */
  async failBackup(vmId: string, backupId: string, error: { Error: string; Cause: string }): Promise<void> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: k.backup(vmId, backupId),
          UpdateExpression: 'SET #s = :f, #e = :e',
          ConditionExpression: '#s = :r',
          ExpressionAttributeNames: { '#s': 'status', '#e': 'error' },
          ExpressionAttributeValues: { ':f': 'failed', ':r': 'running', ':e': error },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  putRun(runId: string, run: Record<string, unknown>) {
    return this.db.send(new PutCommand({ TableName: this.table, Item: { ...k.run(runId), runId, ...run } }));
  }
  getRun(runId: string) {
    return this.get<Record<string, unknown>>(k.run(runId));
  }

  /**
   * Takes slot `i` of `host` for `holder` until `expiresAt` (epoch ms) when it is free or
   * its lease ran out. Returns false when another holder has it.
   */
  async takeSlot(host: string, i: number, holder: string, now: number, expiresAt: number): Promise<boolean> {
    try {
      await this.db.send(
        new PutCommand({
          TableName: this.table,
          Item: { ...k.slot(host, i), holder, expiresAt },
          ConditionExpression: 'attribute_not_exists(pk) OR expiresAt < :now OR holder = :h',
          ExpressionAttributeValues: { ':now': now, ':h': holder },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /** Who holds slot `i` of `scope`, and until when (epoch ms); undefined when nobody does. */
  async slotHolder(scope: string, i: number): Promise<{ holder: string; expiresAt: number } | undefined> {
    return this.get(k.slot(scope, i));
  }

  /**
   * Every slot whose holder is `holder` or starts with `holderPrefix`, with its scope
   * (`SLOT#<scope>` without the prefix). A Scan: the reconcile of a dead run reads it once.
   */
  async slotsHeldBy(holder: string, holderPrefix: string): Promise<{ key: { pk: string; sk: string }; scope: string; holder: string }[]> {
    const out: { key: { pk: string; sk: string }; scope: string; holder: string }[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(
        new ScanCommand({
          TableName: this.table,
          ConsistentRead: true,
          ExclusiveStartKey: start,
          FilterExpression: 'begins_with(pk, :s) AND (holder = :h OR begins_with(holder, :p))',
          ExpressionAttributeValues: { ':s': 'SLOT#', ':h': holder, ':p': holderPrefix },
        }),
      );
      for (const it of page.Items ?? [])
        out.push({ key: { pk: it.pk as string, sk: it.sk as string }, scope: (it.pk as string).slice('SLOT#'.length), holder: it.holder as string });
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }

  /** The backups still recorded `running`, of run `runId` or of every run (a Scan: read once per reconcile or collection). */
  async runningBackups(runId?: string): Promise<Backup[]> {
    return this.scanBackups(`#s = :running${runId ? ' AND runId = :r' : ''}`, { ':running': 'running', ...(runId ? { ':r': runId } : {}) });
  }

  /** Every backup a run made or is making, whatever its status (a Scan: the operator's view of one run). */
  backupsOfRun(runId: string): Promise<Backup[]> {
    return this.scanBackups('runId = :r', { ':r': runId });
  }

  /** Every backup's status by backup id (a Scan: garbage collection reads it once). */
  async backupStatuses(): Promise<Map<string, string>> {
    return new Map((await this.scanBackups()).map((b) => [b.backupId, b.status]));
  }

  /** Every backup in one of `statuses` (a Scan: deep verification's damage sharing reads it once). */
  async backupsWithStatus(statuses: string[]): Promise<Backup[]> {
    const values = Object.fromEntries(statuses.map((s, i) => [`:s${i}`, s]));
    return this.scanBackups(`#s IN (${Object.keys(values).join(', ')})`, values);
  }

  private async scanBackups(filter?: string, values: Record<string, string> = {}): Promise<Backup[]> {
    const out: Backup[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.db.send(
        new ScanCommand({
          TableName: this.table,
          ConsistentRead: true,
          ExclusiveStartKey: start,
          FilterExpression: `begins_with(sk, :b)${filter ? ` AND ${filter}` : ''}`,
          ...(filter?.includes('#s') ? { ExpressionAttributeNames: { '#s': 'status' } } : {}),
          ExpressionAttributeValues: { ':b': 'BACKUP#', ...values },
        }),
      );
      for (const it of page.Items ?? []) out.push(strip<Backup>(it)!);
      start = page.LastEvaluatedKey;
    } while (start);
    return out;
  }

  /** Frees the slot if `holder` still has it (a no-op otherwise: idempotent). */
  async releaseSlot(key: { pk: string; sk: string }, holder: string): Promise<void> {
    try {
      await this.db.send(
        new DeleteCommand({ TableName: this.table, Key: key, ConditionExpression: 'holder = :h', ExpressionAttributeValues: { ':h': holder } }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }
  static slotKey = k.slot;
}
