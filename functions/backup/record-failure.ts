/** RecordFailure: a VM's backup failed; mark it so, keeping the error for the operator. */
import { z } from 'zod';
import { type VmJob, vmJob, type VmOutcome } from '../../contracts/jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { caughtError } from '../../contracts/errors.ts';

export interface RecordFailureInput extends VmJob {
  error: { Error: string; Cause: string };
}

export async function recordFailure(input: RecordFailureInput, deps: { catalog: Catalog }): Promise<VmOutcome> {
  const error = { Error: String(input.error?.Error ?? 'Unknown'), Cause: String(input.error?.Cause ?? '') };
  await deps.catalog.failBackup(input.vmId, input.backupId, error);
  return { vmId: input.vmId, backupId: input.backupId, status: 'failed', error };
}

export const recordFailureInput: z.ZodType<RecordFailureInput> = z.intersection(vmJob, z.looseObject({ error: caughtError }));

export const handler = lambdaHandler('RecordFailure', recordFailureInput, (input) => recordFailure(input, { catalog: clients().catalog }));
