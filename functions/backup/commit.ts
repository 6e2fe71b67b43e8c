/** Commit: the backup becomes visible in the catalog, only after Verify passed. */
import { z } from 'zod';
import { type Consistency, type DiskResult, diskResult, type VmJob, vmJob } from '../../contracts/jobs.ts';
import type { VerifyOutput } from './verify.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { verifyOutput } from './verify.ts';

export interface CommitInput extends VmJob {
  disks: DiskResult[];
  verify: VerifyOutput;
}

export async function commit(
  input: CommitInput,
  deps: { catalog: Catalog; now: () => Date },
): Promise<{ backupId: string; committedAt: string; consistency?: Consistency }> {
  if (!input.verify) throw new Error(`backup ${input.backupId} of VM '${input.vmId}' reached Commit without a Verify result`);
  const at = deps.now();
  const snap = input.snapshot;
  await deps.catalog.commitBackup(input.vmId, input.backupId, input.disks, at, {
    ...(snap?.checkpoint ? { checkpoint: snap.checkpoint } : {}),
    ...(snap?.consistency ? { consistency: snap.consistency } : {}),
  });
  return { backupId: input.backupId, committedAt: at.toISOString(), ...(snap?.consistency ? { consistency: snap.consistency } : {}) };
}

export const commitInput: z.ZodType<CommitInput> = z.intersection(vmJob, z.looseObject({ disks: z.array(diskResult), verify: verifyOutput }));

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Commit', commitInput, (input) => commit(input, { catalog: c.catalog, now: () => new Date() })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
