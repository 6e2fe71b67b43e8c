/** The DR movers' tasks of the replica VMs and failover plans (contracts/dr.ts), parsed with their contract schema. */
import { drTask, drTaskNames, type FailoverRun, type ReplicaJob } from '../../contracts/dr.ts';
import { parseTaskInput } from '../../contracts/errors.ts';
import type { ReplicateJob } from '../../contracts/recovery-jobs.ts';
import type { RecoveryTaskDeps } from './task-deps.ts';
import type { TaskContext } from '../worker.ts';
import { abandonFailover, failoverVm, resolveFailoverPoints } from './failover.ts';
import { cleanupTestFailover, sweepTestFailovers, testFailoverRoots } from './test-failover-cleanup.ts';
import { updateReplicaVm } from './replica-vm.ts';

export function isDrTask(raw: unknown): boolean {
  return !!raw && typeof raw === 'object' && drTaskNames.includes((raw as { task?: string }).task ?? '');
}

/** Where a run's test failover folders may be: its VMs' replica folders, the site's (a scheduled sweep names them), the mover's own of before. */
const rootsOf = (run: FailoverRun, workDir: string) => testFailoverRoots(workDir, [...run.vms.map((v) => v.replicaDir), ...(run.replicaDirs ?? [])]);

export async function runDrTask(raw: unknown, deps: RecoveryTaskDeps, ctx: TaskContext): Promise<unknown> {
  const t = parseTaskInput(`${(raw as { task: string }).task} task`, drTask, raw);
  switch (t.task) {
    case 'updateReplicaVm': {
      const job = t.replicate as unknown as ReplicateJob & { replica: ReplicaJob };
      const repository = await deps.repository(job.target);
      const out = await updateReplicaVm(job, { repository, parallelism: deps.parallelism, signal: ctx.signal, onProgress: ctx.progress });
      deps.logger.info('replica.updated', { ...out });
      return out;
    }
    case 'resolveFailoverPoints':
      return { points: await resolveFailoverPoints(t.run.vms, t.run.points) };
    case 'failoverVm':
      return failoverVm(t.vm, { workDir: deps.workDir, logger: deps.logger, signal: ctx.signal, progress: ctx.progress });
    case 'sweepTestFailovers':
      return sweepTestFailovers(t.run.runId, [t.run.uri, ...(t.uris ?? [])], { roots: rootsOf(t.run, deps.workDir), logger: deps.logger });
    case 'cleanupFailover':
      if (t.run.test) return cleanupTestFailover(t.run.runId, t.run.uri, { roots: rootsOf(t.run, deps.workDir), logger: deps.logger });
      return { domains: await abandonFailover(t.run.runId, t.run.uri, t.run.vms), networks: [], folders: [] };
  }
}
