/**
 * The Discover workflow end to end on the embedded stack with a real mover process and
 * real libvirt: host kvm-01 is libvirt's built-in test driver (`test:///default`, no
 * daemon needed; it has one running domain, `test`), host kvm-02 a libvirt URI that
 * cannot be reached. Then a Backup run of a policy selecting by name reports a VM that
 * discovery marked gone as failed with `Source.VmGone`.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { formatDiscovery } from '../cli/discover.ts';
import { loadConfig, parseConfig } from '../core/config.ts';
import { runExecution } from '../local/client.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { DiscoverySummary, RunSummary } from '../contracts/workflow-outputs.ts';

let t: TestStack;
const example = loadConfig();
const config = parseConfig(
  {
    ...example,
    moverGroups: example.moverGroups.map((g) => (g.id === 'site-a' ? { ...g, hosts: [...g.hosts, 'kvm-02'] } : g)),
    hosts: [
      ...example.hosts.map((h) => (h.id === 'kvm-01' ? { ...h, uri: 'test:///default' } : h)),
      { id: 'kvm-02', driver: 'libvirt', uri: 'test:///nonexistent/kvm-02.xml', maxConcurrentBackups: 1 },
    ],
  },
  'discover.e2e',
);

const discover = async (input: Record<string, unknown>) => {
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Discover!, input, { pollMs: 200 });
  return d;
};
/** What the test driver reports for its domain, read with virsh directly. */
const virsh = (...args: string[]) => execFileSync('virsh', ['-q', '-c', 'test:///default', ...args], { encoding: 'utf8' }).trim();

beforeAll(async () => {
  t = await startTestStack({ movers: 1, config });
}, 120_000);
afterAll(async () => {
  await t?.close();
});

it('inventories every libvirt host through the mover, reporting the unreachable one while the other goes on', async () => {
  const d = await discover({});
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const s = JSON.parse(d.output!) as DiscoverySummary;
  expect(s.failedHosts).toEqual(['kvm-02']);
  expect(s.hosts).toEqual([
    { hostId: 'kvm-01', found: 1, new: 1, returned: 0, manual: 0, gone: 0, stillGone: 0 },
    {
      hostId: 'kvm-02',
      error: {
        Error: 'Mover.SourceUnavailable',
        Cause: expect.stringMatching(
          /cannot reach libvirt at test:\/\/\/nonexistent\/kvm-02\.xml .*failed to connect to the hypervisor.*Check the host.s "uri"/,
        ),
      },
    },
  ]);
  expect(s).toMatchObject({ found: 1, new: 1, gone: 0 });
  const vm = await t.stack.catalog.getVm('test@kvm-01');
  expect(vm).toMatchObject({
    vmId: 'test@kvm-01',
    host: 'kvm-01',
    source: 'test',
    name: 'test',
    state: virsh('domstate', 'test'),
    agent: false,
    tags: [],
    uuid: virsh('domuuid', 'test'),
    disks: [{ target: 'vda', type: 'file', format: 'raw', source: '/guest/diskimage1', sizeBytes: expect.any(Number) }],
  });
  expect(vm!.discoveredAt).toBeDefined();
  expect(await t.stack.catalog.vmsOnHost('kvm-01')).toEqual(['test@kvm-01']);
  expect(formatDiscovery(s, 1)).toEqual([
    expect.stringMatching(/^Discovery .*: 2 host\(s\) in .* s, 1 VM\(s\) found, 1 new, 0 gone$/),
    '  kvm-01: 1 found, 1 new, 0 back, 0 gone',
    expect.stringMatching(/^ {2}kvm-02: FAILED Mover\.SourceUnavailable: cannot reach libvirt at test:\/\/\/nonexistent/),
  ]);
}, 120_000);

it('discovers one host on demand, and marks a VM discovered earlier but no longer there gone', async () => {
  // A VM an earlier discovery found on kvm-01 that the host no longer has.
  await t.stack.catalog.recordDiscoveredVm(
    'kvm-01',
    { name: 'web-9', uuid: 'u-9', state: 'shut off', tags: ['prod'], agent: false, disks: [] },
    { id: 'earlier', at: '2026-01-01T00:00:00.000Z' },
  );
  const d = await discover({ hostId: 'kvm-01' });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const s = JSON.parse(d.output!) as DiscoverySummary;
  expect(s.hosts).toEqual([{ hostId: 'kvm-01', found: 1, new: 0, returned: 0, manual: 0, gone: 1, stillGone: 0 }]);
  expect(await t.stack.catalog.getVm('web-9@kvm-01')).toMatchObject({ gone: true, goneSince: expect.any(String), source: 'web-9' });
  expect((await t.stack.catalog.getVm('test@kvm-01'))!.gone).toBeUndefined();
}, 120_000);

it('refuses a host it cannot discover, naming it', async () => {
  const d = await discover({ hostId: 'esx-01' });
  expect(d.status).toBe('FAILED');
  expect(d.error).toBe('Discovery.RequestInvalid');
  expect(d.cause).toMatch(/host 'esx-01' uses the folder driver, which has nothing to discover/);
}, 60_000);

it('a Backup run of a policy selecting by name reports the gone VM as failed (Source.VmGone) instead of dropping it', async () => {
  await t.stack.catalog.putPolicy({
    policyId: 'p-web',
    vmIds: [],
    hosts: ['kvm-01'],
    names: ['web-*'],
    bucket: t.stack.endpoints.bucket,
    chunkSize: 1 << 20,
    slotLimit: 1,
  });
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-web' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const summary = JSON.parse(d.output!) as RunSummary;
  expect(summary).toMatchObject({ committed: 0, failed: 1 });
  expect(summary.vms).toEqual([
    {
      vmId: 'web-9@kvm-01',
      backupId: expect.any(String),
      status: 'failed',
      error: {
        Error: 'Source.VmGone',
        Cause: expect.stringMatching(
          /^VM web-9@kvm-01 was not found on its host kvm-01 at the last discovery \(gone since .*\): was it deleted, renamed or moved/,
        ),
      },
    },
  ]);
  const [backup] = await t.stack.catalog.listBackups('web-9@kvm-01');
  expect(backup).toMatchObject({ status: 'failed', error: { Error: 'Source.VmGone' } });
}, 120_000);
