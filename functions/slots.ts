/** AcquireSlot / ReleaseSlot: a per-host semaphore of leased slots in the catalog. */
import middy from '@middy/core';
import { SlotUnavailable } from '../core/errors.ts';
import type { SlotLease, VmJob } from '../core/jobs.ts';
import { Catalog } from './catalog/catalog.ts';
import { clients } from './commons/clients.ts';

/** A slot held by an execution that died is free again after this long. */
export const SLOT_LEASE_MS = 6 * 3600_000;

export async function acquireSlot(job: VmJob, deps: { catalog: Catalog; now: () => number }): Promise<SlotLease> {
  const holder = `${job.runId}/${job.vmId}`;
  const now = deps.now();
  for (let i = 0; i < job.slotLimit; i++) {
    if (await deps.catalog.takeSlot(job.host, i, holder, now, now + SLOT_LEASE_MS)) {
      const { pk, sk } = Catalog.slotKey(job.host, i);
      return { key: `${pk}|${sk}`, holder };
    }
  }
  throw new SlotUnavailable(job.host, job.slotLimit);
}

export async function releaseSlot(job: VmJob, deps: { catalog: Catalog }): Promise<void> {
  if (!job.slot) return;
  const [pk, sk] = job.slot.key.split('|') as [string, string];
  await deps.catalog.releaseSlot({ pk, sk }, job.slot.holder);
}

export const acquireHandler = middy<VmJob, SlotLease>().handler((job) => acquireSlot(job, { catalog: clients().catalog, now: Date.now }));
export const releaseHandler = middy<VmJob, null>().handler(async (job) => {
  await releaseSlot(job, { catalog: clients().catalog });
  return null;
});
