/** RecordFailure: a VM's backup failed; mark it so, keeping the error for the operator. */
import { recordFailureInput, type RecordFailureInput } from '../../contracts/backup-steps.ts';
import { type VmJob, vmOutcome, type VmOutcome } from '../../contracts/jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

/**
 * What a payload over Step Functions' quota means for this VM and what to do, after AWS's own
 * sentence (which names the state and, here, the sizes): the VM's steps carried more than
 * 256 KiB, which only its disks and their segments make grow.
 */
export function explainDataLimit(cause: string, job: Pick<VmJob, 'vmId' | 'snapshot'>): string {
  const disks = job.snapshot?.disks.length;
  return (
    `${cause} — VM '${job.vmId}'${disks ? ` (${disks} disks)` : ''} outgrew Step Functions' payload quota in its own execution; ` +
    'its snapshot and backup slot were released and nothing was committed. Next step: give its policy a larger segmentSizeGiB ' +
    '(fewer segments per large disk, so fewer transfer results to collect).'
  );
}

export async function recordFailure(input: RecordFailureInput, deps: { catalog: Catalog }): Promise<VmOutcome> {
  const name = String(input.error?.Error ?? 'Unknown');
  const cause = String(input.error?.Cause ?? '');
  const error = { Error: name, Cause: name === 'States.DataLimitExceeded' ? explainDataLimit(cause, input) : cause };
  await deps.catalog.failBackup(input.vmId, input.backupId, error);
  return { vmId: input.vmId, backupId: input.backupId, status: 'failed', error };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('RecordFailure', recordFailureInput, async (input) => vmOutcome.parse(await recordFailure(input, { catalog: c.catalog }))),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
