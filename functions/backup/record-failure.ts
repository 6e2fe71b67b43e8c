/** RecordFailure: a VM's backup failed; mark it so, keeping the error for the operator. */
import { z } from 'zod';
import { type VmJob, vmJob, type VmOutcome } from '../../contracts/jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
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

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('RecordFailure', recordFailureInput, (input) => recordFailure(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
