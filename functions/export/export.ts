/**
 * The Export workflow's function: PlanExport resolves the backup to serve (the newest
 * committed one, or the one named), its disks and repository, and the mover group of the
 * VM's host (the site where the VM ran, where its users are), into the `export` task's job
 * (contracts/export-job.ts). The export's id is the execution's name: its endpoint record is
 * `exports/<exportId>.json` in the repository.
 */
import { z } from 'zod';
import { exportJob, exportListen, type ExportJob } from '../../contracts/export-job.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { resolveBackup } from '../recovery/backups.ts';

const text = z.string().min(1);

/** The execution input of the Export workflow. */
export const exportRequest = z
  .object({
    vmId: text,
    /** Default: the VM's newest committed backup. */
    backupId: text.optional(),
    /** Default: the mover group of the VM's host. */
    moverGroup: text.optional(),
    /** Default: an ephemeral TCP port on 127.0.0.1 of the mover. */
    listen: exportListen.optional(),
    idleTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 24 * 3600)
      .optional(),
    /** Serve from this repository (a DR copy, or the repository of a backup whose policy is gone). */
    fromBucket: text.optional(),
  })
  .strict();
export const planExportInput = z.object({ exportId: text, request: exportRequest }).strict();

export interface ExportPlan {
  moverGroup: string;
  export: ExportJob;
}

export async function planExport({ exportId, request }: z.output<typeof planExportInput>, deps: { catalog: Catalog }): Promise<ExportPlan> {
  const { backup, repository } = await resolveBackup(
    deps.catalog,
    request.vmId,
    request.backupId,
    request.fromBucket ? { bucketIfPolicyGone: request.fromBucket } : {},
  );
  let moverGroup = request.moverGroup;
  if (!moverGroup) {
    const vm = await deps.catalog.getVm(request.vmId);
    const host = vm ? await deps.catalog.getHost(vm.host) : undefined;
    if (!host)
      throw new RecoveryRequestInvalid(
        `VM '${request.vmId}' is on host '${vm?.host ?? '?'}', which is not in the configuration, so no mover group serves it: name one with "moverGroup"`,
      );
    moverGroup = host.moverGroup;
  }
  return {
    moverGroup,
    export: exportJob.parse({
      exportId,
      vmId: request.vmId,
      backupId: backup.backupId,
      repository,
      diskIds: backup.disks.map((d) => d.diskId),
      listen: request.listen ?? { host: '127.0.0.1', port: 0 },
      ...(request.idleTimeoutSeconds ? { idleTimeoutSeconds: request.idleTimeoutSeconds } : {}),
    }),
  };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanExport', planExportInput, (input) => planExport(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler } = fromEnvironment(makeHandlers);
