/**
 * `lifeboat restore ... --instant`: the Restore workflow in instant mode. It says when the
 * VM runs (the instant recovery's endpoint record, written by the mover as soon as the
 * domain started on its overlays), then waits for the move to final storage and prints
 * the outcome; a failed move's error says where the VM's writes are and how to resume.
 */
import type { InstantRestoreSummary } from '../contracts/workflow-outputs.ts';
import { waitForEndpoint } from './export-endpoint.ts';
import { lambdaMessage, type Out, type StackClient } from './stack-client.ts';

export async function runInstantRestore(client: StackClient, input: Record<string, unknown> & { vmId: string }, io: Out): Promise<InstantRestoreSummary> {
  const started = Date.now();
  const restoreId = `instant-${input.vmId.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40)}-${started}`;
  const executionArn = await client.start('Restore', restoreId, input);
  const fail = (status: string, error?: string, cause?: string) => new Error(`Restore ${status}: ${error ?? ''}: ${lambdaMessage(cause ?? '')}`);
  const running = await waitForEndpoint({
    sfn: client.sfn,
    executionArn,
    store: client.store,
    exportId: restoreId,
    what: `instant recovery of VM '${input.vmId}'`,
    ready: (r) => r.phase !== undefined && r.phase !== 'failed',
  }).catch((err: { execution?: { status?: string; error?: string; cause?: string } }) => {
    if (err.execution && err.execution.status !== 'SUCCEEDED') throw fail(err.execution.status ?? 'ended', err.execution.error, err.execution.cause);
    return undefined;
  });
  if (running) {
    io.out(
      `VM ${running.domain} runs from backup ${running.backupId} of VM ${input.vmId} (${((Date.now() - started) / 1000).toFixed(1)} s after the request); its writes go to ${Object.values(running.overlays ?? {}).join(', ')}`,
    );
    io.out('moving it to its disks while it runs…');
  }
  const d = await client.waitFor(executionArn);
  if (d.status !== 'SUCCEEDED') throw fail(d.status ?? 'ended', d.error, d.cause);
  const s = JSON.parse(d.output!) as InstantRestoreSummary;
  if (s.notice) io.out(`NOTE: ${s.notice}`);
  io.out(
    `VM ${s.instant.domain} (${s.instant.uuid}) running on ${s.instant.disks.join(', ')}: running ${s.instant.runningSeconds.toFixed(1)} s after the task started, moved in ${s.instant.moveSeconds.toFixed(1)} s${s.instant.resumed ? ' (resumed)' : ''}; console ${s.instant.consoleLog}`,
  );
  return s;
}
