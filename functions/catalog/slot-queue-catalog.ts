/**
 * The fair slot queue's records (functions/backup/slot-queue.ts works them):
 * - a waiter per VM waiting for backup slots, `SLOTW#<holder>` / `WAITER`: its scopes, the
 *   task token its AcquireSlot task waits on (replaced when AcquireSlot is tried again, its
 *   place kept), its place `seq`, and a short claim while one server grants it;
 * - its entry in each of its scopes' queues, `SLOTQ#<scope>` / `Q#<seq>`, read in order
 *   (`seq` is the time it first queued and the holder, so the queue is first come, first served);
 * - each scope's count of changes (a slot released, a VM queued), `SLOTQ#<scope>` / `RELEASES`,
 *   and its server's lock, `SLOTQ#<scope>` / `SERVER`: one server walks a line at a time, and
 *   reads the count again after, so a change whose author found the line locked is never missed;
 * - the slots themselves, `SLOT#<scope>` / `SLOT#<i>` (Catalog.takeSlot), read here per scope.
 * Every write that decides something is a single-item conditional write (dynalite has no
 * transactions).
 */
import { DeleteCommand, GetCommand, PutCommand, QueryCommand, UpdateCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import type { SlotScope } from '../../contracts/jobs.ts';
import { isConditionFailed } from './catalog.ts';

/** A VM waiting for its slots. */
export interface SlotWaiter {
  holder: string;
  scopes: SlotScope[];
  /** The task token of its AcquireSlot task (`.waitForTaskToken`). */
  token: string;
  /** Its place in its scopes' queues. */
  seq: string;
  /** While a server grants it (epoch ms), and which. */
  claimUntil?: number;
  claimBy?: string;
  /** When Step Functions refused its token (epoch ms): its wait ran out and AcquireSlot is about to queue it again, or its execution died. */
  deadSince?: number;
}

/** One slot of a scope as the catalog holds it. */
export interface HeldSlot {
  index: number;
  holder: string;
  expiresAt: number;
}

const waiterKey = (holder: string) => ({ pk: `SLOTW#${holder}`, sk: 'WAITER' });
const entryKey = (scope: string, seq: string) => ({ pk: `SLOTQ#${scope}`, sk: `Q#${seq}` });
const releasesKey = (scope: string) => ({ pk: `SLOTQ#${scope}`, sk: 'RELEASES' });
const serverKey = (scope: string) => ({ pk: `SLOTQ#${scope}`, sk: 'SERVER' });

/** A place in line: the first time the holder queued (ms, fixed width so it sorts), then the holder. */
export const queueSeq = (now: number, holder: string) => `${String(now).padStart(15, '0')}#${holder}`;

export class SlotQueueCatalog {
  private readonly db: DynamoDBDocumentClient;
  private readonly table: string;

  constructor(db: DynamoDBDocumentClient, table: string) {
    this.db = db;
    this.table = table;
  }

  /**
   * Puts `holder` in line in every one of its scopes, or, when it already is (its AcquireSlot
   * tried again), gives it the new token and keeps its place. Returns its waiter.
   */
  async enqueue(holder: string, scopes: SlotScope[], token: string, now: number): Promise<SlotWaiter> {
    let waiter: SlotWaiter = { holder, scopes, token, seq: queueSeq(now, holder) };
    try {
      await this.db.send(new PutCommand({ TableName: this.table, Item: { ...waiterKey(holder), ...waiter }, ConditionExpression: 'attribute_not_exists(pk)' }));
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
      const out = await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: waiterKey(holder),
          UpdateExpression: 'SET #t = :t REMOVE deadSince',
          ExpressionAttributeNames: { '#t': 'token' },
          ExpressionAttributeValues: { ':t': token },
          ConditionExpression: 'attribute_exists(pk)',
          ReturnValues: 'ALL_NEW',
        }),
      );
      waiter = out.Attributes as SlotWaiter;
    }
    for (const { scope } of waiter.scopes) {
      await this.db.send(new PutCommand({ TableName: this.table, Item: { ...entryKey(scope, waiter.seq), holder } }));
    }
    return waiter;
  }

  async waiter(holder: string): Promise<SlotWaiter | undefined> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: waiterKey(holder), ConsistentRead: true }));
    return out.Item as SlotWaiter | undefined;
  }

  /** A page of `scope`'s queue, first in line first. */
  async entries(scope: string, start?: Record<string, unknown>): Promise<{ entries: { holder: string; seq: string }[]; next?: Record<string, unknown> }> {
    const out = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        ConsistentRead: true,
        Limit: 50,
        ExclusiveStartKey: start,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :q)',
        ExpressionAttributeValues: { ':pk': `SLOTQ#${scope}`, ':q': 'Q#' },
      }),
    );
    return {
      entries: (out.Items ?? []).map((it) => ({ holder: it.holder as string, seq: (it.sk as string).slice(2) })),
      ...(out.LastEvaluatedKey ? { next: out.LastEvaluatedKey } : {}),
    };
  }

  /** Whether anyone is in `scope`'s line (a strongly consistent read of its first entry). */
  async hasWaiters(scope: string): Promise<boolean> {
    const out = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        ConsistentRead: true,
        Limit: 1,
        ProjectionExpression: 'pk',
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :q)',
        ExpressionAttributeValues: { ':pk': `SLOTQ#${scope}`, ':q': 'Q#' },
      }),
    );
    return (out.Items ?? []).length > 0;
  }

  /** Claims the waiter for `server` until `until` when nobody else has it and its token is still `token`; false otherwise. */
  async claim(w: SlotWaiter, server: string, now: number, until: number): Promise<boolean> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: waiterKey(w.holder),
          UpdateExpression: 'SET claimUntil = :u, claimBy = :s',
          ConditionExpression: '#t = :t AND (attribute_not_exists(claimUntil) OR claimUntil < :now)',
          ExpressionAttributeNames: { '#t': 'token' },
          ExpressionAttributeValues: { ':u': until, ':s': server, ':t': w.token, ':now': now },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /**
   * Marks the waiter's token refused, keeping its place (and giving its claim back), if its
   * token is still `w.token`; false when it queued again with a new token meanwhile.
   */
  async markDead(w: SlotWaiter, now: number): Promise<boolean> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: waiterKey(w.holder),
          UpdateExpression: 'SET deadSince = :now REMOVE claimUntil, claimBy',
          ConditionExpression: '#t = :t',
          ExpressionAttributeNames: { '#t': 'token' },
          ExpressionAttributeValues: { ':t': w.token, ':now': now },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /** Gives the claim back (when `server` still has it): the waiter keeps its place. */
  async unclaim(holder: string, server: string): Promise<void> {
    try {
      await this.db.send(
        new UpdateCommand({
          TableName: this.table,
          Key: waiterKey(holder),
          UpdateExpression: 'REMOVE claimUntil, claimBy',
          ConditionExpression: 'claimBy = :s',
          ExpressionAttributeValues: { ':s': server },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  /**
   * Takes the waiter out of line if its token is still `token` (served, or its token found
   * dead); false when it queued again with a new token meanwhile, which keeps it in line.
   */
  async remove(w: SlotWaiter): Promise<boolean> {
    try {
      await this.db.send(
        new DeleteCommand({
          TableName: this.table,
          Key: waiterKey(w.holder),
          ConditionExpression: '#t = :t',
          ExpressionAttributeNames: { '#t': 'token' },
          ExpressionAttributeValues: { ':t': w.token },
        }),
      );
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
    for (const { scope } of w.scopes) await this.removeEntry(scope, w.seq);
    return true;
  }

  /** Takes `holder` out of line whatever its token (its VM's steps ended). */
  async forget(holder: string): Promise<void> {
    const out = await this.db.send(new DeleteCommand({ TableName: this.table, Key: waiterKey(holder), ReturnValues: 'ALL_OLD' }));
    const w = out.Attributes as SlotWaiter | undefined;
    for (const { scope } of w?.scopes ?? []) await this.removeEntry(scope, w!.seq);
  }

  /** Removes one queue entry (its waiter is gone). */
  async removeEntry(scope: string, seq: string): Promise<void> {
    await this.db.send(new DeleteCommand({ TableName: this.table, Key: entryKey(scope, seq) }));
  }

  /** How many times `scope`'s line changed: a slot given back, a VM queued. */
  async changes(scope: string): Promise<number> {
    const out = await this.db.send(new GetCommand({ TableName: this.table, Key: releasesKey(scope), ConsistentRead: true }));
    return (out.Item?.n as number | undefined) ?? 0;
  }

  async countChange(scope: string): Promise<void> {
    await this.db.send(
      new UpdateCommand({ TableName: this.table, Key: releasesKey(scope), UpdateExpression: 'ADD n :one', ExpressionAttributeValues: { ':one': 1 } }),
    );
  }

  /** Takes `scope`'s line for `server` until `until` (epoch ms) when nobody has it or its last server's time ran out; false otherwise. */
  async lockLine(scope: string, server: string, now: number, until: number): Promise<boolean> {
    try {
      await this.db.send(
        new PutCommand({
          TableName: this.table,
          Item: { ...serverKey(scope), server, until },
          ConditionExpression: 'attribute_not_exists(pk) OR #u < :now',
          ExpressionAttributeNames: { '#u': 'until' },
          ExpressionAttributeValues: { ':now': now },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailed(err)) return false;
      throw err;
    }
  }

  /** Gives `scope`'s line back (when `server` still has it). */
  async unlockLine(scope: string, server: string): Promise<void> {
    try {
      await this.db.send(
        new DeleteCommand({
          TableName: this.table,
          Key: serverKey(scope),
          ConditionExpression: '#s = :s',
          ExpressionAttributeNames: { '#s': 'server' },
          ExpressionAttributeValues: { ':s': server },
        }),
      );
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
  }

  /** The slots of `scope` someone holds (or held: a lease that ran out stays until it is taken over). */
  async slotsOf(scope: string): Promise<HeldSlot[]> {
    const out = await this.db.send(
      new QueryCommand({
        TableName: this.table,
        ConsistentRead: true,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': `SLOT#${scope}` },
      }),
    );
    return (out.Items ?? []).map((it) => ({
      index: Number((it.sk as string).slice('SLOT#'.length)),
      holder: it.holder as string,
      expiresAt: it.expiresAt as number,
    }));
  }
}
