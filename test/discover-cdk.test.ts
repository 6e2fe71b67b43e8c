/** The synthesized Discover workflow: valid ASL, its graph, routing to the host's group, Retry/Catch, schedule and grants. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import aslValidator from 'asl-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { loadConfig, parseConfig, type LifeboatConfig } from '../core/config.ts';
import { errorClasses } from '../contracts/errors.ts';
import { recoveryErrorClasses } from '../contracts/recovery-errors.ts';
import { resolveTemplate, type CfnTemplate, type ResolvedTemplate } from '../local/asl.ts';

type State = {
  Type: string;
  Next?: string;
  End?: boolean;
  Resource?: string;
  TimeoutSeconds?: number;
  HeartbeatSeconds?: number;
  Default?: string;
  ItemsPath?: string;
  Parameters?: Record<string, unknown>;
  ResultPath?: string;
  OutputPath?: string;
  ItemSelector?: Record<string, unknown>;
  MaxConcurrency?: number;
  Choices?: { Variable: string; StringEquals?: string; IsString?: boolean; Next: string }[];
  Retry?: { ErrorEquals: string[]; MaxAttempts?: number }[];
  Catch?: { ErrorEquals: string[]; Next: string; ResultPath?: string }[];
  ItemProcessor?: { StartAt: string; States: Record<string, State> };
  Error?: string;
};
type Definition = { StartAt: string; States: Record<string, State> };

const config = loadConfig(); // the example: kvm-01 (libvirt) in group site-a, groups site-a and site-b serve hosts
let outdir: string;
let template: Template;
let resolved: ResolvedTemplate;

function synth(c: LifeboatConfig) {
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const t = Template.fromStack(new LifeboatStack(app, 'Lifeboat', { config: c }));
  return { template: t, resolved: resolveTemplate(t.toJSON() as CfnTemplate) };
}

function discover(r: ResolvedTemplate = resolved): { def: Definition; all: Record<string, State>; host: Definition } {
  const m = Object.values(r.stateMachines).find((x) => x.logicalId.startsWith('DiscoverStateMachine'));
  if (!m) throw new Error('no Discover state machine');
  const def = m.definition as Definition;
  const host = def.States.DiscoverHosts!.ItemProcessor as Definition;
  return { def, host, all: { ...def.States, ...host.States } };
}

// A synth takes minutes on a loaded machine.
beforeAll(() => {
  outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-discover-'));
  ({ template, resolved } = synth(config));
}, 600_000);
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

describe('Discover workflow', () => {
  it('is valid ASL', () => {
    const m = Object.values(resolved.stateMachines).find((x) => x.logicalId.startsWith('DiscoverStateMachine'))!;
    const result = aslValidator(m.definition);
    expect(result.isValid ? '' : result.errorsText('\n')).toBe('');
  });

  it('lists the hosts, runs a Map over them, then summarizes', () => {
    const { def } = discover();
    expect(def.StartAt).toBe('ListDiscoveryHosts');
    expect(def.States.ListDiscoveryHosts).toMatchObject({ Next: 'DiscoverHosts', ResultPath: '$.list' });
    expect(def.States.ListDiscoveryHosts!.Parameters).toBeUndefined(); // the function gets the execution input, { hostId? }
    expect(def.States.DiscoverHosts).toMatchObject({ Type: 'Map', ItemsPath: '$.list.hosts', ResultPath: '$.hosts', Next: 'ListDrSites' });
    expect(def.States.DiscoverHosts!.ItemSelector).toEqual({
      'host.$': '$$.Map.Item.Value',
      'discoveryId.$': '$$.Execution.Name',
      'startedAt.$': '$$.Execution.StartTime',
    });
    expect(def.States.DiscoverHosts!.MaxConcurrency).toBeGreaterThan(0);
    expect(def.States.SummarizeDiscovery!.End).toBe(true);
  });

  it('pages through a host: the discover task, RecordInventory, and back while the page says there is more', () => {
    const { host, all } = discover();
    expect(host.StartAt).toBe('StartHost');
    expect(all.StartHost!.Parameters).toMatchObject({ next: '' });
    const choice = all.DiscoverHostOnMoverGroup!;
    expect(all.StartHost!.Next).toBe('DiscoverHostOnMoverGroup');
    const groups = config.moverGroups.filter((g) => g.hosts.length > 0).map((g) => g.id);
    expect(choice.Choices!.map((c) => [c.Variable, c.StringEquals])).toEqual(groups.map((g) => ['$.host.moverGroup', g]));
    for (const c of choice.Choices!) {
      const task = all[c.Next]!;
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.Parameters).toEqual({ task: 'discover', 'hostId.$': '$.host.hostId', 'hypervisor.$': '$.host.hypervisor', 'after.$': '$.inventory.next' });
      expect(task).toMatchObject({ ResultPath: '$.page', Next: 'RecordInventory' });
      expect(task.HeartbeatSeconds!).toBeLessThan(task.TimeoutSeconds!);
    }
    expect(all.RecordInventory).toMatchObject({ ResultPath: '$.inventory', Next: 'MorePages' });
    expect(all.MorePages!.Choices).toEqual([{ Variable: '$.inventory.next', IsString: true, Next: 'DiscoverHostOnMoverGroup' }]);
    expect(all.MorePages!.Default).toBe('HostDiscovered');
    expect(all.HostDiscovered).toMatchObject({ Type: 'Pass', OutputPath: '$.inventory', End: true });
  });

  it("then sweeps every DR site's test failover leftovers on its mover group (every group's activity), a failed site reported and the others going on", () => {
    const { def } = discover();
    expect(def.States.ListDrSites).toMatchObject({ Parameters: { 'runId.$': '$$.Execution.Name' }, ResultPath: '$.drSites', Next: 'SweepDrSites' });
    expect(def.States.ListDrSites!.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.drSitesError', Next: 'NoDrSweeps' }]);
    expect(def.States.NoDrSweeps).toMatchObject({ Type: 'Pass', Result: [], ResultPath: '$.sweeps', Next: 'SummarizeDiscovery' });
    expect(def.States.SweepDrSites).toMatchObject({ Type: 'Map', ItemsPath: '$.drSites.sites', ResultPath: '$.sweeps', Next: 'SummarizeDiscovery' });
    const site = def.States.SweepDrSites!.ItemProcessor as Definition;
    const choice = site.States.SweepDrSiteOnMoverGroup!;
    // Every group, the DR group (which serves no host in the example) included.
    expect(choice.Choices!.map((c) => c.StringEquals)).toEqual(config.moverGroups.map((g) => g.id));
    for (const c of choice.Choices!) {
      const task = site.States[c.Next]!;
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.Parameters).toEqual({ task: 'sweepTestFailovers', 'run.$': '$.site.run', 'uris.$': '$.site.uris' });
      expect(task.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'DrSiteSweepFailed' }]);
    }
    expect(def.States.SummarizeDiscovery!.Parameters).toMatchObject({ 'sweeps.$': '$.sweeps' });
  });

  it('retries a dead mover, and reports any failure of a host as HostFailed so the other hosts go on', () => {
    const { all } = discover();
    const tasks = Object.entries(all)
      .filter(([n]) => n.startsWith('DiscoverHost ('))
      .map(([, s]) => s);
    expect(tasks.length).toBe(2);
    for (const t of [...tasks, all.RecordInventory!]) {
      expect(t.Retry!.some((r) => r.ErrorEquals.includes('States.Timeout'))).toBe(true);
      expect(t.Retry!.some((r) => r.ErrorEquals.includes('Mover.SourceUnavailable'))).toBe(false); // an unreachable host waits for the next discovery
      expect(t.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'HostFailed' }]);
    }
    expect(all.HostFailed).toMatchObject({ Type: 'Pass', Parameters: { 'hostId.$': '$.host.hostId', 'error.$': '$.error' }, End: true });
  });

  it('matches only States.*, Lambda.* or Lifeboat error classes in Retry and Catch', () => {
    const known = { ...errorClasses, ...recoveryErrorClasses };
    const names = new Set<string>();
    for (const s of Object.values(discover().all)) for (const r of [...(s.Retry ?? []), ...(s.Catch ?? [])]) r.ErrorEquals.forEach((e) => names.add(e));
    expect([...names].filter((e) => !e.startsWith('States.') && !e.startsWith('Lambda.') && !Object.hasOwn(known, e))).toEqual([]);
    for (const code of ['Source.VmGone', 'Discovery.RequestInvalid']) {
      const cls = (errorClasses as unknown as Record<string, new (m: string) => Error>)[code]!;
      expect(new cls('probe').name).toBe(code);
    }
  });

  it("is started hourly in UTC by default, through the policies' dead-letter queue, with every libvirt host", () => {
    template.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'rate(1 hour)',
      ScheduleExpressionTimezone: 'UTC',
      Target: Match.objectLike({ Input: '{}', DeadLetterConfig: Match.objectLike({ Arn: Match.anyValue() }) }),
    });
  });

  it('follows the configured discovery schedule, and has none without a libvirt host or a configured one', () => {
    const scheduled = synth(parseConfig({ ...config, discovery: { schedule: { expression: 'cron(15 * * * ? *)', timeZone: 'Europe/Berlin' } } }, 't'));
    scheduled.template.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'cron(15 * * * ? *)',
      ScheduleExpressionTimezone: 'Europe/Berlin',
      Target: Match.objectLike({ Input: '{}' }),
    });
    const none = synth(parseConfig({ ...config, hosts: config.hosts.map(({ driver: _d, uri: _u, ...h }) => h) }, 't'));
    const inputs = Object.values(none.template.findResources('AWS::Scheduler::Schedule')).map(
      (r) => (r as { Properties: { Target: { Input: string } } }).Properties.Target.Input,
    );
    expect(inputs).not.toContain('{}');
  });

  it('grants RecordInventory only the catalog calls it makes, and SummarizeDiscovery none', () => {
    const policyOf = (fid: string) =>
      Object.values(template.findResources('AWS::IAM::Policy')).find(
        (p) =>
          JSON.stringify(p).includes(`${fid}ServiceRoleDefaultPolicy`) ||
          JSON.stringify((p as { Properties: { Roles: unknown } }).Properties.Roles).includes(`${fid}ServiceRole`),
      );
    const record = JSON.stringify(policyOf('RecordInventory'));
    for (const a of ['dynamodb:UpdateItem', 'dynamodb:PutItem', 'dynamodb:GetItem', 'dynamodb:Query']) expect(record).toContain(a);
    expect(record).not.toContain('dynamodb:DeleteItem');
    expect(record).not.toContain('s3:');
    expect(JSON.stringify(policyOf('SummarizeDiscovery') ?? {})).not.toContain('dynamodb:');
  });
});
