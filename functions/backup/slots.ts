/**
 * AcquireSlot / ReleaseSlot: thin handlers over the fair slot queue (slot-queue.ts).
 * AcquireSlot runs twice in the workflow: first as a plain invoke without a task token,
 * the fast path (it returns the slots, or fails with `Slot.MustQueue`), then, only when
 * that failed, as `lambda:invoke.waitForTaskToken` (WaitForSlot): it queues the VM and is
 * answered through SendTaskSuccess (its own, or a later ReleaseSlot's), not its return value.
 */
import { z } from 'zod';
import { SlotMustQueue } from '../../contracts/errors.ts';
import { vmJob } from '../../contracts/jobs.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { acquireSlot, releaseSlot, trySlot, type SlotQueueDeps } from './slot-queue.ts';

/** AcquireSlot's payload: the VM's job, and the task token its state waits on (none on the fast path). */
export const acquireSlotInput = z.object({ job: vmJob, taskToken: z.string().min(1).optional() });

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  const deps = (): SlotQueueDeps => ({ catalog: c.catalog, queue: c.slotQueue, tasks: c.tasks, now: Date.now });
  return {
    acquireHandler: lambdaHandler('AcquireSlot', acquireSlotInput, async ({ job, taskToken }) => {
      if (taskToken) {
        await acquireSlot(job, taskToken, deps());
        return null;
      }
      const got = await trySlot(job, deps());
      if ('queue' in got) throw new SlotMustQueue(job.vmId, got.queue);
      return got.lease;
    }),
    releaseHandler: lambdaHandler('ReleaseSlot', vmJob, async (job) => {
      await releaseSlot(job, deps());
      return null;
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { acquireHandler, releaseHandler } = fromEnvironment(makeHandlers);
