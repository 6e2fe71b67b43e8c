/**
 * `lifeboat backup`, `lifeboat vm add` and `lifeboat config check`: start the Backup
 * workflow for a policy on a running stack, put a VM into the inventory, and validate a
 * configuration file before a deploy or a start.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { ConfigError, defaultConfigPath, loadConfig } from '../core/config.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';
import type { AddVmAnswer, AddVmRequest } from '../contracts/operator.ts';
import { formatBackup } from '../local/demo/report.ts';
import { runWithProgress } from './progress.ts';
import { EXIT, guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

const collect = (v: string, all: string[]) => [...all, v];

export function registerBackupCommands(program: Command, defaultDataDir: string, io: Out): void {
  stackOptions(
    program
      .command('backup')
      .description(
        "back up a policy's VMs now: start the Backup workflow on the stack, show each VM's and disk's progress, print the figures (exit code 1 when a VM failed)",
      )
      .argument('<policy>', 'the policy id (from the configuration, or one written to the catalog)')
      .option('--json', "print the run's summary (the workflow's output) as JSON, no progress")
      .option('--progress', 'draw the progress bars even when stderr is not a terminal'),
    defaultDataDir,
  ).action(
    guarded(async (policyId: string, opts: StackOptions & { json?: boolean; progress?: boolean }) => {
      const client = await StackClient.connect(opts);
      try {
        const r = await runWithProgress(
          client,
          'Backup',
          { policyId },
          { off: !!opts.json, force: !!opts.progress, ...(io.status ? { status: io.status } : {}) },
        );
        const summary = r.output as RunSummary;
        if (summary.failed > 0) process.exitCode = EXIT.failed;
        if (opts.json) return io.out(JSON.stringify({ ...summary, seconds: r.seconds }, null, 2));
        for (const line of formatBackup({ label: `Backup of policy '${policyId}'`, summary, seconds: r.seconds })) io.out(line);
        for (const vm of summary.vms.filter((v) => v.status === 'failed')) io.out(`  ${vm.vmId}: FAILED ${vm.error?.Error ?? ''}: ${vm.error?.Cause ?? ''}`);
      } finally {
        client.close();
      }
    }),
  );

  const vm = program.command('vm').description('the VM inventory of the running stack');
  stackOptions(
    vm
      .command('add')
      .description(
        "add a VM (or move it to another host) in the stack's inventory (the operator API's POST /api/vms): its host decides the mover group that backs it up (libvirt hosts' VMs also come from `lifeboat discover`)",
      )
      .argument('<vm>', 'the VM id')
      .requiredOption('--host <id>', 'the hypervisor host it runs on (a host of the configuration)')
      .requiredOption('--source <locator>', 'where the source driver finds it (for the folder driver: a folder with vm.json and disk images)')
      .option('--datastore <id>', 'a datastore holding its disks (repeatable); limited datastores count against their own slots', collect, []),
    defaultDataDir,
  ).action(
    guarded(async (vmId: string, opts: StackOptions & { host: string; source: string; datastore: string[] }) => {
      const client = await StackClient.connect(opts);
      try {
        // A folder source is a path on the movers' machine: made absolute here, as a person means it.
        const source = client.info.kind === 'embedded' ? resolve(opts.source) : opts.source;
        const r = await client.request<AddVmAnswer>('POST', '/api/vms', {
          vmId,
          host: opts.host,
          source,
          ...(opts.datastore.length ? { datastores: opts.datastore } : {}),
        } satisfies AddVmRequest);
        io.out(`VM ${vmId} is on host ${opts.host}: mover group '${r.moverGroup}' backs it up.`);
      } finally {
        client.close();
      }
    }),
  );

  const config = program.command('config').description('the deployment configuration');
  config
    .command('check')
    .description('validate a configuration file; list every bad key and value')
    .argument('[file]', `the file (default: $LIFEBOAT_CONFIG or ${defaultConfigPath})`)
    .action(
      guarded(async (file?: string) => {
        try {
          const c = file ? loadConfig(resolve(file)) : loadConfig();
          io.out(
            `valid: ${c.sites.length} site(s), ${c.moverGroups.length} mover group(s), ${c.hosts.length} host(s), ${c.repositories.length} repositories, ${c.policies.length} policies`,
          );
          for (const g of c.moverGroups)
            io.out(`  group ${g.id} (site ${g.site}): ${g.hosts.length ? g.hosts.join(', ') : 'no hosts (restore and replication only)'}`);
          for (const p of c.policies)
            io.out(
              `  policy ${p.id}: ${p.schedule.expression} ${p.schedule.timeZone} → ${p.repository}${p.replicateTo ? ` (replicated to ${p.replicateTo})` : ''}, RPO ${p.rpoHours} h`,
            );
        } catch (err) {
          if (!(err instanceof ConfigError)) throw err;
          process.stderr.write(`${err.message}\n`);
          process.exitCode = 1;
        }
      }),
    );
}
