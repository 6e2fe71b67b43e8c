import { describe, expect, it } from 'vitest';
import { ConfigError, drRpoHoursOf, groupForHost, loadConfig, parseConfig, type LifeboatConfig } from '../core/config.ts';
import { scheduleExpressionProblem } from '../core/config-fields.ts';

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

  it('takes a DR RPO only for a replicating policy, at least its RPO, defaulting to twice it', () => {
    // The example's first policy replicates to "dr" with rpoHours 26.
    expect(example.policies[0]!.replicateTo).toBe('dr');
    expect(drRpoHoursOf(example.policies[0]!)).toBe(52);
    expect(drRpoHoursOf(parseConfig(withPolicy({ drRpoHours: 30 }), 'test.json').policies[0]!)).toBe(30);
    expect(problems(withPolicy({ drRpoHours: 0 }))).toEqual(['policies[0].drRpoHours = 0: must be above 0']);
    expect(problems(withPolicy({ drRpoHours: 12 }))).toEqual([
      "policies[0].drRpoHours = 12: is 12, below the policy's rpoHours (26): a DR copy is never newer than the backup it copies",
    ]);
    const { replicateTo: _r, ...local } = example.policies[0]!;
    expect(problems({ ...example, policies: [{ ...local, drRpoHours: 30 }] })).toEqual([
      'policies[0].drRpoHours = 30: applies only to a policy that replicates: set "replicateTo" too, or remove it',
    ]);
  });

  it("takes a policy's restore test settings, naming each bad one", () => {
    const ok = parseConfig(
      withPolicy({ restoreTest: { enabled: true, bootCheck: { serial: 'login:', agent: true }, timeoutSeconds: 300, everyDays: 7 } }),
      'test.json',
    );
    expect(ok.policies[0]!.restoreTest).toEqual({ enabled: true, bootCheck: { serial: 'login:', agent: true }, timeoutSeconds: 300, everyDays: 7 });
    expect(problems(withPolicy({ restoreTest: { enabled: 'yes', bootCheck: { serial: '(' }, timeoutSeconds: 2, everyDays: 0, every: 3 } }))).toEqual([
      'policies[0].restoreTest.enabled = "yes": must be true or false',
      'policies[0].restoreTest.bootCheck.serial = "(": must be a regular expression (JavaScript syntax) matched against each serial console line',
      'policies[0].restoreTest.timeoutSeconds = 2: must be at least 5',
      'policies[0].restoreTest.everyDays = 0: must be above 0',
      'policies[0].restoreTest.every: unknown key; check the spelling',
    ]);
    expect(problems(withPolicy({ restoreTest: { enabled: true, bootCheck: { agent: false } } }))).toEqual([
      'policies[0].restoreTest.bootCheck = {"agent":false}: must name a sign of life: "serial" (a console line regex) and/or "agent": true',
    ]);
  });

  it('rejects misspelt keys instead of ignoring them', () => {
    expect(problems(withPolicy({ retentoin: { daily: 7 } }))).toEqual(['policies[0].retentoin: unknown key; check the spelling']);
  });

  it('checks references between sections', () => {
    const bad: LifeboatConfig = {
      ...example,
      moverGroups: [...example.moverGroups, { id: 'extra', site: 'moon', hosts: ['esx-01', 'esx-99'] }],
      policies: [
        { ...example.policies[0]!, repository: 'tape', replicateTo: 'primary' },
        { ...example.policies[1]!, id: 'nightly' },
      ],
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
    expect(p).toEqual([`hosts[${example.hosts.length}].id = "esx-04": is served by no mover group: add it to a group's "hosts"`]);
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

  describe('repositories on another endpoint and the group that replicates into them', () => {
    const dr = example.repositories[1]!;
    const withDr = (patch: Record<string, unknown>) => ({ ...example, repositories: [example.repositories[0]!, { ...dr, ...patch }] });

    it("the example's DR repository names its endpoint, bucket, site, replicating group and standby folder", () => {
      expect(dr).toMatchObject({
        id: 'dr',
        site: 'site-dr',
        bucket: 'lifeboat-dr',
        endpoint: { url: 'https://s3.dr.example.com', pathStyle: true },
        replication: { moverGroup: 'dr' },
      });
    });

    it('rejects a replicating group that does not exist, naming the key, the value and the groups', () => {
      expect(problems(withDr({ replication: { moverGroup: 'dr-site' } }))).toEqual([
        'repositories[1].replication.moverGroup = "dr-site": names no configured mover group (groups: site-a, site-b, dr)',
      ]);
      expect(problems(withDr({ replication: { moverGroup: 'DR' } }))[0]).toMatch(
        /^repositories\[1\]\.replication\.moverGroup = "DR": must be 1–39 lowercase letters/,
      );
    });

    it('rejects a replicating group that backs up hosts at another site', () => {
      expect(problems(withDr({ replication: { moverGroup: 'site-a' } }))).toEqual([
        'repositories[1].replication.moverGroup = "site-a": is a group that backs up hosts at site "site-a", not at the repository\'s site "site-dr": name a group at the repository\'s site or one without hosts',
      ]);
      // A group at the repository's own site may serve hosts there too.
      expect(() => parseConfig(withDr({ site: 'site-a', replication: { moverGroup: 'site-a' } }), 'test.json')).not.toThrow();
    });

    it('names each bad endpoint setting', () => {
      expect(problems(withDr({ endpoint: { url: 'ftp://dr.example.com' } }))).toEqual([
        'repositories[1].endpoint.url = "ftp://dr.example.com": must be an http(s) URL of an S3-compatible endpoint',
      ]);
      expect(problems(withDr({ endpoint: { url: 'not a url' } }))).toEqual([
        'repositories[1].endpoint.url = "not a url": must be an http(s) URL of an S3-compatible endpoint',
      ]);
      expect(problems(withDr({ endpoint: { pathStyle: true } }))).toEqual([
        'repositories[1].endpoint = {"pathStyle":true}: must give "url" (an S3-compatible endpoint) or "region" (AWS S3 in another region)',
      ]);
      expect(problems(withDr({ endpoint: { region: 'EU West' } }))[0]).toMatch(/^repositories\[1\]\.endpoint\.region = "EU West": must be a region name/);
      expect(problems(withDr({ endpoint: { url: 'https://s3.dr.example.com', checksums: 'always' } }))).toEqual([
        'repositories[1].endpoint.checksums = "always": must be "when-required" or "when-supported"',
      ]);
      expect(problems(withDr({ endpoint: { url: 'https://s3.dr.example.com', pathstyle: true } }))).toEqual([
        'repositories[1].endpoint.pathstyle: unknown key; check the spelling',
      ]);
      expect(problems(withDr({ endpoint: 'https://s3.dr.example.com' }))[0]).toMatch(/^repositories\[1\]\.endpoint = "https:\/\/s3\.dr\.example\.com": /);
    });

    it("keeps the stack's own repositories on its own S3, and settings the stack cannot apply off it", () => {
      const p = problems({
        ...example,
        repositories: [
          { ...example.repositories[0]!, endpoint: { url: 'https://minio.example.com' } },
          { ...dr, objectLock: { mode: 'COMPLIANCE', days: 30 } },
          { id: 'copy', chunkSizeMiB: 1, bucket: 'my-copy' },
        ],
      });
      expect(p).toEqual([
        'repositories[0].endpoint = {"url":"https://minio.example.com"}: the first repository is the stack\'s own bucket: list a repository on another endpoint after it',
        'repositories[1].objectLock = {"mode":"COMPLIANCE","days":30}: the stack does not create a repository on another endpoint, so it cannot set its Object Lock: configure it on that bucket',
        'repositories[2].bucket = "my-copy": only a repository with its own "endpoint" names its bucket; the stack names the buckets it creates',
      ]);
      expect(problems(withDr({ bucket: 'Bad_Bucket' }))[0]).toMatch(/^repositories\[1\]\.bucket = "Bad_Bucket": must be an S3 bucket name/);
      expect(problems(withDr({ site: 'mars' }))).toEqual(['repositories[1].site = "mars": names no configured site (sites: site-a, site-dr)']);
    });

    it('names each bad Object Lock setting', () => {
      const locked = (objectLock: unknown) => problems({ ...example, repositories: [{ ...example.repositories[0]!, objectLock }, dr] });
      expect(() =>
        parseConfig({ ...example, repositories: [{ ...example.repositories[0]!, objectLock: { mode: 'COMPLIANCE', days: 30 } }, dr] }, 'test.json'),
      ).not.toThrow();
      expect(locked({ mode: 'compliance', days: 30 })).toEqual([
        'repositories[0].objectLock.mode = "compliance": must be "COMPLIANCE" (no one can shorten or remove a lock) or "GOVERNANCE" (a role with s3:BypassGovernanceRetention can)',
      ]);
      expect(locked({ mode: 'GOVERNANCE', days: 0 })).toEqual(['repositories[0].objectLock.days = 0: must be at least 1']);
      expect(locked({ mode: 'GOVERNANCE', days: 1.5 })).toEqual(['repositories[0].objectLock.days = 1.5: must be a whole number']);
      expect(locked({ mode: 'GOVERNANCE', days: 30, years: 1 })).toEqual(['repositories[0].objectLock.years: unknown key; check the spelling']);
    });

    it('a policy replicates only to a repository some group replicates into', () => {
      const { replication: _r, ...noGroup } = dr;
      expect(problems({ ...example, repositories: [example.repositories[0]!, noGroup] })).toEqual([
        'policies[0].replicateTo = "dr": names a repository no mover group replicates into: set repositories[1].replication.moverGroup',
      ]);
      expect(problems(withDr({ replication: { moverGroup: 'dr', standbyPath: 'standby' } }))[0]).toMatch(
        /^repositories\[1\]\.replication\.standbyPath = "standby": must be an absolute path/,
      );
    });
  });

  it("exports a libvirt host's disks on a unix socket by default, or on TCP with TLS unless clear text is accepted explicitly", () => {
    const kvm = example.hosts.findIndex((h) => h.driver === 'libvirt');
    const withExports = (exports: unknown, patch: Record<string, unknown> = {}) => ({
      ...example,
      hosts: example.hosts.map((h, i) => (i === kvm ? { ...h, ...patch, exports } : h)),
    });
    const at = `hosts[${kvm}].exports`;
    expect(parseConfig(withExports({ transport: 'tcp', address: 'kvm-01.example.com' }), 'test.json').hosts[kvm]!.exports).toEqual({
      transport: 'tcp',
      address: 'kvm-01.example.com',
    });
    expect(
      parseConfig(withExports({ transport: 'tcp', address: 'fd00::5', ports: [20000, 20010], scratchDir: '/var/lib/libvirt/scratch' }), 'test.json').hosts[kvm]!
        .exports?.ports,
    ).toEqual([20000, 20010]);
    expect(parseConfig(withExports({ transport: 'tcp', address: '127.0.0.1', tls: false, insecure: true }), 'test.json').hosts[kvm]!.exports?.insecure).toBe(
      true,
    );
    expect(problems(withExports({ transport: 'tcp' }))).toEqual([
      `${at}.address = missing: is required with "transport": "tcp": the hypervisor's host name or IP address that QEMU listens on and the movers connect to`,
    ]);
    expect(problems(withExports({ transport: 'tcp', address: '10.0.0.5', tls: false }))).toEqual([
      `${at}.tls = false: is false, which sends VM disks over the network in clear text: keep TLS (the default: set backup_tls_x509_cert_dir in the hypervisor's qemu.conf and LIFEBOAT_NBD_TLS_DIR on the movers), or, on a network you trust, also set "insecure": true`,
    ]);
    expect(problems(withExports({ transport: 'tcp', address: '10.0.0.5', insecure: true }))).toEqual([`${at}.insecure = true: only applies with "tls": false`]);
    expect(problems(withExports({ transport: 'unix', address: '10.0.0.5' }))).toEqual([
      `${at}.address = "10.0.0.5": is only used with "transport": "tcp" (a unix socket export is read by movers on the hypervisor host)`,
    ]);
    expect(problems(withExports({ transport: 'tcp', address: 'nbd://10.0.0.5:10809', ports: [10900, 10800] }))).toEqual([
      `${at}.address = "nbd://10.0.0.5:10809": must be the hypervisor's host name or IP address (no scheme, port or brackets), e.g. "kvm-01.example.com" or "10.0.0.5"`,
      `${at}.ports = [10900,10800]: runs backwards: [10900, 10800] must be [from, to] with from ≤ to`,
    ]);
    expect(problems(withExports({ transport: 'udp', address: '10.0.0.5', ports: [80, 10800] }))).toEqual([
      `${at}.transport = "udp": must be "unix" (movers on the hypervisor host) or "tcp" (movers reach the hypervisor over the network)`,
      `${at}.ports[0] = 80: must be at least 1024`,
    ]);
    const folder = example.hosts.findIndex((h) => h.driver !== 'libvirt');
    expect(problems({ ...example, hosts: example.hosts.map((h, i) => (i === folder ? { ...h, exports: { transport: 'unix' } } : h)) })).toEqual([
      `hosts[${folder}].exports = {"transport":"unix"}: is only used with "driver": "libvirt"`,
    ]);
  });

  it('a missing or broken file names the path', () => {
    expect(() => loadConfig('/nonexistent/lifeboat.json')).toThrow(
      /\/nonexistent\/lifeboat.json is not a valid Lifeboat configuration:\n {2}- cannot read the file/,
    );
  });
});
