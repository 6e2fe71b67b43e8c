/**
 * The slot queue's test rig: a real catalog (dynalite), and waiters' task tokens held by the
 * embedded stack's ActivityBroker and answered through its Step Functions API with the SDK's
 * SendTaskSuccess, as AcquireSlot's wait is answered in the workflow.
 */
import { SFNClient } from '@aws-sdk/client-sfn';
import type { VmJob } from '../../contracts/jobs.ts';
import type { SlotQueueDeps } from '../../functions/backup/slot-queue.ts';
import { SlotQueueCatalog } from '../../functions/catalog/slot-queue-catalog.ts';
import { sfnTaskCallbacks } from '../../functions/commons/task-callbacks.ts';
import { ActivityBroker } from '../../local/activities.ts';
import { startSfnApi } from '../../local/sfn-api.ts';
import { LOCAL_CREDENTIALS } from '../../local/stack.ts';
import { startTestCatalog } from './catalog.ts';

export interface SlotQueueRig {
  broker: ActivityBroker;
  deps: SlotQueueDeps;
  close(): Promise<void>;
}

/** Starts the rig; `now` is the clock of the queue's entries. */
export async function startSlotQueueRig(now: () => number): Promise<SlotQueueRig> {
  const c = await startTestCatalog();
  const broker = new ActivityBroker();
  const none = () => {
    throw new Error('no executions here');
  };
  const api = await startSfnApi({ port: 0, broker, executions: { start: none, describe: none, list: none, stop: none } });
  const sfn = new SFNClient({ region: 'us-east-1', endpoint: api.url, credentials: LOCAL_CREDENTIALS });
  return {
    broker,
    deps: { catalog: c.catalog, queue: new SlotQueueCatalog(c.doc, 'catalog'), tasks: sfnTaskCallbacks(() => sfn), now },
    async close() {
      sfn.destroy();
      await api.close();
      broker.close();
      await c.close();
    },
  };
}

/** A VM's job on host 'h' of run `runId`, needing the slots of `scopes`. */
export const slotJob = (runId: string, vmId: string, scopes: VmJob['slotScopes']): VmJob => ({
  runId,
  policyId: 'p',
  backupId: 'b',
  vmId,
  host: 'h',
  moverGroup: 'g',
  source: '',
  repository: { bucket: 'b', chunkSize: 1 << 20 },
  parentBackupId: null,
  parentManifests: {},
  slotScopes: scopes,
  slot: null,
  snapshot: null,
  segmentBytes: 0,
});
