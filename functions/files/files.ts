/**
 * The Files workflow's function: PlanFiles resolves the backup (named, or the VM's newest
 * committed), the disk (named, or the backup's first), the repository, and the mover
 * group that reads (named, or the group serving the VM's host: a mover at the VM's site).
 * File-level restore keeps no catalog record: listing and extracting change nothing.
 */
import { z } from 'zod';
import { filesJob, filesRequest, type FilesJob } from '../../contracts/files-job.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { resolveBackup } from '../recovery/backups.ts';

export const planFilesInput = z.object({ filesId: z.string().min(1), request: filesRequest }).strict();

export async function planFiles({ filesId, request }: z.output<typeof planFilesInput>, deps: { catalog: Catalog }): Promise<FilesJob> {
  const { backup, repository } = await resolveBackup(deps.catalog, request.vmId, request.backupId);
  const disk = request.diskId ? backup.disks.find((d) => d.diskId === request.diskId) : backup.disks[0];
  if (!disk)
    throw new RecoveryRequestInvalid(
      `backup '${backup.backupId}' of VM '${request.vmId}' has no disk '${request.diskId}'; it has ${backup.disks.map((d) => `'${d.diskId}'`).join(', ')}`,
    );
  let moverGroup = request.moverGroup;
  if (!moverGroup) {
    const vm = await deps.catalog.getVm(request.vmId);
    moverGroup = vm ? (await deps.catalog.getHost(vm.host))?.moverGroup : undefined;
    if (!moverGroup) throw new RecoveryRequestInvalid(`VM '${request.vmId}' is on host '${vm?.host}', which no mover group serves; name one with "moverGroup"`);
  }
  const { moverGroup: _named, backupId: _b, diskId: _d, ...rest } = request;
  return filesJob.parse({ ...rest, filesId, backupId: backup.backupId, diskId: disk.diskId, moverGroup, repository });
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanFiles', planFilesInput, (input) => planFiles(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler } = fromEnvironment(makeHandlers);
