/** The synthesized HostConfigBackup workflow: valid ASL, its graph, routing to the host's group, Retry/Catch, schedule and grants. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import aslValidator from 'asl-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { MOVER_READ_PREFIXES, MOVER_WRITE_PREFIXES } from '../cdk/lib/mover-identity.ts';
import { hostConfigBackupSettings, loadConfig, parseConfig, ConfigError, type LifeboatConfig } from '../core/config.ts';
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
  Choices?: { Variable: string; StringEquals?: string; Next: string }[];
  Retry?: { ErrorEquals: string[]; MaxAttempts?: number }[];
  Catch?: { ErrorEquals: string[]; Next: string; ResultPath?: string }[];
  ItemProcessor?: { StartAt: string; States: Record<string, State> };
};
type Definition = { StartAt: string; States: Record<string, State> };

const config = loadConfig(); // the example: kvm-01 (libvirt) in group site-a, groups site-a and site-b serve hosts
let outdir: string;
let template: Template;
/** The site stacks' templates: each holds its mover groups' roles and policies. */
let siteTemplates: Template[];
let resolved: ResolvedTemplate;

function synth(c: LifeboatConfig) {
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config: c });
  const t = Template.fromStack(stack);
  const sites = Object.values(stack.sites).map((s) => Template.fromStack(s));
  return { template: t, siteTemplates: sites, resolved: resolveTemplate(t.toJSON() as CfnTemplate) };
}

function workflow(r: ResolvedTemplate = resolved): { def: Definition; all: Record<string, State> } {
  const m = Object.values(r.stateMachines).find((x) => x.logicalId.startsWith('HostConfigBackupStateMachine'));
  if (!m) throw new Error('no HostConfigBackup state machine');
  const def = m.definition as Definition;
  return { def, all: { ...def.States, ...def.States.BackUpHosts!.ItemProcessor!.States } };
}

const scheduleInputs = (t: Template) =>
  Object.values(t.findResources('AWS::Scheduler::Schedule')).map(
    (r) => (r as { Properties: { Description: string; ScheduleExpression: string; Target: { Input: string; Arn: unknown } } }).Properties,
  );

beforeAll(() => {
  outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-hostcfg-'));
  ({ template, siteTemplates, resolved } = synth(config));
});
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

describe('HostConfigBackup workflow', () => {
  it('is valid ASL', () => {
    const result = aslValidator(workflow().def);
    expect(result.isValid ? '' : result.errorsText('\n')).toBe('');
  });

  it('plans the hosts, backs each up in a Map, then summarizes', () => {
    const { def } = workflow();
    expect(def.StartAt).toBe('PlanHostConfigBackup');
    expect(def.States.PlanHostConfigBackup).toMatchObject({ Next: 'BackUpHosts', ResultPath: '$.plan' });
    expect(def.States.PlanHostConfigBackup!.Parameters).toBeUndefined(); // the function gets the execution input, { hostId? }
    expect(def.States.BackUpHosts).toMatchObject({ Type: 'Map', ItemsPath: '$.plan.hosts', ResultPath: '$.hosts', Next: 'SummarizeHostConfigBackup' });
    expect(def.States.BackUpHosts!.ItemSelector).toEqual({ 'job.$': '$$.Map.Item.Value', 'runId.$': '$$.Execution.Name' });
    expect(def.States.BackUpHosts!.MaxConcurrency).toBeGreaterThan(0);
    expect(def.States.SummarizeHostConfigBackup!.End).toBe(true);
  });

  it("sends each host's hostConfig task to the Activity of the group serving it, then records the result", () => {
    const { all } = workflow();
    const choice = all.BackupHostConfigOnMoverGroup!;
    const groups = config.moverGroups.filter((g) => g.hosts.length > 0).map((g) => g.id);
    expect(choice.Choices!.map((c) => [c.Variable, c.StringEquals])).toEqual(groups.map((g) => ['$.job.moverGroup', g]));
    for (const c of choice.Choices!) {
      const task = all[c.Next]!;
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.Parameters).toEqual({
        task: 'hostConfig',
        'hostId.$': '$.job.hostId',
        'hypervisor.$': '$.job.hypervisor',
        'repository.$': '$.job.repository',
        'backupId.$': '$.job.backupId',
        'objectKey.$': '$.job.objectKey',
      });
      expect(task).toMatchObject({ ResultPath: '$.result', Next: 'RecordHostConfig' });
      expect(task.HeartbeatSeconds!).toBeLessThan(task.TimeoutSeconds!);
    }
    expect(all.RecordHostConfig).toMatchObject({
      ResultPath: '$.outcome',
      Next: 'HostConfigBackedUp',
      Parameters: { 'runId.$': '$.runId', 'job.$': '$.job', 'result.$': '$.result' },
    });
    expect(all.HostConfigBackedUp).toMatchObject({ Type: 'Pass', OutputPath: '$.outcome', End: true });
  });

  it('retries a dead mover and unavailable storage, and reports any failure of a host as HostConfigFailed so the other hosts go on', () => {
    const { all } = workflow();
    const tasks = Object.entries(all)
      .filter(([n]) => n.startsWith('BackupHostConfig ('))
      .map(([, s]) => s);
    expect(tasks.length).toBe(2);
    for (const t of [...tasks, all.RecordHostConfig!]) {
      expect(t.Retry!.some((r) => r.ErrorEquals.includes('States.Timeout') && r.ErrorEquals.includes('Mover.StorageUnavailable'))).toBe(true);
      expect(t.Retry!.some((r) => r.ErrorEquals.includes('Mover.SourceUnavailable'))).toBe(false); // an unreachable host waits for the next run
      expect(t.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'HostConfigFailed' }]);
    }
    expect(all.HostConfigFailed).toMatchObject({ Type: 'Pass', Parameters: { 'hostId.$': '$.job.hostId', 'error.$': '$.error' }, End: true });
  });

  it('matches only States.*, Lambda.* or Lifeboat error classes in Retry and Catch', () => {
    const known = { ...errorClasses, ...recoveryErrorClasses };
    const names = new Set<string>();
    for (const s of Object.values(workflow().all)) for (const r of [...(s.Retry ?? []), ...(s.Catch ?? [])]) r.ErrorEquals.forEach((e) => names.add(e));
    expect([...names].filter((e) => !e.startsWith('States.') && !e.startsWith('Lambda.') && !Object.hasOwn(known, e))).toEqual([]);
    const cls = (errorClasses as unknown as Record<string, new (m: string) => Error>)['HostConfig.RequestInvalid']!;
    expect(new cls('probe').name).toBe('HostConfig.RequestInvalid');
  });

  it("is started daily at 02:00 UTC by default with every libvirt host, through the schedules' dead-letter queue", () => {
    const smRef = Object.keys(template.findResources('AWS::StepFunctions::StateMachine')).find((id) => id.startsWith('HostConfigBackupStateMachine'))!;
    template.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'cron(0 2 * * ? *)',
      ScheduleExpressionTimezone: 'UTC',
      Target: Match.objectLike({ Arn: { Ref: smRef }, Input: '{}', DeadLetterConfig: Match.objectLike({ Arn: Match.anyValue() }) }),
    });
  });

  it('follows hostConfigBackup.schedule, and has no schedule without a libvirt host', () => {
    const c = parseConfig({ ...config, hostConfigBackup: { schedule: { expression: 'cron(30 3 ? * SUN *)', timeZone: 'Europe/Berlin' }, keep: 5 } }, 't');
    expect(hostConfigBackupSettings(c)).toEqual({
      schedule: { expression: 'cron(30 3 ? * SUN *)', timeZone: 'Europe/Berlin' },
      keep: 5,
      repositoryId: 'primary',
    });
    synth(c).template.hasResourceProperties('AWS::Scheduler::Schedule', {
      ScheduleExpression: 'cron(30 3 ? * SUN *)',
      ScheduleExpressionTimezone: 'Europe/Berlin',
      Target: Match.objectLike({ Input: '{}' }),
    });
    const none = synth(parseConfig({ ...config, hosts: config.hosts.map(({ driver: _d, uri: _u, ...h }) => h) }, 't'));
    expect(scheduleInputs(none.template).filter((p) => /HostConfigBackup/.test(p.Description))).toEqual([]);
  });

  it('refuses a hostConfigBackup that names no repository, an unknown key or a keep of 0, naming the key', () => {
    const problems = (hc: unknown) => {
      try {
        parseConfig({ ...config, hostConfigBackup: hc }, 't');
        return [];
      } catch (err) {
        return (err as ConfigError).problems;
      }
    };
    expect(problems({ repository: 'nope' })).toEqual([
      expect.stringMatching(/^hostConfigBackup\.repository = "nope": names no configured repository \(repositories: primary, dr\)/),
    ]);
    expect(problems({ keep: 0 })).toEqual([expect.stringMatching(/^hostConfigBackup\.keep = 0: must be at least 1/)]);
    expect(problems({ keepLast: 3 })).toEqual(['hostConfigBackup.keepLast: unknown key; check the spelling']);
  });

  it('grants the movers PutObject on host-config/ but no read of it, and RecordHostConfig only what retention needs', () => {
    expect(MOVER_WRITE_PREFIXES).toContain('host-config/');
    expect(MOVER_READ_PREFIXES).not.toContain('host-config/');
    const policyOf = (fid: string) =>
      Object.values(template.findResources('AWS::IAM::Policy')).find((p) =>
        JSON.stringify((p as { Properties: { Roles: unknown } }).Properties.Roles).includes(`${fid}ServiceRole`),
      );
    const record = JSON.stringify(policyOf('RecordHostConfig'));
    for (const a of ['dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:DeleteItem', 's3:DeleteObject', 's3:ListBucket']) expect(record).toContain(a);
    expect(record).toContain('/host-config/*');
    expect(record).not.toContain('s3:GetObject');
    expect(record).not.toContain('s3:PutObject');
    const plan = JSON.stringify(policyOf('PlanHostConfigBackup'));
    expect(plan).toContain('dynamodb:GetItem');
    expect(plan).not.toContain('s3:');
    expect(JSON.stringify(policyOf('SummarizeHostConfigBackup') ?? {})).not.toContain('dynamodb:');
    const movers = siteTemplates
      .flatMap((t) => Object.values(t.findResources('AWS::IAM::Policy')))
      .filter((p) => JSON.stringify(p).includes('WriteRepositoryData'));
    expect(movers.length).toBeGreaterThan(0);
    for (const mover of movers) expect(JSON.stringify(mover)).toContain('/host-config/*');
  });
});
