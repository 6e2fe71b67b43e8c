/** The mover's failback tasks (contracts/failback.ts): parsed with the contract's schemas, then run. */
import { BadTaskInput } from '../../contracts/errors.ts';
import { failbackDiskResult, failbackDiskTask, failbackDomainTask, startedVm, stoppedVm } from '../../contracts/failback.ts';
import type { RecoveryTaskDeps } from './tasks.ts';
import type { TaskContext } from '../worker.ts';
import { applyDiskDelta } from './failback.ts';
import { productionDisks, startProductionVm, stopDrVm } from './failback-domain.ts';

function parse<S extends typeof failbackDiskTask | typeof failbackDomainTask>(schema: S, raw: unknown, what: string) {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new BadTaskInput(`${what} task: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

export async function runFailbackTask(raw: { task: string }, deps: RecoveryTaskDeps, ctx: TaskContext): Promise<unknown> {
  if (raw.task === 'failbackDisk') {
    const t = parse(failbackDiskTask, raw, 'failbackDisk') as ReturnType<typeof failbackDiskTask.parse>;
    const path = (await productionDisks(t.failback.production)).get(t.disk.diskId);
    if (!path) throw new BadTaskInput(`the production VM '${t.failback.production.name}' has no disk '${t.disk.diskId}' (the DR VM's backup has it): add the disk to the domain, then run the Failback again`);
    const [from, to] = await Promise.all([deps.repository(t.from.repository), deps.repository(t.to.repository)]);
    let last = 0;
    const result = await applyDiskDelta({
      path, diskId: t.disk.diskId, keys: to.keys, mode: t.mode, signal: ctx.signal,
      from: { store: from.store, backupId: t.from.backupId, what: `repository ${t.from.repository.bucket}` },
      to: { store: to.store, backupId: t.to.backupId, what: `repository ${t.to.repository.bucket}` },
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
  const t = parse(failbackDomainTask, raw, raw.task) as ReturnType<typeof failbackDomainTask.parse>;
  const wait = { signal: ctx.signal, onWait: ctx.progress };
  if (t.task === 'stopDrVm') return stoppedVm.parse(await stopDrVm(t.failback.dr, t.failback.shutdownTimeoutSeconds, wait));
  const r = t.failback.readiness;
  return startedVm.parse(await startProductionVm(t.failback.production, {
    ...(r.consoleLine !== undefined ? { consoleLine: r.consoleLine } : {}), ...(r.agent ? { agent: true } : {}), timeoutSeconds: r.timeoutSeconds ?? 300,
  }, wait));
}
