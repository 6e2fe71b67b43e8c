/** A client of the Step Functions API, as the CLI and tests use it: start, then wait. */
import { DescribeExecutionCommand, SFNClient, StartExecutionCommand, type DescribeExecutionCommandOutput } from '@aws-sdk/client-sfn';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOCAL_ENDPOINT_CREDENTIALS as LOCAL_CREDENTIALS } from '../core/s3-store.ts';
import type { StackEndpoints } from './stack.ts';

export function sfnClient(e: StackEndpoints): SFNClient {
  return new SFNClient({ region: e.region, endpoint: e.sfn, credentials: LOCAL_CREDENTIALS });
}

/** Starts an execution and polls until it stops; returns its final description. */
export async function runExecution(
  sfn: SFNClient,
  stateMachineArn: string,
  input: unknown,
  opts: { name?: string; pollMs?: number; onPoll?: () => void | Promise<void>; onStarted?: (executionArn: string) => void } = {},
): Promise<DescribeExecutionCommandOutput> {
  const { executionArn } = await sfn.send(
    new StartExecutionCommand({ stateMachineArn, input: JSON.stringify(input), ...(opts.name ? { name: opts.name } : {}) }),
  );
  opts.onStarted?.(executionArn!);
  return waitForExecution(sfn, executionArn!, opts);
}

/** Polls an execution (started by anyone: a person, a schedule, another workflow) until it stops; returns its final description. */
export async function waitForExecution(
  sfn: SFNClient,
  executionArn: string,
  opts: { pollMs?: number; onPoll?: () => void | Promise<void> } = {},
): Promise<DescribeExecutionCommandOutput> {
  for (;;) {
    const d = await sfn.send(new DescribeExecutionCommand({ executionArn }));
    if (d.status !== 'RUNNING') return d;
    await opts.onPoll?.();
    await sleep(opts.pollMs ?? 250);
  }
}
