/**
 * `lifeboat backup`, `lifeboat vm add` and `lifeboat config check`: start the Backup
 * workflow for a policy on a running stack, put a VM into the inventory, and validate a
 * configuration file before a deploy or a start.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { ConfigError, defaultConfigPath, loadConfig } from '../core/config.ts';
import { formatBackup } from '../local/demo/report.ts';
import { endpoints, guarded, runWorkflow, stackCatalog, type Out, type StackOptions } from './stack-client.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

const collect = (v: string, all: string[]) => [...all, v];

export function registerBackupCommands(program: Command, defaultDataDir: string, io: Out): void {
  program
    .command('backup')
    .description('back up a policy\'s VMs now: start the Backup workflow on the running stack and wait for it')
    .argument('<policy>', 'the policy id (from the configuration, or one written to the catalog)')
    .option('--data-dir <dir>', 'state folder of the running embedded stack', defaultDataDir)
    .option('--endpoints <file>', 'endpoints file of the running stack (default: <data-dir>/endpoints.json)')
    .action(guarded(async (policyId: string, opts: StackOptions) => {
      const e = await endpoints(opts);
      const r = await runWorkflow(e, 'Backup', { policyId }, io);
      const summary = r.output as RunSummary;
      for (const line of formatBackup({ label: `Backup of policy '${policyId}'`, summary, seconds: r.seconds })) io.out(line);
      for (const vm of summary.vms.filter((v) => v.status === 'failed')) io.out(`  ${vm.vmId}: FAILED ${vm.error?.Error ?? ''}: ${vm.error?.Cause ?? ''}`);
      if (summary.failed > 0) process.exitCode = 1;
    }));

  const vm = program.command('vm').description('the VM inventory of the running stack');
  vm.command('add')
    .description('add a VM (or move it to another host): its host decides the mover group that backs it up')
    .argument('<vm>', 'the VM id')
    .requiredOption('--host <id>', 'the hypervisor host it runs on (a host of the configuration)')
    .requiredOption('--source <locator>', 'where the source driver finds it (for the folder driver: a folder with vm.json and disk images)')
    .option('--datastore <id>', 'a datastore holding its disks (repeatable); limited datastores count against their own slots', collect, [])
    .option('--data-dir <dir>', 'state folder of the running embedded stack', defaultDataDir)
    .option('--endpoints <file>', 'endpoints file of the running stack (default: <data-dir>/endpoints.json)')
    .action(guarded(async (vmId: string, opts: StackOptions & { host: string; source: string; datastore: string[] }) => {
      const catalog = stackCatalog(await endpoints(opts));
      const host = await catalog.getHost(opts.host);
      if (!host) throw new Error(`host '${opts.host}' is not in the configuration: add it to "hosts" and to a mover group, then restart the stack`);
      await catalog.putVm({ vmId, host: opts.host, source: resolve(opts.source), ...(opts.datastore.length ? { datastores: opts.datastore } : {}) });
      io.out(`VM ${vmId} is on host ${opts.host}: mover group '${host.moverGroup}' backs it up.`);
    }));

  const config = program.command('config').description('the deployment configuration');
  config.command('check')
    .description('validate a configuration file; list every bad key and value')
    .argument('[file]', `the file (default: $LIFEBOAT_CONFIG or ${defaultConfigPath})`)
    .action(guarded(async (file?: string) => {
      try {
        const c = file ? loadConfig(resolve(file)) : loadConfig();
        io.out(`valid: ${c.sites.length} site(s), ${c.moverGroups.length} mover group(s), ${c.hosts.length} host(s), ${c.repositories.length} repositories, ${c.policies.length} policies`);
        for (const g of c.moverGroups) io.out(`  group ${g.id} (site ${g.site}): ${g.hosts.length ? g.hosts.join(', ') : 'no hosts (restore and replication only)'}`);
        for (const p of c.policies) io.out(`  policy ${p.id}: ${p.schedule.expression} ${p.schedule.timeZone} → ${p.repository}${p.replicateTo ? ` (replicated to ${p.replicateTo})` : ''}, RPO ${p.rpoHours} h`);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        process.stderr.write(`${err.message}\n`);
        process.exitCode = 1;
      }
    }));
}
