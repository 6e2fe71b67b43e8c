/**
 * AcquireSlot / ReleaseSlot: thin handlers over the fair slot queue (slot-queue.ts).
 * AcquireSlot runs as `lambda:invoke.waitForTaskToken`: it answers through SendTaskSuccess
 * (its own, or a later ReleaseSlot's), not its return value.
 */
import { z } from 'zod';
import { vmJob } from '../../contracts/jobs.ts';
import { clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { acquireSlot, releaseSlot, type SlotQueueDeps } from './slot-queue.ts';

const deps = (): SlotQueueDeps => {
  const c = clients();
  return { catalog: c.catalog, queue: c.slotQueue, tasks: c.tasks, now: Date.now };
};

/** AcquireSlot's payload: the VM's job and the task token its state waits on. */
export const acquireSlotInput = z.object({ job: vmJob, taskToken: z.string().min(1) });

export const acquireHandler = lambdaHandler('AcquireSlot', acquireSlotInput, async ({ job, taskToken }) => {
  await acquireSlot(job, taskToken, deps());
  return null;
});
export const releaseHandler = lambdaHandler('ReleaseSlot', vmJob, async (job) => {
  await releaseSlot(job, deps());
  return null;
});
