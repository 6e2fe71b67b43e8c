import { describe, expect, it } from 'vitest';
import { ConfigError, groupForHost, loadConfig, parseConfig, scheduleExpressionProblem, type LifeboatConfig } from '../core/config.ts';

const example = loadConfig();
const withPolicy = (patch: Record<string, unknown>) => ({ ...example, policies: [{ ...example.policies[0]!, ...patch }] });
const problems = (value: unknown): string[] => {
  try {
    parseConfig(value, 'test.json');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('test.json is not a valid Lifeboat configuration');
    return (err as ConfigError).problems;
  }
  throw new Error('expected the configuration to be rejected');
};

describe('configuration', () => {
  it('the example in the repository is valid and maps every host to one group', () => {
    expect(example.policies.map((p) => p.id)).toEqual(['nightly', 'hourly-critical']);
    for (const h of example.hosts) expect(groupForHost(example, h.id)).toBeDefined();
    expect(groupForHost(example, 'esx-03')?.id).toBe('site-b');
  });

  it('names the key and the value of each bad setting', () => {
    const p = problems(withPolicy({ schedule: { expression: 'cron(0 2 * * *)', timeZone: 'Mars/Olympus' }, rpoHours: 0 }));
    expect(p).toEqual([
      'policies[0].schedule.expression = "cron(0 2 * * *)": cron() needs 6 fields (minutes hours day-of-month month day-of-week year), found 5',
      'policies[0].schedule.timeZone = "Mars/Olympus": must be an IANA time zone such as "Europe/Berlin" or "UTC"',
      'policies[0].rpoHours = 0: must be above 0',
    ]);
  });

  it('rejects misspelt keys instead of ignoring them', () => {
    expect(problems(withPolicy({ retentoin: { daily: 7 } }))).toEqual(['policies[0].retentoin: unknown key; check the spelling']);
  });

  it('checks references between sections', () => {
    const bad: LifeboatConfig = {
      ...example,
      moverGroups: [...example.moverGroups, { id: 'extra', site: 'moon', hosts: ['esx-01', 'esx-99'] }],
      policies: [{ ...example.policies[0]!, repository: 'tape', replicateTo: 'primary' }, { ...example.policies[1]!, id: 'nightly' }],
    };
    const p = problems(bad);
    expect(p).toContain('moverGroups[3].site = "moon": names no configured site (sites: site-a, site-dr)');
    expect(p).toContain('moverGroups[3].hosts[0] = "esx-01": is already served by mover group "site-a": a host belongs to exactly one group');
    expect(p).toContain('moverGroups[3].hosts[1] = "esx-99": names no configured host: add it to "hosts"');
    expect(p).toContain('policies[0].repository = "tape": names no configured repository (repositories: primary, dr)');
    expect(p).toContain('policies[1].id = "nightly": duplicate policies id');
  });

  it('a host that no group serves is an error', () => {
    const p = problems({ ...example, hosts: [...example.hosts, { id: 'esx-04', maxConcurrentBackups: 1 }] });
    expect(p).toEqual(['hosts[3].id = "esx-04": is served by no mover group: add it to a group\'s "hosts"']);
  });

  it('retention must keep something, and limits must be whole and positive', () => {
    expect(problems(withPolicy({ retention: { daily: 0 } }))[0]).toMatch(/^policies\[0\]\.retention = \{"daily":0\}: must keep something/);
    expect(problems(withPolicy({ perHostConcurrency: 1.5 }))).toEqual(['policies[0].perHostConcurrency = 1.5: must be a whole number']);
  });

  it('schedule expressions follow EventBridge Scheduler', () => {
    expect(scheduleExpressionProblem('cron(30 1 * * ? *)')).toBeUndefined();
    expect(scheduleExpressionProblem('cron(0 2 ? * MON-FRI *)')).toBeUndefined();
    expect(scheduleExpressionProblem('rate(1 hour)')).toBeUndefined();
    expect(scheduleExpressionProblem('rate(15 minutes)')).toBeUndefined();
    expect(scheduleExpressionProblem('at(2026-12-24T18:00:00)')).toBeUndefined();
    expect(scheduleExpressionProblem('cron(0 2 * * * *)')).toMatch(/exactly one of day-of-month and day-of-week/);
    expect(scheduleExpressionProblem('rate(1 hours)')).toBe('rate(): write "1 hour"');
    expect(scheduleExpressionProblem('rate(5 minute)')).toBe('rate(): write "5 minutes"');
    expect(scheduleExpressionProblem('every night')).toMatch(/^must be cron/);
  });

  it('a missing or broken file names the path', () => {
    expect(() => loadConfig('/nonexistent/lifeboat.json')).toThrow(/\/nonexistent\/lifeboat.json is not a valid Lifeboat configuration:\n {2}- cannot read the file/);
  });
});
