/**
 * `lifeboat failback VM` (or `--plan ID`, each VM of a failover plan in its boot order):
 * run the Failback workflow, which sends what changed at the DR site back to the production
 * VM and switches back with a short outage, and print its report. The VM running at the DR
 * site is found in the inventory (its replica's domain name, `<name>-replica`, on another
 * host) unless `--dr-vm` names it. A plan stops at the first VM that fails: the VMs before it
 * are back in production, the others still run at the DR site.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { replicaDomainName } from '../contracts/dr.ts';
import type { FailbackReport, FailbackRequest } from '../contracts/failback.ts';
import type { VmRow } from '../contracts/operator.ts';
import { loadConfig } from '../core/config.ts';
import { formatBytes } from '../core/units.ts';
import { runWithProgress } from './progress.ts';
import { guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

interface FailbackOptions extends StackOptions {
  plan?: string;
  drVm?: string;
  base?: string;
  shutdownTimeout?: number;
  readyLine?: string;
  agent?: boolean;
  readyTimeout?: number;
  config?: string;
  json?: boolean;
}

const seconds = (what: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 5 || n > 3600) throw new InvalidArgumentError(`${what} must be whole seconds from 5 to 3600, not '${v}'`);
  return n;
};

/** The VMs to fail back, in order: the one named, or a plan's VMs group by group. */
function vmsToFailBack(vm: string | undefined, opts: FailbackOptions): string[] {
  if (!!vm === !!opts.plan) throw new InvalidArgumentError('name one VM (lifeboat failback VM) or a failover plan (--plan ID), not both');
  if (vm) return [vm];
  if (opts.drVm || opts.base) throw new InvalidArgumentError("--dr-vm and --base name one VM's; with --plan each VM's DR VM is found in the inventory");
  const config = loadConfig(opts.config);
  const plan = config.failoverPlans?.find((p) => p.id === opts.plan);
  if (!plan)
    throw new InvalidArgumentError(
      `the configuration has no failover plan '${opts.plan}' (plans: ${config.failoverPlans?.map((p) => p.id).join(', ') || 'none'}); add it to "failoverPlans"`,
    );
  return plan.groups.flatMap((g) => g.vms.map((v) => (typeof v === 'string' ? v : v.vm)));
}

/** The VM running at the DR site in place of `vmId`: named, or found in the inventory by its replica's domain name on another host. */
export function drVmOf(vmId: string, inventory: VmRow[], named?: string): string {
  const vm = inventory.find((v) => v.vmId === vmId);
  if (!vm) throw new Error(`VM '${vmId}' is not in the inventory: check its id (lifeboat vms lists them)`);
  if (named) return named;
  const replica = replicaDomainName(vm.name);
  const found = inventory.filter((v) => v.name === replica && v.host !== vm.host && v.protection !== 'gone');
  if (found.length === 1) return found[0]!.vmId;
  if (found.length > 1)
    throw new Error(
      `several VMs of the inventory are named ${replica} (${found.map((v) => v.vmId).join(', ')}): name the one running at the DR site with --dr-vm`,
    );
  throw new Error(
    `VM '${vmId}' is not failed over: no VM named ${replica} (its replica at the DR site) is in the inventory. Fail it over first (lifeboat failover ${vmId}), then let discovery (lifeboat discover) or \`lifeboat vm add\` put the DR VM in the inventory, or name the VM running at the DR site with --dr-vm`,
  );
}

function printReport(io: Out, r: FailbackReport): void {
  io.out(
    `failback of VM ${r.vmId} from ${r.drVmId} (${r.failbackId}): production ${r.production.domain} ${r.production.state}, ready at ${r.production.readyAt}; outage ${r.outageSeconds.toFixed(1)} s`,
  );
  io.out(
    `  changed at the DR site ${formatBytes(r.bytesChanged)}, sent ${formatBytes(r.bytesSent)}, written ${formatBytes(r.bytesWritten)}${r.chunksDrifted ? `, ${r.chunksDrifted} chunk(s) of production had drifted from the recovery point` : ''}`,
  );
  const base = {
    failover: `, the point failover ${r.failoverRunId} powered the replica on at`,
    request: ', as --base named',
    newestReplica: ', the newest backup complete at the DR site (no failover recorded in the catalog)',
  };
  io.out(
    `  from recovery point ${r.baseBackupId}${r.baseFrom ? base[r.baseFrom] : ''} to the DR VM's backups ${r.syncBackupId} (while it ran) and ${r.finalBackupId} (after it stopped)`,
  );
  for (const [phase, disks] of [
    ['sync', r.disks.sync],
    ['final', r.disks.final],
  ] as const)
    for (const d of disks)
      io.out(
        `  ${phase.padEnd(5)} ${d.diskId}  ${d.chunksWritten}/${d.chunks} chunks written (${formatBytes(d.bytesWritten)}, ${d.mode})  ${d.seconds.toFixed(1)} s`,
      );
  if (r.replica?.failoverRunId)
    io.out(
      `  replica ${r.replica.domain} released from failover ${r.replica.failoverRunId}: shut off, back on restore point ${r.replica.backupId}, replicated again from now on`,
    );
}

export function registerFailbackCommand(program: Command, defaultDataDir: string, io: Out): void {
  stackOptions(
    program
      .command('failback [vm]')
      .description(
        'after a failover: send what changed at the DR site back to the production VM, then stop the DR VM, apply its final backup and start production (a short outage); --plan: each VM of a failover plan in turn',
      )
      .option('--plan <id>', 'a failover plan of the configuration: fail back its VMs in its boot order')
      .option('--dr-vm <id>', "the VM running at the DR site (default: the inventory's VM named <name>-replica on another host)")
      .option(
        '--base <backup>',
        'the recovery point the failover started from (default: the one its failover powered the replica on at, as the catalog recorded it)',
      )
      .option('--shutdown-timeout <s>', 'seconds the DR VM gets to shut down cleanly (default 120)', seconds('--shutdown-timeout'))
      .option('--ready-line <regex>', 'production is ready when its serial console prints a line matching this (default: its guest agent answers)')
      .option('--agent', 'production is ready when its guest agent answers (with --ready-line: both)')
      .option('--ready-timeout <s>', 'seconds production gets to become ready (default 300)', seconds('--ready-timeout'))
      .option('--config <file>', 'the configuration holding the plan (default: $LIFEBOAT_CONFIG, else lifeboat.config.json)')
      .option('--json', 'print the report(s) as JSON'),
    defaultDataDir,
  ).action(
    guarded(async (vm: string | undefined, opts: FailbackOptions) => {
      const vms = vmsToFailBack(vm, opts);
      const readiness =
        opts.readyLine !== undefined || opts.agent || opts.readyTimeout !== undefined
          ? {
              ...(opts.readyLine !== undefined ? { consoleLine: opts.readyLine } : {}),
              ...(opts.agent || opts.readyLine === undefined ? { agent: true } : {}),
              ...(opts.readyTimeout !== undefined ? { timeoutSeconds: opts.readyTimeout } : {}),
            }
          : undefined;
      const client = await StackClient.connect(opts);
      const reports: FailbackReport[] = [];
      try {
        const inventory = await client.get<VmRow[]>('/api/vms');
        // Every VM's DR VM is found before the first switch: a plan with a typo fails before any outage.
        const pairs = vms.map((id) => [id, drVmOf(id, inventory, opts.drVm)] as const);
        for (const [vmId, drVmId] of pairs) {
          const input: FailbackRequest = {
            vmId,
            drVmId,
            ...(opts.base ? { baseBackupId: opts.base } : {}),
            ...(opts.shutdownTimeout !== undefined ? { shutdownTimeoutSeconds: opts.shutdownTimeout } : {}),
            ...(readiness ? { readiness } : {}),
          };
          const done = reports.map((r) => r.vmId);
          const { output } = await runWithProgress(client, 'Failback', input, {
            off: !!opts.json,
            ...(io.status ? { status: (line: string) => io.status!(`${vmId}: ${line}`) } : {}),
          }).catch((err: Error) => {
            throw new Error(
              `failback of VM '${vmId}' failed: ${err.message}${done.length ? ` (already back in production: ${done.join(', ')}; not started: ${vms.slice(done.length + 1).join(', ') || 'none'})` : ''}`,
            );
          });
          reports.push(output as FailbackReport);
          if (!opts.json) printReport(io, output as FailbackReport);
        }
      } finally {
        client.close();
      }
      if (opts.json) io.out(JSON.stringify(opts.plan ? reports : reports[0], null, 2));
    }),
  );
}
