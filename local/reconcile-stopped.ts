/** At each start of the embedded stack: the Reconcile workflow for Backup runs that were stopped (what the EventBridge rule does in AWS). */
import type { LocalExecutions } from './executions.ts';

/**
 * Starts the Reconcile workflow (cdk/lib/reconcile-workflow.ts) for every Backup execution
 * that stopped without its failure path (ABORTED: by StopExecution, or by a stop of the
 * stack) and has no successful or running reconcile yet, as the EventBridge rule does in
 * AWS. Every start of the stack looks again: a reconcile the stack's stop cut off is run
 * anew (it is idempotent), under the next free name.
 */
export async function reconcileStoppedRuns(executions: LocalExecutions, backupArn: string, reconcileArn: string): Promise<void> {
  const reconciles = await executions.list(reconcileArn);
  for (const run of await executions.list(backupArn, 'ABORTED')) {
    const prefix = `reconcile-${run.name}`;
    const tries = reconciles.filter((r) => r.name === prefix || r.name.startsWith(`${prefix}-`));
    if (tries.some((r) => r.status === 'SUCCEEDED' || r.status === 'RUNNING')) continue;
    const input = {
      executionArn: run.executionArn,
      runId: run.name,
      error: { Error: run.error ?? 'Backup.RunStopped', Cause: run.cause ?? `execution ${run.name} was stopped (StopExecution)` },
    };
    await executions.start(reconcileArn, JSON.stringify(input), tries.length ? `${prefix}-${tries.length + 1}` : prefix).catch(() => {}); // started meanwhile by a StopExecution
  }
}
