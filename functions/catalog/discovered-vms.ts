/**
 * The Discover workflow's writes to the catalog: a discovered VM recorded (conditional: a
 * VM added by hand with the same id is left alone) and listed on its host, and a VM the
 * last discovery did not find marked gone.
 */
import { PutCommand, UpdateCommand, type DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { discoveredVmId, type DiscoveredVm } from '../../contracts/discovery.ts';
import type { DiscoveredVmWrite } from './catalog-records.ts';
import { isConditionFailed, k } from './catalog-keys.ts';

/**
 * Records a VM the Discover workflow found on `hostId` (id `<name>@<hostId>`, source its
 * name): its facts, `discoveredAt`, and no longer gone. Conditional: a VM added by hand
 * with the same id (no `discoveredAt`) is left alone. Safe to repeat (a retried page).
 */
export async function recordDiscoveredVm(
  db: DynamoDBDocumentClient,
  table: string,
  hostId: string,
  d: DiscoveredVm,
  discovery: { id: string; at: string },
): Promise<DiscoveredVmWrite> {
  const vmId = discoveredVmId(d.name, hostId);
  const set = {
    vmId,
    host: hostId,
    source: d.name,
    name: d.name,
    uuid: d.uuid,
    state: d.state,
    tags: d.tags,
    agent: d.agent,
    disks: d.disks,
    discoveredAt: discovery.at,
    discoveredBy: discovery.id,
  };
  const names = Object.fromEntries(Object.keys(set).map((a, i) => [`#a${i}`, a]));
  const values = Object.fromEntries(Object.values(set).map((v, i) => [`:v${i}`, v]));
  let old: Record<string, unknown> | undefined;
  try {
    const out = await db.send(
      new UpdateCommand({
        TableName: table,
        Key: k.vm(vmId),
        UpdateExpression: `SET ${Object.keys(set)
          .map((_, i) => `#a${i} = :v${i}`)
          .join(', ')}, #first = if_not_exists(#first, :id) REMOVE #gone, #goneSince`,
        ConditionExpression: 'attribute_not_exists(pk) OR attribute_exists(#at)',
        ExpressionAttributeNames: { ...names, '#first': 'firstDiscoveredBy', '#gone': 'gone', '#goneSince': 'goneSince', '#at': 'discoveredAt' },
        ExpressionAttributeValues: { ...values, ':id': discovery.id },
        ReturnValues: 'ALL_OLD',
      }),
    );
    old = out.Attributes;
  } catch (err) {
    if (isConditionFailed(err)) return 'manual';
    throw err;
  }
  // Always (idempotent): a retry after a failure between the two writes still lists the VM on its host.
  await db.send(new PutCommand({ TableName: table, Item: { ...k.hostVm(hostId, vmId), vmId } }));
  if (!old || old.firstDiscoveredBy === discovery.id) return 'new';
  return old.gone ? 'returned' : 'seen';
}

/**
 * Marks a discovered VM gone (since `at`) unless a discovery saw it at or after
 * `notSeenSince` (this one, or one running beside it). A VM added by hand is never
 * marked. Returns whether this call marked it.
 */
export async function markVmGone(db: DynamoDBDocumentClient, table: string, vmId: string, at: string, notSeenSince: string): Promise<boolean> {
  try {
    await db.send(
      new UpdateCommand({
        TableName: table,
        Key: k.vm(vmId),
        UpdateExpression: 'SET #gone = :t, #goneSince = :at',
        ConditionExpression: 'attribute_exists(#at) AND #at < :since AND attribute_not_exists(#gone)',
        ExpressionAttributeNames: { '#gone': 'gone', '#goneSince': 'goneSince', '#at': 'discoveredAt' },
        ExpressionAttributeValues: { ':t': true, ':at': at, ':since': notSeenSince },
      }),
    );
    return true;
  } catch (err) {
    if (isConditionFailed(err)) return false;
    throw err;
  }
}
