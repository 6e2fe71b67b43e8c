/**
 * `lifeboat discover [--host H]`: run the Discover workflow on a running stack (every
 * libvirt host, or one) and print per host what it found, what is new and what is gone.
 */
import type { Command } from 'commander';
import type { DiscoverySummary } from '../contracts/workflow-outputs.ts';
import { runWithProgress } from './progress.ts';
import { guarded, lambdaMessage, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

/** One line per host: its counts, or why it could not be inventoried. */
export function formatDiscovery(s: DiscoverySummary, seconds: number): string[] {
  const lines = [`Discovery ${s.discoveryId}: ${s.hosts.length} host(s) in ${seconds.toFixed(1)} s, ${s.found} VM(s) found, ${s.new} new, ${s.gone} gone`];
  for (const h of s.hosts) {
    if ('error' in h) lines.push(`  ${h.hostId}: FAILED ${h.error.Error}: ${lambdaMessage(h.error.Cause ?? '')}`);
    else
      lines.push(
        `  ${h.hostId}: ${h.found} found, ${h.new} new, ${h.returned} back, ${h.gone} gone${h.stillGone ? ` (${h.stillGone} still gone)` : ''}${h.manual ? `, ${h.manual} left alone (added by hand)` : ''}`,
      );
  }
  return lines;
}

export function registerDiscoverCommand(program: Command, defaultDataDir: string, io: Out): void {
  stackOptions(
    program
      .command('discover')
      .description("inventory the libvirt hosts' VMs into the catalog now (the Discover workflow); VMs no longer there are marked gone")
      .option('--host <id>', 'only this host (default: every libvirt host)')
      .option('--json', "print the workflow's output as JSON"),
    defaultDataDir,
  ).action(
    guarded(async (opts: StackOptions & { host?: string; json?: boolean }) => {
      const client = await StackClient.connect(opts);
      const r = await runWithProgress(client, 'Discover', opts.host ? { hostId: opts.host } : {}, {
        off: !!opts.json,
        ...(io.status ? { status: io.status } : {}),
      }).finally(() => client.close());
      const summary = r.output as DiscoverySummary;
      if (opts.json) {
        if (summary.failedHosts.length > 0) process.exitCode = 1;
        return io.out(JSON.stringify(summary, null, 2));
      }
      for (const line of formatDiscovery(summary, r.seconds)) io.out(line);
      if (summary.failedHosts.length > 0) process.exitCode = 1;
    }),
  );
}
