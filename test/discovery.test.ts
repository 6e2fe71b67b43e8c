/**
 * Discovery without a workflow: the mover's paging, RecordInventory against dynalite
 * (conditional writes, gone and back, hand-added VMs left alone), the hosts a Discover
 * execution takes, Plan's selection by name pattern and tag with gone VMs reported, and
 * the configuration keys.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, discoverySchedule, loadConfig, matchesNamePattern, parseConfig } from '../core/config.ts';
import { drLabConfig } from '../local/vm-lab/dr-lab.ts';
import { discoveredVmId, type DiscoverPage } from '../contracts/discovery.ts';
import { BackupRequestInvalid, DiscoveryRequestInvalid, VmGone } from '../contracts/errors.ts';
import type { DiscoveredVm } from '../contracts/discovery.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import { listDiscoveryHosts, recordInventory, summarizeDiscovery } from '../functions/discover/inventory.ts';
import { plan, planInput } from '../functions/backup/plan.ts';
import { summarizeRun } from '../functions/backup/summarize.ts';
import { syncConfig } from '../functions/deploy/sync-config.ts';
import { discoverPage, runDiscoverTask } from '../mover/discover.ts';
import type { VmInventory } from '../mover/sources/source.ts';
import { startTestCatalog } from './helpers/catalog.ts';

const vm = (name: string, extra: Partial<DiscoveredVm> = {}): DiscoveredVm => ({
  name,
  uuid: `uuid-${name}`,
  state: 'running',
  tags: [],
  agent: false,
  disks: [{ target: 'vda', type: 'file', format: 'qcow2', sizeBytes: 1 << 30, source: `/var/lib/libvirt/images/${name}.qcow2` }],
  ...extra,
});

/** An inventory of `vms`, counting describeVm calls; `vanish` are listed but gone when described. */
function fakeInventory(vms: DiscoveredVm[], vanish: string[] = []) {
  const calls: string[] = [];
  const inv: VmInventory = {
    vmNames: async () => [...vms.map((v) => v.name), ...vanish].reverse(),
    describeVm: async (name) => {
      calls.push(name);
      return vms.find((v) => v.name === name);
    },
  };
  return { inv, calls };
}

describe('the discover task', () => {
  it('returns every VM in name order in one page when they fit, skipping a VM undefined since it was listed', async () => {
    const { inv } = fakeInventory([vm('b'), vm('a')], ['c-vanished']);
    const page = await discoverPage(inv, 'kvm-01', null);
    expect(page).toEqual({ hostId: 'kvm-01', vms: [vm('a'), vm('b')], next: null });
  });

  it('pages a host whose inventory outgrows a task result, each page under the limit, every VM once', async () => {
    const vms = Array.from({ length: 60 }, (_, i) => vm(`vm-${String(i).padStart(3, '0')}`));
    const { inv, calls } = fakeInventory(vms);
    const maxBytes = 4096;
    const seen: string[] = [];
    let after: string | null = null;
    let pages = 0;
    do {
      const page: DiscoverPage = await discoverPage(inv, 'kvm-01', after, { maxBytes });
      expect(JSON.stringify(page).length).toBeLessThanOrEqual(maxBytes);
      expect(page.vms.length).toBeGreaterThan(0);
      seen.push(...page.vms.map((v) => v.name));
      after = page.next;
      pages++;
    } while (after !== null);
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(seen).toEqual(vms.map((v) => v.name));
    expect(calls.length).toBeLessThanOrEqual(vms.length + pages); // each page describes at most one VM it does not keep
  });

  it('rejects a task input that does not match its schema, naming the field', async () => {
    const drivers = () => {
      throw new Error('not reached');
    };
    await expect(runDiscoverTask({ task: 'discover', hostId: 'kvm-01', hypervisor: { driver: 'folder' } }, drivers)).rejects.toThrow(
      /discover task input is not valid: hypervisor/,
    );
    await expect(runDiscoverTask({ task: 'discover', hypervisor: { driver: 'libvirt', uri: 'test:///default' } }, drivers)).rejects.toMatchObject({
      name: 'Mover.BadTaskInput',
    });
    await expect(
      runDiscoverTask(
        { task: 'discover', hostId: 'kvm-01', hypervisor: { driver: 'libvirt', uri: 'test:///default', exports: { transport: 'tcp' } } },
        drivers,
      ),
    ).rejects.toThrow(/discover task input is not valid: hypervisor.exports.address/);
  });

  it('takes a host whose exports are on TCP: the hypervisor travels whole, and the driver is chosen by it', async () => {
    const { inv } = fakeInventory([vm('a')]);
    const seen: unknown[] = [];
    const drivers = (h: unknown) => {
      seen.push(h);
      return inv as never;
    };
    const hypervisor = {
      driver: 'libvirt',
      uri: 'qemu+ssh://kvm-01/system',
      exports: { transport: 'tcp', address: 'kvm-01.example.com', ports: [10809, 10819] },
    };
    expect((await runDiscoverTask({ task: 'discover', hostId: 'kvm-01', hypervisor }, drivers)).vms.map((v) => v.name)).toEqual(['a']);
    expect(seen).toEqual([hypervisor]);
  });
});

describe('RecordInventory and Plan on dynalite', () => {
  let db: Awaited<ReturnType<typeof startTestCatalog>>;
  let catalog: Catalog;
  let clock = Date.parse('2026-12-01T10:00:00Z');
  const now = () => new Date(clock);
  /** One discovery of kvm-01 finding `vms`, in pages of `pageSize`, started now. */
  const discover = async (id: string, vms: DiscoveredVm[], pageSize = 100) => {
    clock += 1000;
    const startedAt = now().toISOString();
    clock += 1000;
    let totals = null;
    for (let i = 0; i === 0 || i < vms.length; i += pageSize) {
      const chunk = vms.slice(i, i + pageSize);
      const last = i + pageSize >= vms.length;
      totals = await recordInventory(
        { discoveryId: id, startedAt, hostId: 'kvm-01', page: { hostId: 'kvm-01', vms: chunk, next: last ? null : chunk.at(-1)!.name }, totals },
        { catalog, now },
      );
    }
    clock += 60_000;
    return totals!;
  };
  const policy = (extra: Record<string, unknown>) =>
    catalog.putPolicy({ policyId: 'p', vmIds: [], bucket: 'b', chunkSize: 1 << 20, slotLimit: 4, hosts: ['kvm-01'], ...extra });
  const runPlan = (runId: string) => plan({ policyId: 'p', runId }, { catalog, now });

  beforeAll(async () => {
    db = await startTestCatalog();
    catalog = db.catalog;
    await catalog.putHost({
      hostId: 'kvm-01',
      moverGroup: 'site-a',
      site: 'site-a',
      maxConcurrentBackups: 2,
      datastores: {},
      hypervisor: { driver: 'libvirt', uri: 'test:///default' },
    });
    await catalog.putHost({ hostId: 'esx-01', moverGroup: 'site-a', site: 'site-a', maxConcurrentBackups: 2, datastores: {} });
  });
  afterAll(async () => db?.close());

  it('lists every libvirt host, or the one the input names, and refuses a host it cannot discover', async () => {
    expect(await listDiscoveryHosts({}, { catalog })).toEqual({
      hosts: [{ hostId: 'kvm-01', moverGroup: 'site-a', hypervisor: { driver: 'libvirt', uri: 'test:///default' } }],
    });
    expect((await listDiscoveryHosts({ hostId: 'kvm-01' }, { catalog })).hosts).toHaveLength(1);
    await expect(listDiscoveryHosts({ hostId: 'esx-01' }, { catalog })).rejects.toThrow(DiscoveryRequestInvalid);
    await expect(listDiscoveryHosts({ hostId: 'esx-01' }, { catalog })).rejects.toThrow(/folder driver, which has nothing to discover/);
    await expect(listDiscoveryHosts({ hostId: 'nope' }, { catalog })).rejects.toThrow(/host 'nope' is not in the catalog/);
  });

  it('records each domain as a VM of its host with its facts, and counts it new once, also when a page is recorded again', async () => {
    const t = await discover('d1', [vm('web-1', { tags: ['prod'] }), vm('web-2'), vm('db-1', { tags: ['prod', 'db'], agent: true })], 2);
    expect(t).toMatchObject({ hostId: 'kvm-01', found: 3, new: 3, returned: 0, gone: 0, stillGone: 0, next: null });
    const web1 = await catalog.getVm(discoveredVmId('web-1', 'kvm-01'));
    expect(web1).toMatchObject({
      vmId: 'web-1@kvm-01',
      host: 'kvm-01',
      source: 'web-1',
      name: 'web-1',
      uuid: 'uuid-web-1',
      state: 'running',
      tags: ['prod'],
      agent: false,
    });
    expect(web1!.disks).toEqual(vm('web-1').disks);
    expect(web1!.discoveredAt).toBe('2026-12-01T10:00:02.000Z');
    expect(web1!.gone).toBeUndefined();
    expect((await catalog.vmsOnHost('kvm-01')).sort()).toEqual(['db-1@kvm-01', 'web-1@kvm-01', 'web-2@kvm-01']);
    // A retried RecordInventory of the same discovery: same records, still counted new.
    const again = await recordInventory(
      { discoveryId: 'd1', startedAt: '2026-12-01T10:00:00Z', hostId: 'kvm-01', page: { hostId: 'kvm-01', vms: [vm('web-2')], next: 'web-2' } },
      { catalog, now },
    );
    expect(again).toMatchObject({ found: 1, new: 1 });
    clock += 1000;
  });

  it('marks a VM no longer on its host gone (kept, with goneSince), and un-marks it when it comes back', async () => {
    const t = await discover('d2', [vm('web-1', { tags: ['prod'] }), vm('db-1', { tags: ['prod', 'db'], agent: true })]);
    expect(t).toMatchObject({ found: 2, new: 0, gone: 1, stillGone: 0 });
    const gone = await catalog.getVm('web-2@kvm-01');
    expect(gone).toMatchObject({ gone: true, source: 'web-2' });
    expect(gone!.goneSince).toMatch(/^2026-12-01T/);
    // Still gone at the next discovery: counted apart, goneSince unchanged.
    const t3 = await discover('d3', [vm('web-1', { tags: ['prod'] }), vm('db-1', { tags: ['prod', 'db'], agent: true })]);
    expect(t3).toMatchObject({ gone: 0, stillGone: 1 });
    expect((await catalog.getVm('web-2@kvm-01'))!.goneSince).toBe(gone!.goneSince);
    // Back again.
    const t4 = await discover('d4', [vm('web-1', { tags: ['prod'] }), vm('web-2'), vm('db-1', { tags: ['prod', 'db'], agent: true })]);
    expect(t4).toMatchObject({ found: 3, returned: 1, gone: 0, stillGone: 0 });
    const back = await catalog.getVm('web-2@kvm-01');
    expect(back!.gone).toBeUndefined();
    expect(back!.goneSince).toBeUndefined();
  });

  it('leaves a VM added by hand alone: neither overwritten by a domain of the same id nor marked gone', async () => {
    await catalog.putVm({ vmId: 'manual-1', host: 'kvm-01', source: 'manual-1' });
    await catalog.putVm({ vmId: 'clash@kvm-01', host: 'kvm-01', source: '/srv/vms/clash' });
    const t = await discover('d5', [vm('web-1', { tags: ['prod'] }), vm('web-2'), vm('db-1', { tags: ['prod', 'db'], agent: true }), vm('clash')]);
    expect(t).toMatchObject({ found: 4, manual: 1, gone: 0 });
    expect(await catalog.getVm('clash@kvm-01')).toEqual({ vmId: 'clash@kvm-01', host: 'kvm-01', source: '/srv/vms/clash' });
    expect((await catalog.getVm('manual-1'))!.gone).toBeUndefined();
  });

  it('does not mark gone a VM that a discovery running beside it saw after this one started', async () => {
    const startedAt = now().toISOString();
    clock += 1000;
    await recordInventory(
      { discoveryId: 'later', startedAt: now().toISOString(), hostId: 'kvm-01', page: { hostId: 'kvm-01', vms: [vm('new-late')], next: 'new-late' } },
      { catalog, now },
    );
    const t = await recordInventory(
      {
        discoveryId: 'earlier',
        startedAt,
        hostId: 'kvm-01',
        page: { hostId: 'kvm-01', vms: [vm('web-1', { tags: ['prod'] }), vm('web-2'), vm('db-1', { tags: ['prod', 'db'], agent: true })], next: null },
      },
      { catalog, now },
    );
    expect(t.gone).toBe(0);
    expect((await catalog.getVm('new-late@kvm-01'))!.gone).toBeUndefined();
  });

  it("Plan selects the hosts' VMs by name pattern and by tag", async () => {
    await policy({ names: ['web-*'] });
    expect((await runPlan('run-names')).vms.map((v) => v.vmId).sort()).toEqual(['web-1@kvm-01', 'web-2@kvm-01']);
    await policy({ tags: ['db', 'nothing'] });
    expect((await runPlan('run-tags')).vms.map((v) => v.vmId)).toEqual(['db-1@kvm-01']);
    await policy({ names: ['*-1'], tags: ['prod'] });
    expect((await runPlan('run-both')).vms.map((v) => v.vmId).sort()).toEqual(['db-1@kvm-01', 'web-1@kvm-01']);
    const job = (await runPlan('run-job')).vms.find((v) => v.vmId === 'web-1@kvm-01')!;
    expect(job).toMatchObject({ source: 'web-1', host: 'kvm-01', hypervisor: { driver: 'libvirt', uri: 'test:///default' } });
    // A run narrowed to some of the policy's VMs (a failback's final backup); a VM it does not select is refused by name.
    expect((await plan({ policyId: 'p', runId: 'run-one', vmIds: ['web-1@kvm-01'] }, { catalog, now })).vms.map((v) => v.vmId)).toEqual(['web-1@kvm-01']);
    const refused = plan({ policyId: 'p', runId: 'run-other', vmIds: ['web-2@kvm-01', 'web-1@kvm-01'] }, { catalog, now });
    await expect(refused).rejects.toThrow(BackupRequestInvalid);
    await expect(refused).rejects.toThrow(/policy 'p' does not select VM\(s\) 'web-2@kvm-01' \(it selects 'db-1@kvm-01', 'web-1@kvm-01'\)/);
    expect(planInput.parse({ runId: 'r', request: { policyId: 'p', vmIds: ['a'] } })).toEqual({ runId: 'r', policyId: 'p', vmIds: ['a'] });
    expect(planInput.safeParse({ runId: 'r', request: { policyId: 'p', vmIds: [] } }).success).toBe(false);
    // A host's TCP exports reach the job through the catalog.
    const exports = { transport: 'tcp' as const, address: '10.0.0.5', ports: [10809, 10811] as [number, number], tls: true };
    await catalog.putHost({
      hostId: 'kvm-01',
      moverGroup: 'site-a',
      site: 'site-a',
      maxConcurrentBackups: 2,
      datastores: {},
      hypervisor: { driver: 'libvirt', uri: 'qemu+tls://10.0.0.5/system', exports },
    });
    const remote = (await runPlan('run-job-tcp')).vms.find((v) => v.vmId === 'web-1@kvm-01')!;
    expect(remote.hypervisor).toEqual({ driver: 'libvirt', uri: 'qemu+tls://10.0.0.5/system', exports });
    await catalog.putHost({
      hostId: 'kvm-01',
      moverGroup: 'site-a',
      site: 'site-a',
      maxConcurrentBackups: 2,
      datastores: {},
      hypervisor: { driver: 'libvirt', uri: 'test:///default' },
    });
  });

  it('Plan does not back up a gone VM but reports it, and Summarize counts it failed with Source.VmGone', async () => {
    await discover('d6', [vm('web-1', { tags: ['prod'] }), vm('db-1', { tags: ['prod', 'db'], agent: true }), vm('new-late')]);
    await policy({ names: ['web-*'] });
    const out = await runPlan('run-gone');
    expect(out.vms.map((v) => v.vmId)).toEqual(['web-1@kvm-01']);
    expect(out.gone).toEqual([{ vmId: 'web-2@kvm-01', backupId: expect.any(String), host: 'kvm-01', goneSince: expect.stringMatching(/^2026-12-01T/) }]);
    expect(JSON.stringify(out.gone).length).toBeLessThan(200);
    const record = await catalog.getBackup('web-2@kvm-01', out.gone[0]!.backupId);
    expect(record).toMatchObject({ status: 'failed', error: { Error: VmGone.code } });
    const committed = { ...(await catalog.getBackup('web-1@kvm-01', out.vms[0]!.backupId))!, status: 'committed' as const, disks: [] };
    const summary = summarizeRun({ runId: 'run-gone', policyId: 'p', backups: [committed, record!] });
    expect(summary).toMatchObject({ committed: 1, failed: 1 });
    const failed = summary.vms.find((v) => v.status === 'failed')!;
    expect(failed.error!.Error).toBe('Source.VmGone');
    expect(failed.error!.Cause).toMatch(
      /^VM web-2@kvm-01 was not found on its host kvm-01 at the last discovery \(gone since 2026-12-01T.*\): was it deleted, renamed or moved/,
    );
  });
});

describe('the Discover summary', () => {
  it('totals the hosts inventoried and names the ones that failed', () => {
    const s = summarizeDiscovery({
      discoveryId: 'x',
      hosts: [
        { hostId: 'a', found: 3, new: 1, returned: 0, manual: 0, gone: 1, stillGone: 0, next: null },
        { hostId: 'b', error: { Error: 'Mover.SourceUnavailable', Cause: 'virsh list on qemu+ssh://b/system failed' } },
      ],
    });
    expect(s).toEqual({
      discoveryId: 'x',
      found: 3,
      new: 1,
      gone: 1,
      failedHosts: ['b'],
      hosts: [
        { hostId: 'a', found: 3, new: 1, returned: 0, manual: 0, gone: 1, stillGone: 0 },
        { hostId: 'b', error: { Error: 'Mover.SourceUnavailable', Cause: 'virsh list on qemu+ssh://b/system failed' } },
      ],
    });
  });
});

describe('configuration of discovery', () => {
  const example = loadConfig();
  const problems = (value: unknown): string[] => {
    try {
      parseConfig(value, 'test.json');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as ConfigError).problems;
    }
    throw new Error('expected the configuration to be rejected');
  };
  const withVms = (vms: unknown) => ({ ...example, policies: [{ ...example.policies[0]!, vms }] });

  it('takes name patterns and tags, with or without hosts', () => {
    expect(parseConfig(withVms({ names: ['web-*', 'db-?'] }), 't').policies[0]!.vms.names).toEqual(['web-*', 'db-?']);
    expect(parseConfig(withVms({ hosts: ['kvm-01'], tags: ['prod'] }), 't').policies[0]!.vms.tags).toEqual(['prod']);
  });

  it('names each bad pattern, tag and empty selection', () => {
    expect(problems(withVms({ names: ['web servers', ''] }))).toEqual([
      'policies[0].vms.names[0] = "web servers": must be a VM name pattern: no spaces, slashes or brackets; "*" matches any run of characters, "?" one character (e.g. "web-*")',
      'policies[0].vms.names[1] = "": must not be empty',
    ]);
    expect(problems(withVms({ tags: ['a,b'] }))).toEqual(['policies[0].vms.tags[0] = "a,b": must be a tag of 1–64 characters without spaces or commas']);
    expect(problems(withVms({ names: [] }))).toEqual(['policies[0].vms = {"names":[]}: must select VMs: give "ids", "hosts", "names" or "tags"']);
    expect(problems(withVms({ hosts: ['esx-01'], tags: ['prod'] }))).toEqual([
      'policies[0].vms.tags = ["prod"]: selects by tag, but none of the policy\'s hosts is a libvirt host (only discovered VMs carry tags)',
    ]);
    expect(problems(withVms({ hosts: [], names: ['web-*'] }))).toEqual([
      'policies[0].vms.hosts = []: is empty: leave it out to filter the VMs of every host by "names" and "tags"',
    ]);
  });

  it("takes a discovery schedule (hourly by default with a libvirt host or replica VMs, none without) and libvirt's test URI", () => {
    expect(discoverySchedule(example)).toEqual({ expression: 'rate(1 hour)', timeZone: 'UTC' });
    const scheduled = parseConfig({ ...example, discovery: { schedule: { expression: 'cron(0 * * * ? *)', timeZone: 'Europe/Berlin' } } }, 't');
    expect(discoverySchedule(scheduled)).toEqual({ expression: 'cron(0 * * * ? *)', timeZone: 'Europe/Berlin' });
    const noLibvirt = parseConfig({ ...example, hosts: example.hosts.map(({ driver: _d, uri: _u, ...h }) => h) }, 't');
    expect(discoverySchedule(noLibvirt)).toBeUndefined();
    // No libvirt host to inventory, but a DR site keeps replica VMs: hourly all the same (the workflow sweeps its test failover leftovers).
    const dr = drLabConfig(example, { prodNet: 'p', drNet: 'd', policyId: 'p-dr', vmIds: ['vm-1'], keepPoints: 2 });
    const drOnly = parseConfig({ ...dr, hosts: dr.hosts.map(({ driver: _d, uri: _u, ...h }) => h) }, 't');
    expect(drOnly.hosts.some((h) => h.driver === 'libvirt')).toBe(false);
    expect(discoverySchedule(drOnly)).toEqual({ expression: 'rate(1 hour)', timeZone: 'UTC' });
    expect(problems({ ...example, discovery: { schedule: { expression: 'rate(1 hours)', timeZone: 'UTC' } } })).toEqual([
      'discovery.schedule.expression = "rate(1 hours)": rate(): write "1 hour"',
    ]);
    const testUri = { ...example, hosts: example.hosts.map((h) => (h.driver === 'libvirt' ? { ...h, uri: 'test:///default' } : h)) };
    expect(parseConfig(testUri, 't').hosts.find((h) => h.driver === 'libvirt')!.uri).toBe('test:///default');
  });

  it('matches names with * and ? only, case-sensitively, everything else literally', () => {
    expect(matchesNamePattern('web-1', 'web-*')).toBe(true);
    expect(matchesNamePattern('web-10', 'web-?')).toBe(false);
    expect(matchesNamePattern('axb', 'a.b')).toBe(false);
    expect(matchesNamePattern('db(1)', 'db(*)')).toBe(true);
    expect(matchesNamePattern('WEB-1', 'web-*')).toBe(false);
  });

  it('SyncConfig carries names and tags, and a policy without hosts filters every host', async () => {
    const db = await startTestCatalog();
    try {
      const exports = { transport: 'tcp', address: 'kvm-01.example.com' };
      const withTcp = { ...withVms({ names: ['web-*'], tags: ['prod'] }), hosts: example.hosts.map((h) => (h.driver === 'libvirt' ? { ...h, exports } : h)) };
      const config = parseConfig(withTcp, 't');
      await syncConfig({ config, buckets: { primary: 'bucket-primary', dr: 'lifeboat-dr' } }, { catalog: db.catalog });
      const kvm = (await db.catalog.listHosts()).find((h) => h.hypervisor?.driver === 'libvirt');
      expect(kvm?.hypervisor).toEqual({ driver: 'libvirt', uri: 'qemu:///system', exports });
      const p = await db.catalog.getPolicy(config.policies[0]!.id);
      expect(p).toMatchObject({ names: ['web-*'], tags: ['prod'], hosts: config.hosts.map((h) => h.id) });
      expect((await db.catalog.listHosts()).map((h) => h.hostId).sort()).toEqual(config.hosts.map((h) => h.id).sort());
    } finally {
      await db.close();
    }
  });
});
