/**
 * Learning where a running export (or instant recovery) can be reached: its execution is
 * started, then its endpoint record (contracts/export-job.ts `exportEndpoint`, written by the
 * mover at `exports/<exportId>.json`) is read until it says what the caller waits for,
 * while the execution is watched: an execution that ends first ends the wait with its
 * error, so a failed plan (no such VM or backup) or a mover that died is said at once.
 */
import { DescribeExecutionCommand, type DescribeExecutionCommandOutput, type SFNClient } from '@aws-sdk/client-sfn';
import { setTimeout as sleep } from 'node:timers/promises';
import { exportEndpoint, exportEndpointKey, type ExportEndpoint } from '../contracts/export-job.ts';
import type { ObjectStore } from '../core/object-store.ts';

/** The endpoint record of `exportId`, or undefined while there is none (or it does not parse). */
export async function readEndpoint(store: ObjectStore, exportId: string): Promise<ExportEndpoint | undefined> {
  const body = await store.get(exportEndpointKey(exportId));
  if (!body) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined; // read while the mover rewrote it (a local S3 server may serve a half-written object)
  }
  const parsed = exportEndpoint.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}

/** Thrown when the execution stopped before its endpoint record said what was waited for. */
export class ExecutionEnded extends Error {
  readonly execution: DescribeExecutionCommandOutput;
  constructor(d: DescribeExecutionCommandOutput, what: string) {
    super(`${what}: the execution ${d.status}${d.error ? ` with ${d.error}` : ''}${d.cause ? `: ${d.cause}` : ''} before it got there`);
    this.name = 'ExecutionEnded';
    this.execution = d;
  }
}

/**
 * Polls the record of `exportId` until `ready(record)` holds; throws ExecutionEnded when
 * the execution stops first (a record of an execution that ended is stale).
 */
export async function waitForEndpoint(o: {
  sfn: Pick<SFNClient, 'send'>;
  executionArn: string;
  store: ObjectStore;
  exportId: string;
  ready: (e: ExportEndpoint) => boolean;
  what: string;
  pollMs?: number;
  signal?: AbortSignal;
}): Promise<ExportEndpoint> {
  for (;;) {
    o.signal?.throwIfAborted();
    // A read that fails (a dropped connection) is tried again at the next poll, as the execution is.
    const record = await readEndpoint(o.store, o.exportId).catch(() => undefined);
    if (record && o.ready(record)) return record;
    const d = await o.sfn.send(new DescribeExecutionCommand({ executionArn: o.executionArn }));
    if (d.status !== 'RUNNING') throw new ExecutionEnded(d, o.what);
    await sleep(o.pollMs ?? 250);
  }
}
