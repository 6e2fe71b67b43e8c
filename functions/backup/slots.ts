/**
 * AcquireSlot / ReleaseSlot: semaphores of leased slots in the catalog, one per host and
 * one per limited datastore. A VM's backup takes a slot in each of its scopes or none:
 * when one scope is full the slots already taken are given back and the state machine
 * retries with backoff. A slot whose holder died is free again when its lease runs out.
 */
import { SlotUnavailable } from '../../contracts/errors.ts';
import { type SlotLease, type VmJob, vmJob } from '../../contracts/jobs.ts';
import { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

/** A slot held by an execution that died is free again after this long. */
export const SLOT_LEASE_MS = 6 * 3600_000;

const keyOf = (k: { pk: string; sk: string }) => `${k.pk}|${k.sk}`;
const parseKey = (key: string) => {
  const [pk, sk] = key.split('|') as [string, string];
  return { pk, sk };
};

export async function acquireSlot(job: VmJob, deps: { catalog: Catalog; now: () => number; leaseMs?: number }): Promise<SlotLease> {
  const holder = `${job.runId}/${job.vmId}`;
  const now = deps.now();
  const expiresAt = now + (deps.leaseMs ?? SLOT_LEASE_MS);
  const taken: string[] = [];
  for (const { scope, limit } of job.slotScopes) {
    let got: string | undefined;
    for (let i = 0; i < limit && !got; i++) {
      if (await deps.catalog.takeSlot(scope, i, holder, now, expiresAt)) got = keyOf(Catalog.slotKey(scope, i));
    }
    if (!got) {
      for (const key of taken) await deps.catalog.releaseSlot(parseKey(key), holder);
      throw new SlotUnavailable(scope, limit);
    }
    taken.push(got);
  }
  return { keys: taken, holder };
}

export async function releaseSlot(job: VmJob, deps: { catalog: Catalog }): Promise<void> {
  for (const key of job.slot?.keys ?? []) await deps.catalog.releaseSlot(parseKey(key), job.slot!.holder);
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    acquireHandler: lambdaHandler('AcquireSlot', vmJob, (job) => acquireSlot(job, { catalog: c.catalog, now: Date.now })),
    releaseHandler: lambdaHandler('ReleaseSlot', vmJob, async (job) => {
      await releaseSlot(job, { catalog: c.catalog });
      return null;
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { acquireHandler, releaseHandler } = fromEnvironment(makeHandlers);
