/**
 * RecordRecoveryFailure: a recovery workflow (deep verify, replicate, failover, prune,
 * garbage collection) failed; its record says so, with the error, before the execution
 * fails with that same error.
 */
import { z } from 'zod';
import type { RecoveryCatalog, RecoveryRecordKind } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { caughtError } from '../../contracts/errors.ts';

const kinds = ['DEEPVERIFY', 'REPLICATION', 'FAILOVER', 'FAILBACK', 'PRUNE', 'GC'] as const satisfies readonly RecoveryRecordKind[];

export const recoveryFailureInput = z.object({ kind: z.enum(kinds), id: z.string().min(1), error: caughtError }).strict();

export async function recordRecoveryFailure(
  input: z.output<typeof recoveryFailureInput>,
  deps: { recovery: RecoveryCatalog; now: () => Date },
): Promise<{ status: 'failed' }> {
  const before = await deps.recovery.getRecord(input.kind, input.id);
  await deps.recovery.putRecord(input.kind, input.id, { ...before, status: 'failed', finishedAt: deps.now().toISOString(), error: input.error });
  return { status: 'failed' };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('RecordRecoveryFailure', recoveryFailureInput, (input) =>
      recordRecoveryFailure(input, { recovery: c.recovery, now: () => new Date() }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
