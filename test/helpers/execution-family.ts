/**
 * An execution and the child executions its Distributed Maps started, as the embedded
 * stack records them (`<data>/executions/*.json`), each with what it used of Step
 * Functions' quotas; and the largest history and payload among them, which the scale
 * tests assert and print.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { QuotaUsage } from '../../local/quota-guard.ts';
import type { ExecutionRecord } from '../../local/sfn-api.ts';

export type RecordWithUsage = ExecutionRecord & { quotaUsage: QuotaUsage };

/** The execution `executionArn` and its Map Runs' children. */
export async function executionFamily(dataDir: string, executionArn: string): Promise<RecordWithUsage[]> {
  const folder = join(dataDir, 'executions');
  const all = await Promise.all(
    (await readdir(folder)).filter((f) => f.endsWith('.json')).map(async (f) => JSON.parse(await readFile(join(folder, f), 'utf8')) as RecordWithUsage),
  );
  return all.filter((r) => r.executionArn === executionArn || r.parentExecutionArn === executionArn);
}

/** The largest history (events, and which execution) and the largest payload (bytes, where, which execution) of `runs`. */
export function largestUsage(runs: RecordWithUsage[]) {
  const history = runs.reduce((a, b) => (b.quotaUsage.historyEvents > a.quotaUsage.historyEvents ? b : a));
  const payload = runs.reduce((a, b) => (b.quotaUsage.largestPayload.bytes > a.quotaUsage.largestPayload.bytes ? b : a));
  const name = (r: RecordWithUsage) => r.executionArn.split(':').slice(-2).join(':');
  return {
    history: history.quotaUsage.historyEvents,
    historyExecution: name(history),
    payload: payload.quotaUsage.largestPayload,
    payloadExecution: name(payload),
  };
}
