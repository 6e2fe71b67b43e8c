/** The mover's failback tasks (contracts/failback.ts), parsed by `runRecoveryTask` with the recovery task schema. */
import { BadTaskInput } from '../../contracts/errors.ts';
import { failbackDiskResult, releasedReplica, startedVm, stoppedVm, type FailbackTask } from '../../contracts/failback.ts';
import type { RecoveryTaskDeps } from './task-deps.ts';
import type { TaskContext } from '../worker.ts';
import { applyDiskDelta } from './failback.ts';
import { productionDisks, startProductionVm, stopDrVm } from './failback-domain.ts';
import { releaseReplica } from './failover.ts';

export async function runFailbackTask(t: FailbackTask, deps: RecoveryTaskDeps, ctx: TaskContext): Promise<unknown> {
  const wait = { signal: ctx.signal, onWait: ctx.progress };
  if (t.task === 'stopDrVm') return stoppedVm.parse(await stopDrVm(t.failback.dr, t.failback.shutdownTimeoutSeconds, wait));
  if (t.task === 'releaseReplica') {
    const replica = t.failback.replica;
    if (!replica) throw new BadTaskInput(`failback ${t.failback.failbackId} names no replica VM to release`);
    const out = releasedReplica.parse(await releaseReplica({ ...replica, vmId: t.failback.vmId }));
    deps.logger.info('failback.replicaReleased', { failbackId: t.failback.failbackId, vmId: t.failback.vmId, ...out });
    return out;
  }
  if (t.task === 'startProductionVm') {
    const r = t.failback.readiness;
    return startedVm.parse(
      await startProductionVm(
        t.failback.production,
        {
          ...(r.consoleLine !== undefined ? { consoleLine: r.consoleLine } : {}),
          ...(r.agent ? { agent: true } : {}),
          timeoutSeconds: r.timeoutSeconds ?? 300,
        },
        wait,
      ),
    );
  }
  const [from, to] = await Promise.all([deps.repository(t.from.repository), deps.repository(t.to.repository)]);
  const path = (await productionDisks(t.failback.production)).get(t.disk.diskId);
  if (!path)
    throw new BadTaskInput(
      `the production VM '${t.failback.production.name}' has no disk '${t.disk.diskId}' (the DR VM's backup has it): add the disk to the domain, then run the Failback again`,
    );
  let last = 0;
  const result = await applyDiskDelta({
    path,
    diskId: t.disk.diskId,
    mode: t.mode,
    signal: ctx.signal,
    from: { repository: from, backupId: t.from.backupId, what: `repository ${t.from.repository.bucket}` },
    to: { repository: to, backupId: t.to.backupId, what: `repository ${t.to.repository.bucket}` },
    onProgress: (p) => {
      ctx.progress();
      if (performance.now() - last < 500 && p.chunksDone !== p.chunks) return;
      last = performance.now();
      deps.logger.info('failback.progress', { failbackId: t.failback.failbackId, vmId: t.failback.vmId, ...p });
    },
  });
  deps.logger.info('failback.disk', { failbackId: t.failback.failbackId, ...result });
  return failbackDiskResult.parse(result);
}
