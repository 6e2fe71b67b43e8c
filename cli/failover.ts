/**
 * `lifeboat failover`: run a failover plan of the configuration (`--plan ID`), or fail one
 * VM over without a plan, through the FailoverPlan workflow (or TestFailover with
 * `--test`); print each VM's restore point, when it started and became ready, and the RTO.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { failoverPlanRequest, type FailoverPlan, type FailoverReport, type PointSelector } from '../contracts/dr.ts';
import { loadConfig } from '../core/config.ts';
import { runWithProgress } from './progress.ts';
import { guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

/**
 * `--point`: `BACKUP` or `@TIME` (ISO 8601) for every VM, or `VM=BACKUP`, `VM=@TIME`, `VM=latest`
 * for one; repeatable.
 */
export function parsePoint(v: string, prev: Record<string, PointSelector> = {}): Record<string, PointSelector> {
  const eq = v.indexOf('=');
  const [vm, what] = eq > 0 ? [v.slice(0, eq), v.slice(eq + 1)] : ['*', v];
  if (!what) throw new InvalidArgumentError(`'${v}' names no restore point: give a backup id, @TIME (ISO 8601) or latest, optionally as VM=...`);
  let p: PointSelector;
  if (what === 'latest') p = 'latest';
  else if (what.startsWith('@')) {
    if (Number.isNaN(Date.parse(what.slice(1))) || !/[zZ]|[+-]\d\d:?\d\d$/.test(what))
      throw new InvalidArgumentError(`'${what.slice(1)}' is not a time with its zone: give ISO 8601, e.g. @2026-12-07T02:00:00Z`);
    p = { at: new Date(what.slice(1)).toISOString() };
  } else p = { backupId: what };
  return { ...prev, [vm]: p };
}

export function registerFailoverCommand(program: Command, defaultDataDir: string, io: Out): void {
  stackOptions(
    program
      .command('failover [vm]')
      .description(
        'fail over to the DR site: boot the replica VMs of a failover plan (--plan) in its groups, or one VM, at the restore points asked for (default: the newest); --test boots throwaway copies in an isolated network instead and removes them',
      )
      .option('--plan <id>', 'a failover plan of the configuration (failoverPlans[].id)')
      .option('--point <point>', 'restore point: BACKUP or @TIME for every VM, or VM=BACKUP, VM=@TIME, VM=latest (repeatable)', parsePoint)
      .option('--test', 'a test failover: the replicas and production stay untouched')
      .option('--config <file>', 'the configuration holding the plan (default: $LIFEBOAT_CONFIG, else lifeboat.config.json)')
      .option('--json', 'print the report as JSON'),
    defaultDataDir,
  ).action(
    guarded(
      async (
        vm: string | undefined,
        opts: StackOptions & { plan?: string; point?: Record<string, PointSelector>; test?: boolean; config?: string; json?: boolean },
      ) => {
        if (!!vm === !!opts.plan) throw new InvalidArgumentError('name a failover plan (--plan ID) or one VM (lifeboat failover VM), not both');
        let plan: FailoverPlan;
        if (opts.plan) {
          const config = loadConfig(opts.config);
          const found = config.failoverPlans?.find((p) => p.id === opts.plan);
          if (!found)
            throw new InvalidArgumentError(
              `the configuration has no failover plan '${opts.plan}' (plans: ${config.failoverPlans?.map((p) => p.id).join(', ') || 'none'}); add it to "failoverPlans"`,
            );
          plan = found;
        } else plan = { id: 'one-vm', groups: [{ vms: [vm!] }] };
        const input = failoverPlanRequest.parse({ plan, ...(opts.point ? { points: opts.point } : {}) });
        const client = await StackClient.connect(opts);
        const { output } = await runWithProgress(client, opts.test ? 'TestFailover' : 'FailoverPlan', input, {
          off: !!opts.json,
          ...(io.status ? { status: io.status } : {}),
        }).finally(() => client.close());
        const r = output as FailoverReport;
        if (opts.json) return io.out(JSON.stringify(r, null, 2));
        io.out(`${r.test ? 'test failover' : 'failover'} of plan ${r.plan} (${r.runId}): ${r.vms.length} VM(s) ready, RTO ${r.rtoSeconds.toFixed(1)} s`);
        for (const v of r.vms) {
          io.out(
            `  group ${v.group}  ${v.vmId}  ${v.domain}  restore point ${v.backupId} (${v.recoveryPoint})  started +${v.startedSeconds.toFixed(1)} s  ready +${v.readySeconds.toFixed(1)} s (boot ${v.bootSeconds.toFixed(1)} s)${v.script ? '  script ok' : ''}`,
          );
        }
        if (r.cleanedUp) io.out(`  removed: ${[...r.cleanedUp.domains, ...r.cleanedUp.networks].join(', ') || 'nothing'}; the replicas were not touched`);
      },
    ),
  );
}
