/** Commit: the backup becomes visible in the catalog, only after Verify passed. */
import { commitInput, commitOutput, type CommitInput, type CommitOutput } from '../../contracts/backup-steps.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

export async function commit(input: CommitInput, deps: { catalog: Catalog; now: () => Date }): Promise<CommitOutput> {
  if (!input.verify) throw new Error(`backup ${input.backupId} of VM '${input.vmId}' reached Commit without a Verify result`);
  const at = deps.now();
  const snap = input.snapshot;
  await deps.catalog.commitBackup(input.vmId, input.backupId, input.disks, at, {
    ...(snap?.checkpoint ? { checkpoint: snap.checkpoint } : {}),
    ...(snap?.consistency ? { consistency: snap.consistency } : {}),
  });
  return { backupId: input.backupId, committedAt: at.toISOString(), ...(snap?.consistency ? { consistency: snap.consistency } : {}) };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Commit', commitInput, async (input) => commitOutput.parse(await commit(input, { catalog: c.catalog, now: () => new Date() }))),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
