/**
 * The Restore workflow's functions: PlanRestore resolves what to restore and where,
 * RecordRestore and RecordRestoreFailure keep the outcome in the catalog.
 */
import { isAbsolute, join, normalize } from 'node:path';
import { z } from 'zod';
import { text } from '../../contracts/zod.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import { definedDomain, instantRecovery, restoredDisk, restoreJob, type RestoreJob } from '../../contracts/recovery-jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { caughtError } from '../../contracts/errors.ts';
import { locationOf, resolveBackup } from '../recovery/backups.ts';
import type { InstantRestoreSummary, RestoreSummary } from '../../contracts/workflow-outputs.ts';

/** The execution input of the Restore workflow. */
/**
 * A guest's sign of life: a console line (a regular expression) and/or the guest agent
 * answering `guest-ping` (after the console line, if one is given too), within a timeout of
 * at least `minTimeout` seconds.
 */
const signOfLife = (minTimeout: number) =>
  z
    .object({
      consoleLine: text
        .refine((x) => {
          try {
            new RegExp(x);
            return true;
          } catch {
            return false;
          }
        }, 'must be a regular expression')
        .optional(),
      agent: z.boolean().optional(),
      timeoutSeconds: z.number().int().min(minTimeout).max(3600).optional(),
    })
    .strict()
    .refine((b) => b.consoleLine !== undefined || b.agent === true, 'must name a sign of life: "consoleLine" and/or "agent": true');

export const restoreRequest = z
  .object({
    vmId: text,
    /** Default: the VM's newest committed backup. */
    backupId: text.optional(),
    /** Restore only this disk (to `target`, a file); default: every disk and the VM config (into `target`, a folder). */
    diskId: text.optional(),
    target: text.refine(isAbsolute, 'must be an absolute path on the mover'),
    moverGroup: text,
    /**
     * Restore from this repository (a DR copy) instead of the backup's own; the backup must
     * be complete there. Also names the repository of a backup whose policy was removed.
     */
    fromBucket: text.optional(),
    /** A whole-VM restore of a libvirt backup: define a new domain from it on this host, and start or boot-test it. */
    define: z
      .object({
        uri: text,
        name: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_" or "-"')
          .optional(),
        format: z.enum(['raw', 'qcow2']).optional(),
        /** Restore the disks as volumes of this (active) libvirt storage pool instead of files in `target`. */
        pool: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be a storage pool name: 1-64 letters, digits, ".", "_" or "-"')
          .optional(),
        start: z.boolean().optional(),
        bootCheck: signOfLife(5).optional(),
      })
      .strict()
      .optional(),
    /**
     * Overwrite what is at the target: a file holding data (one disk), a folder that is not
     * empty or the VM's own source folder (a whole VM). Default: such a restore is refused.
     */
    force: z.boolean().optional(),
    /**
     * Instant recovery (needs `define`): the VM runs at once on overlays backed by NBD exports
     * of the backup, then moves to its disks in `target` while it runs. `resume` takes up one
     * whose move failed. `moveBandwidthMiBs` caps the move (MiB/s per disk); the move fails when
     * what it still has to copy has not shrunk for `moveStallSeconds`.
     */
    instant: z
      .object({
        moveBandwidthMiBs: z
          .number()
          .positive()
          .max(1024 * 1024)
          .optional(),
        moveStallSeconds: z
          .number()
          .int()
          .min(5)
          .max(7 * 24 * 3600)
          .optional(),
        resume: z.boolean().optional(),
        moveAfter: signOfLife(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type RestoreRequest = z.output<typeof restoreRequest>;
/** PlanRestore's input: the execution's input and its name. */
export const planRestoreInput = z.object({ restoreId: text, request: restoreRequest }).strict();

/** A whole-VM restore into the VM's own folder would overwrite the running VM's disks and vm.json. */
async function refuseSourceFolder(catalog: Catalog, vmId: string, target: string): Promise<void> {
  const source = (await catalog.getVm(vmId))?.source;
  if (!source || normalize(`${source}/`) !== normalize(`${target}/`)) return;
  throw new RecoveryRequestInvalid(
    `restore target ${target} is the source folder of VM '${vmId}'; restoring there would overwrite the VM's own disks and vm.json: choose another folder, or pass --force (workflow input "force": true) to roll the VM back in place`,
  );
}

export async function planRestore(
  { restoreId, request: input }: z.output<typeof planRestoreInput>,
  deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date },
): Promise<RestoreJob> {
  const resolved = await resolveBackup(deps.catalog, input.vmId, input.backupId, input.fromBucket ? { bucketIfPolicyGone: input.fromBucket } : {});
  const { backup } = resolved;
  let repository = resolved.repository;
  if (input.fromBucket && input.fromBucket !== repository.bucket) {
    if (!(await deps.recovery.getReplica(input.vmId, input.fromBucket, backup.backupId))) {
      throw new RecoveryRequestInvalid(
        `backup '${backup.backupId}' of VM '${input.vmId}' has not been replicated to ${input.fromBucket}; replicate it first or restore from ${repository.bucket}`,
      );
    }
    repository = locationOf(resolved.policy, input.fromBucket);
  }
  if (!input.diskId && !input.force) await refuseSourceFolder(deps.catalog, input.vmId, input.target);
  let disks = backup.disks;
  if (input.define && input.diskId) throw new RecoveryRequestInvalid('"define" makes a VM of a whole-VM restore; it cannot be combined with "diskId"');
  if (input.instant) {
    if (!input.define)
      throw new RecoveryRequestInvalid('an instant recovery runs the backup as a VM: it needs "define" with the libvirt URI of the host (--define URI)');
    if (input.define.pool)
      throw new RecoveryRequestInvalid(
        'an instant recovery moves the VM to files in the target folder; "pool" (storage pool volumes) is not supported with it: leave out --pool, or restore without --instant',
      );
    if (input.define.bootCheck)
      throw new RecoveryRequestInvalid('an instant recovery keeps its VM; a boot check (restore test) removes it: use one or the other');
  }
  if (input.diskId) {
    disks = disks.filter((d) => d.diskId === input.diskId);
    if (disks.length === 0)
      throw new RecoveryRequestInvalid(
        `backup '${backup.backupId}' of VM '${input.vmId}' has no disk '${input.diskId}'; it has ${backup.disks.map((d) => `'${d.diskId}'`).join(', ')}`,
      );
  }
  const job: RestoreJob = {
    restoreId,
    vmId: input.vmId,
    backupId: backup.backupId,
    moverGroup: input.moverGroup,
    repository,
    target: input.target,
    diskId: input.diskId ?? null,
    ...(input.force ? { force: true } : {}),
    disks: disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, path: input.diskId ? input.target : join(input.target, `${d.diskId}.raw`) })),
    ...(input.define ? { define: input.define } : {}),
    ...(input.instant ? { instant: input.instant } : {}),
    ...(resolved.notice ? { notice: resolved.notice } : {}),
  };
  await deps.recovery.putRecord('RESTORE', restoreId, { status: 'running', startedAt: deps.now().toISOString(), job });
  return job;
}

export const recordCopyRestoreInput = z.intersection(
  restoreJob,
  z.looseObject({ restored: z.array(restoredDisk), vmConfig: z.looseObject({ path: text, domain: definedDomain.optional() }).optional() }),
);
export const recordInstantRestoreInput = z.intersection(restoreJob, z.looseObject({ instantResult: instantRecovery }));
/** RecordRestore's input: disks copied (and re-hashed), or an instant recovery's outcome. */
export const recordRestoreInput = z.union([recordInstantRestoreInput, recordCopyRestoreInput]);

export async function recordInstantRestore(
  input: z.output<typeof recordInstantRestoreInput>,
  deps: { recovery: RecoveryCatalog; now: () => Date },
): Promise<InstantRestoreSummary> {
  const summary: InstantRestoreSummary = {
    restoreId: input.restoreId,
    vmId: input.vmId,
    backupId: input.backupId,
    target: input.target,
    instant: input.instantResult,
    ...(input.notice ? { notice: input.notice } : {}),
  };
  await deps.recovery.putRecord('RESTORE', input.restoreId, { status: 'succeeded', finishedAt: deps.now().toISOString(), summary });
  return summary;
}

export async function recordRestore(
  input: z.output<typeof recordCopyRestoreInput>,
  deps: { recovery: RecoveryCatalog; catalog?: Pick<Catalog, 'recordRestoreTest'>; now: () => Date },
): Promise<RestoreSummary> {
  const want = input.disks.map((d) => d.diskId).sort();
  const got = input.restored.map((d) => d.diskId).sort();
  if (JSON.stringify(want) !== JSON.stringify(got))
    throw new RecoveryRequestInvalid(`restore ${input.restoreId} planned disks ${want.join(', ')} but movers reported ${got.join(', ')}`);
  const summary: RestoreSummary = {
    restoreId: input.restoreId,
    vmId: input.vmId,
    backupId: input.backupId,
    target: input.target,
    disks: input.restored,
    vmConfigPath: input.vmConfig?.path ?? null,
    bytesRestored: input.restored.reduce((n, d) => n + d.sizeBytes, 0),
    bytesDownloaded: input.restored.reduce((n, d) => n + d.bytesDownloaded, 0),
    verified: true,
    ...(input.vmConfig?.domain ? { domain: input.vmConfig.domain } : {}),
    ...(input.notice ? { notice: input.notice } : {}),
  };
  const test = input.vmConfig?.domain?.bootCheck;
  // A restore test's outcome belongs to the backup: listings show which backups are proven to boot.
  if (test)
    await deps.catalog?.recordRestoreTest(input.vmId, input.backupId, {
      passed: test.passed,
      seconds: test.seconds,
      restoreId: input.restoreId,
      at: deps.now().toISOString(),
      ...(test.reason ? { reason: test.reason } : {}),
    });
  await deps.recovery.putRecord('RESTORE', input.restoreId, { status: 'succeeded', finishedAt: deps.now().toISOString(), summary });
  return summary;
}

export const recordRestoreFailureInput = z.intersection(restoreJob, z.looseObject({ error: caughtError }));

export async function recordRestoreFailure(
  input: z.output<typeof recordRestoreFailureInput>,
  deps: { recovery: RecoveryCatalog; now: () => Date },
): Promise<{ status: 'failed' }> {
  await deps.recovery.putRecord('RESTORE', input.restoreId, { status: 'failed', finishedAt: deps.now().toISOString(), job: input, error: input.error });
  return { status: 'failed' };
}

const now = () => new Date();

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanRestore', planRestoreInput, (input) => planRestore(input, { catalog: c.catalog, recovery: c.recovery, now })),
    recordHandler: lambdaHandler(
      'RecordRestore',
      recordRestoreInput,
      (input): Promise<RestoreSummary | InstantRestoreSummary> =>
        'instantResult' in input
          ? recordInstantRestore(input as z.output<typeof recordInstantRestoreInput>, { recovery: c.recovery, now })
          : recordRestore(input as z.output<typeof recordCopyRestoreInput>, { recovery: c.recovery, catalog: c.catalog, now }),
    ),
    recordFailureHandler: lambdaHandler('RecordRestoreFailure', recordRestoreFailureInput, (input) =>
      recordRestoreFailure(input, { recovery: c.recovery, now }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, recordHandler, recordFailureHandler } = fromEnvironment(makeHandlers);
