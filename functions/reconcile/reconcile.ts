/**
 * PlanReconcile: what a Backup execution that stopped without its failure path left
 * behind (aborted by StopExecution, timed out, or the embedded stack killed under it).
 * Step Functions runs no Catch for those, so its VMs' records stay `running`, their slots
 * held and their snapshots on the hosts. The Reconcile workflow takes this plan through
 * the Backup workflow's own failure path, per VM: RecordFailure, ReleaseSlot and the
 * mover's releaseSnapshot (same handlers, same task), then ReleaseRunLease.
 *
 * The VM jobs are rebuilt from the catalog: the VM's source and host, the host's mover
 * group, and the slots still held for the run (found by holder). Their `snapshot` is null:
 * the control plane never sees the mover's snapshot handle, so the mover releases the
 * snapshot it made for the backup id (SourceDriver.releaseBackup).
 */
import { z } from 'zod';
import type { VmJob } from '../../contracts/jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { caughtError } from '../../contracts/errors.ts';

export const reconcileInput = z.looseObject({
  /** The stopped Backup execution; its name is the run id. */
  executionArn: z.string().min(1),
  runId: z.string().min(1),
  /** Why it stopped: recorded as each running backup's failure. */
  error: caughtError,
});

export interface ReconcilePlan {
  executionArn: string;
  runId: string;
  /** The policy whose run lease the execution held ('' when it held none). */
  policyId: string;
  /** One job per backup the run left `running`, with the error RecordFailure records. */
  vms: (VmJob & { error: { Error: string; Cause: string } })[];
}

type ReconcileCatalog = Pick<Catalog, 'runningBackups' | 'slotsHeldBy' | 'getVm' | 'getHost' | 'getPolicy'>;

export async function planReconcile(input: z.output<typeof reconcileInput>, deps: { catalog: ReconcileCatalog }): Promise<ReconcilePlan> {
  const error = { Error: input.error.Error, Cause: input.error.Cause ?? '' };
  const held = await deps.catalog.slotsHeldBy(input.executionArn, `${input.runId}/`);
  const lease = held.find((s) => s.holder === input.executionArn && s.scope.startsWith('run:'));
  const backups = await deps.catalog.runningBackups(input.runId);
  const vms: ReconcilePlan['vms'] = [];
  for (const b of backups) {
    const vm = await deps.catalog.getVm(b.vmId);
    const host = vm ? await deps.catalog.getHost(vm.host) : undefined;
    const policy = await deps.catalog.getPolicy(b.policyId);
    const holder = `${input.runId}/${b.vmId}`;
    const slots = held.filter((s) => s.holder === holder);
    // A VM or policy removed since the run started: the job still parses (RecordFailure and
    // ReleaseSlot need no more), and the mover refuses a source that is no absolute path.
    const gone = '(not in the catalog)';
    vms.push({
      runId: input.runId,
      policyId: b.policyId,
      backupId: b.backupId,
      vmId: b.vmId,
      host: vm?.host ?? gone,
      moverGroup: host?.moverGroup ?? gone,
      source: vm?.source ?? gone,
      repository: { bucket: policy?.bucket ?? gone, chunkSize: policy?.chunkSize ?? 1, ...(policy?.endpoint ? { endpoint: policy.endpoint } : {}) },
      parentBackupId: b.parentBackupId,
      parentManifests: {},
      slotScopes: [],
      slot: slots.length ? { keys: slots.map((s) => `${s.key.pk}|${s.key.sk}`), holder } : null,
      snapshot: null,
      segmentBytes: 1,
      error,
    });
  }
  return { executionArn: input.executionArn, runId: input.runId, policyId: lease?.scope.slice('run:'.length) ?? backups[0]?.policyId ?? '', vms };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('PlanReconcile', reconcileInput, (input) => planReconcile(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
