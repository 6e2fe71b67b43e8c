/**
 * What a Backup run used, counted from the executions' own records and event logs (the run's
 * parent and its VMs' child executions) and from the stores' request counters, and what it
 * would cost at the list prices in `aws-prices.json`. Used by `bench/fleet.ts`.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { functionAccess } from '../cdk/lib/function-access.ts';
import type { SdkCall } from '../local/stack.ts';
import type { LambdaFunctionId } from '../contracts/functions.ts';
import type { QuotaUsage } from '../local/quota-guard.ts';
import type { ExecutionRecord } from '../local/sfn-api.ts';
import { LocalExecutions } from '../local/executions.ts';

/** The states a VM spends getting its slots: the fast path, then the wait in line when it had to queue. */
export const SLOT_STATES = new Set(['AcquireSlot', 'WaitForSlot']);

export interface Prices {
  date: string;
  region: string;
  source: string;
  stepFunctionsStandardPerTransition: number;
  lambdaPerRequest: number;
  lambdaArmPerGbSecond: number;
  dynamodbOnDemandPerWriteUnit: number;
  dynamodbOnDemandPerReadUnit: number;
  s3StandardPerPutCopyPostList: number;
  s3StandardPerGetAndOther: number;
  s3DeletePerRequest: number;
  kmsPerRequest: number;
}

export async function loadPrices(): Promise<Prices> {
  return JSON.parse(await readFile(new URL('./aws-prices.json', import.meta.url), 'utf8')) as Prices;
}

interface HistoryEvent {
  type: string;
  timestamp: number;
  state?: { name: string };
}

/** One Backup run's executions: state transitions, history sizes, payloads, and each VM's wait for a slot. */
export interface RunExecutions {
  executions: number;
  transitions: number;
  /** State transitions by state name, over all the run's executions. */
  transitionsByState: Record<string, number>;
  parentHistory: number;
  largestHistory: { events: number; execution: string };
  largestPayload: { bytes: number; where: string; execution: string };
  historyEventsPerVm: number;
  /** Seconds from entering AcquireSlot to leaving it (or WaitForSlot, when it had to queue), per VM. */
  slotWaits: number[];
}

/** The execution `executionArn` first, then every execution its Map Runs started, and theirs, from the stack's records. */
export async function runRecords(dataDir: string, executionArn: string): Promise<ExecutionRecord[]> {
  const folder = join(dataDir, 'executions');
  const records: ExecutionRecord[] = [];
  for (const f of await readdir(folder)) if (f.endsWith('.json')) records.push(JSON.parse(await readFile(join(folder, f), 'utf8')) as ExecutionRecord);
  const parent = records.find((r) => r.executionArn === executionArn);
  if (!parent) throw new Error(`no record of execution ${executionArn} in ${folder}`);
  const run = [parent];
  for (let i = 0; i < run.length; i++) run.push(...records.filter((r) => r.parentExecutionArn === run[i]!.executionArn));
  return run;
}

/** A VM's own execution of a Backup run (the BackupVms Map's child), not the run's or a host's. */
export const isVmExecution = (r: Pick<ExecutionRecord, 'stateMachineArn'>) => r.stateMachineArn.endsWith('/BackupVm');

export async function runExecutions(dataDir: string, executionArn: string): Promise<RunExecutions> {
  const folder = join(dataDir, 'executions');
  const run = await runRecords(dataDir, executionArn);
  let transitions = 0;
  const byState: Record<string, number> = {};
  const slotWaits: number[] = [];
  for (const r of run) {
    const base = LocalExecutions.fileBase(r);
    const events = (await readFile(join(folder, `${base}.history.jsonl`), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as HistoryEvent);
    for (const e of events.filter((e) => e.type === 'StateEntered')) {
      transitions++;
      byState[e.state?.name ?? '?'] = (byState[e.state?.name ?? '?'] ?? 0) + 1;
    }
    const entered = events.find((e) => e.type === 'StateEntered' && e.state?.name === 'AcquireSlot');
    const exited = events.findLast((e) => e.type === 'StateExited' && SLOT_STATES.has(e.state?.name ?? ''));
    if (entered && exited) slotWaits.push((exited.timestamp - entered.timestamp) / 1000);
  }
  const usage = run.map((r) => ({ arn: r.executionArn, ...(r.quotaUsage as QuotaUsage) }));
  const history = usage.reduce((a, b) => (b.historyEvents > a.historyEvents ? b : a));
  const payload = usage.reduce((a, b) => (b.largestPayload.bytes > a.largestPayload.bytes ? b : a));
  const children = usage.filter((_, i) => isVmExecution(run[i]!));
  return {
    executions: run.length,
    transitions,
    transitionsByState: byState,
    parentHistory: usage[0]!.historyEvents,
    largestHistory: { events: history.historyEvents, execution: history.arn.split(':').slice(-2).join(':') },
    largestPayload: { ...payload.largestPayload, execution: payload.arn.split(':').slice(-2).join(':') },
    historyEventsPerVm: children.reduce((s, c) => s + c.historyEvents, 0) / Math.max(1, children.length),
    slotWaits,
  };
}

const itemBytes = (item: unknown) => Buffer.byteLength(JSON.stringify(item ?? {}));

/**
 * DynamoDB request units of one call, as on-demand capacity bills them: a strongly consistent
 * read 1 unit per 4 KB of each item read (eventual: half), a write 1 unit per 1 KB of the item.
 * Updates and deletes are counted at 1 unit (the catalog's items are under 1 KB but for a
 * backup record with many disks): a slight undercount there.
 */
export function dynamodbUnits(call: SdkCall): { read: number; write: number } {
  const i = call.input as Record<string, unknown>;
  const o = (call.output ?? {}) as Record<string, unknown>;
  const reads = (items: unknown[], consistent: boolean) =>
    items.reduce<number>((s, it) => s + Math.max(1, Math.ceil(itemBytes(it) / 4096)) * (consistent ? 1 : 0.5), 0);
  switch (call.operation) {
    case 'GetItem':
      return { read: reads([o.Item ?? {}], i.ConsistentRead === true), write: 0 };
    case 'Query':
    case 'Scan': {
      const bytes = ((o.Items as unknown[] | undefined) ?? []).reduce<number>((s, it) => s + itemBytes(it), 0);
      return { read: Math.max(1, Math.ceil(bytes / 4096)) * (i.ConsistentRead === true ? 1 : 0.5), write: 0 };
    }
    case 'BatchGetItem': {
      const got = Object.values((o.Responses as Record<string, unknown[]> | undefined) ?? {}).flat();
      const consistent = Object.values((i.RequestItems as Record<string, { ConsistentRead?: boolean }>) ?? {}).some((r) => r.ConsistentRead);
      return { read: reads(got, consistent), write: 0 };
    }
    case 'PutItem':
      return { read: 0, write: Math.max(1, Math.ceil(itemBytes(i.Item) / 1024)) };
    case 'BatchWriteItem': {
      const reqs = Object.values((i.RequestItems as Record<string, { PutRequest?: { Item: unknown } }[]>) ?? {}).flat();
      return { read: 0, write: reqs.reduce((s, r) => s + Math.max(1, Math.ceil(itemBytes(r.PutRequest?.Item) / 1024)), 0) };
    }
    case 'UpdateItem':
    case 'DeleteItem':
      return { read: 0, write: 1 };
    default:
      return { read: 0, write: 0 };
  }
}

/** What one VM-backup used, on average over a run. */
export interface PerVmBackup {
  transitions: number;
  lambdaInvocations: number;
  lambdaGbSeconds: number;
  /** The same invocations each timed at its function's shortest one: what the GB-seconds fall to without the shared machine's load. */
  lambdaGbSecondsFloor?: number;
  /**
   * The same invocations each timed at its function's mean duration in a run of VMs one at a
   * time on the otherwise idle stack (bench/fleet-solo.ts): the estimate of what AWS bills.
   */
  lambdaGbSecondsAlone?: number;
  /** By function: invocations and GB-seconds per VM-backup. */
  lambdaByFunction?: Record<string, { invocations: number; gbSeconds: number; gbSecondsFloor: number; gbSecondsAlone?: number }>;
  dynamodbReadUnits: number;
  dynamodbWriteUnits: number;
  /** S3 requests by kind: PUT (with POST, COPY), LIST, GET, HEAD, DELETE. */
  s3: Record<string, number>;
  kmsCalls: number;
}

/** A function's configured memory in GB (cdk/lib/function-access.ts; default 512 MiB). */
export const memoryGb = (id: string) => (functionAccess[id as LambdaFunctionId]?.memoryMiB ?? 512) / 1024;

/** Lambda GB-seconds of invocations: each function's measured time at its configured memory. */
export function gbSeconds(invocations: Record<string, { count: number; ms: number }>): number {
  return Object.entries(invocations).reduce((s, [id, v]) => s + (v.ms / 1000) * memoryGb(id), 0);
}

/** The cost of `n` VM-backups, by service, in dollars. */
export function price(u: PerVmBackup, p: Prices, n = 1000): Record<string, number> {
  const s3Tier1 = (u.s3.PUT ?? 0) + (u.s3.LIST ?? 0);
  const s3Tier2 = (u.s3.GET ?? 0) + (u.s3.HEAD ?? 0);
  return {
    'Step Functions': n * u.transitions * p.stepFunctionsStandardPerTransition,
    Lambda: n * (u.lambdaInvocations * p.lambdaPerRequest + u.lambdaGbSeconds * p.lambdaArmPerGbSecond),
    DynamoDB: n * (u.dynamodbReadUnits * p.dynamodbOnDemandPerReadUnit + u.dynamodbWriteUnits * p.dynamodbOnDemandPerWriteUnit),
    KMS: n * u.kmsCalls * p.kmsPerRequest,
    S3: n * (s3Tier1 * p.s3StandardPerPutCopyPostList + s3Tier2 * p.s3StandardPerGetAndOther + (u.s3.DELETE ?? 0) * p.s3DeletePerRequest),
  };
}
