/**
 * AcquireRunLease / ReleaseRunLease: one Backup run per policy at a time. Two runs at once
 * back up the same VMs twice and store their data twice, so the second is refused with
 * `Run.Busy`, naming the execution that holds the lease.
 *
 * The lease is a catalog slot (`run:<policyId>`, a conditional write: dynalite has no
 * transactions and none is needed) held by the run's execution ARN. It is given back on
 * every exit path: after the VMs are done, on the run's failure path (which then fails
 * the execution with the original error), and by the reconcile of an execution that
 * stopped without either (aborted, timed out, the embedded stack killed). Should all of
 * them be missed, it expires after the Backup workflow's own timeout, so a crashed run
 * never blocks its policy for longer than a live one could run.
 */
import { z } from 'zod';
import { caughtError, LifeboatError, RunBusy } from '../../contracts/errors.ts';
import { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

/** The Backup workflow's timeout (cdk/lib/backup-workflow.ts) and a margin: a live run never loses its lease. */
export const RUN_LEASE_MS = 24 * 3600_000 + 10 * 60_000;

const scopeOf = (policyId: string) => `run:${policyId}`;

export const runLeaseInput = z
  .object({
    policyId: z.string(),
    /** The run's execution ARN: the holder, named to a run that is refused. */
    executionArn: z.string().min(1),
    /** Set on the failure path: the run's error, raised again once the lease is back. */
    error: caughtError.optional(),
  })
  .strict();
type RunLeaseInput = z.output<typeof runLeaseInput>;
type LeaseCatalog = Pick<Catalog, 'takeSlot' | 'releaseSlot' | 'slotHolder'>;

export async function acquireRunLease(input: RunLeaseInput, deps: { catalog: LeaseCatalog; now: () => number }): Promise<null> {
  const now = deps.now();
  if (await deps.catalog.takeSlot(scopeOf(input.policyId), 0, input.executionArn, now, now + RUN_LEASE_MS)) return null;
  const held = await deps.catalog.slotHolder(scopeOf(input.policyId), 0);
  const until = held ? new Date(held.expiresAt).toISOString() : 'now';
  throw new RunBusy(
    `policy '${input.policyId}' already has a Backup run in progress: execution ${held?.holder ?? '(just ended)'}; ` +
      `this run was refused so the same VMs are not backed up twice. Wait for that run to end, or stop it (StopExecution); ` +
      `if it died without its failure path, its lease expires at ${until}`,
  );
}

/** Gives the lease back if this execution holds it (idempotent); with `error`, fails with it afterwards. */
export async function releaseRunLease(input: RunLeaseInput, deps: { catalog: LeaseCatalog }): Promise<null> {
  if (input.policyId) await deps.catalog.releaseSlot(Catalog.slotKey(scopeOf(input.policyId), 0), input.executionArn);
  if (input.error) throw new LifeboatError(input.error.Error, input.error.Cause ?? '', { retryable: false });
  return null;
}

/**
 * Backups recorded `running` whose run is alive, as `vmId/backupId`: its execution still
 * holds its policy's run lease. A record left `running` by a run that died (its lease
 * given back by the reconcile, or expired) is not waited for: garbage collection defers
 * only for live runs.
 */
export async function liveRunningBackups(catalog: Pick<Catalog, 'runningBackups' | 'slotHolder'>, now: number): Promise<string[]> {
  const holders = new Map<string, Promise<{ holder: string; expiresAt: number } | undefined>>();
  const out: string[] = [];
  for (const b of await catalog.runningBackups()) {
    if (!holders.has(b.policyId)) holders.set(b.policyId, catalog.slotHolder(scopeOf(b.policyId), 0));
    const lease = await holders.get(b.policyId);
    if (lease && lease.expiresAt > now && lease.holder.endsWith(`:${b.runId}`)) out.push(`${b.vmId}/${b.backupId}`);
  }
  return out;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    acquireHandler: lambdaHandler('AcquireRunLease', runLeaseInput, (input) => acquireRunLease(input, { catalog: c.catalog, now: Date.now })),
    releaseHandler: lambdaHandler('ReleaseRunLease', runLeaseInput, (input) => releaseRunLease(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { acquireHandler, releaseHandler } = fromEnvironment(makeHandlers);
