/**
 * The HostConfigBackup workflow end to end on the embedded stack with a real mover process
 * and real libvirt: host kvm-01 is libvirt's built-in test driver (`test:///default`, no
 * daemon needed; it has a network `default`, a pool `default-pool` and a domain `test`),
 * host kvm-02 a libvirt URI that cannot be reached. Then the archive is restored as files
 * and compared byte for byte with what virsh prints, and retention keeps the newest two.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { functionAccess } from '../cdk/lib/function-access.ts';
import { MOVER_WRITE_PREFIXES } from '../cdk/lib/mover-identity.ts';
import { formatHostConfigBackup, formatHostConfigList, listHostConfigs, restoreHostConfig } from '../cli/host-config.ts';
import { StackClient } from '../cli/stack-client.ts';
import { loadConfig, parseConfig } from '../core/config.ts';
import { observeSdkCalls, type SdkCall } from '../functions/commons/clients.ts';
import type { LambdaFunctionId } from '../contracts/functions.ts';
import { runExecution } from '../local/client.ts';
import { currentInvocation } from '../local/lambdas.ts';
import { openRepository } from '../local/stack.ts';
import { denied } from './helpers/grants.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { HostConfigOutcome, HostConfigSummary } from '../contracts/workflow-outputs.ts';

let t: TestStack;
let client: StackClient;
const calls: (SdkCall & { functionId: LambdaFunctionId })[] = [];
const example = loadConfig();
const config = parseConfig(
  {
    ...example,
    moverGroups: example.moverGroups.map((g) => (g.id === 'site-a' ? { ...g, hosts: [...g.hosts, 'kvm-02'] } : g)),
    hosts: [
      ...example.hosts.map((h) => (h.id === 'kvm-01' ? { ...h, uri: 'test:///default' } : h)),
      { id: 'kvm-02', driver: 'libvirt', uri: 'test:///nonexistent/kvm-02.xml', maxConcurrentBackups: 1 },
    ],
    hostConfigBackup: { keep: 2 },
  },
  'host-config.e2e',
);

const backup = async (input: Record<string, unknown>) => runExecution(t.sfn, t.stack.endpoints.stateMachines.HostConfigBackup!, input, { pollMs: 200 });
/** What virsh prints on the test driver, read directly, untrimmed: the restore must give back these bytes. */
const virsh = (...args: string[]) => execFileSync('virsh', ['-q', '-c', 'test:///default', ...args], { encoding: 'utf8' });

beforeAll(async () => {
  observeSdkCalls((call) => {
    const functionId = currentInvocation.getStore()?.functionId;
    if (functionId) calls.push({ ...call, functionId });
  });
  t = await startTestStack({ movers: 1, config });
  // The CLI's way to the stack: listings through the operator API, the archive opened with the stack's key file.
  await writeFile(join(t.dir, 'endpoints.json'), JSON.stringify(t.stack.endpoints));
  client = await StackClient.connect({ dataDir: t.dir });
}, 120_000);
afterAll(async () => {
  client?.close();
  observeSdkCalls(undefined);
  await t?.close();
});

let first: HostConfigOutcome;

it('backs up every libvirt host through its mover group, reporting the unreachable one while the other goes on', async () => {
  const d = await backup({});
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const s = JSON.parse(d.output!) as HostConfigSummary;
  expect(s.failedHosts).toEqual(['kvm-02']);
  expect(s.succeeded).toBe(1);
  expect(s.hosts).toEqual([
    {
      hostId: 'kvm-01',
      backupId: expect.stringMatching(/^\d{8}T\d{9}Z-[0-9a-f]{8}$/),
      objectKey: expect.stringMatching(/^host-config\/kvm-01\//),
      takenAt: expect.any(String),
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      bytes: expect.any(Number),
      counts: { networks: 1, pools: 1, domains: 1 },
      kept: 1,
      deleted: [],
      orphansDeleted: 0,
    },
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
  first = s.hosts[0] as HostConfigOutcome;
  expect(first.objectKey).toBe(`host-config/kvm-01/${first.backupId}`);
  // The mover wrote it where its role may write; sealed: no XML in the stored bytes.
  expect(MOVER_WRITE_PREFIXES.some((p) => first.objectKey.startsWith(p))).toBe(true);
  const { store } = await openRepository(t.stack.endpoints);
  const stored = (await store.get(first.objectKey))!;
  expect(stored.length).toBeGreaterThan(0);
  expect(stored.includes('<network')).toBe(false);
  expect(stored.includes('default-pool')).toBe(false);

  const [record] = await listHostConfigs(client, 'kvm-01');
  expect(record).toMatchObject({
    hostId: 'kvm-01',
    backupId: first.backupId,
    objectKey: first.objectKey,
    sha256: first.sha256,
    counts: first.counts,
    repository: { bucket: t.stack.endpoints.bucket },
    runId: d.name,
  });
  expect(await listHostConfigs(client, 'kvm-02')).toEqual([]);
  expect(formatHostConfigBackup(s, 1)).toEqual([
    expect.stringMatching(/^Host configuration backup .*: 2 host\(s\) in 1\.0 s, 1 backed up, 1 failed$/),
    expect.stringMatching(new RegExp(`^ {2}kvm-01: ${first.backupId}: 1 network\\(s\\), 1 pool\\(s\\), 1 domain\\(s\\), [\\d.]+ KiB; 1 kept$`)),
    expect.stringMatching(/^ {2}kvm-02: FAILED Mover\.SourceUnavailable: cannot reach libvirt at test:\/\/\/nonexistent/),
  ]);
}, 120_000);

it('restores the archive as files byte-equal to what virsh printed at backup time', async () => {
  const to = join(t.dir, 'restored-kvm-01');
  const { record, written } = await restoreHostConfig(client, { hostId: 'kvm-01', to });
  expect(record.backupId).toBe(first.backupId);
  expect(written).toMatchObject({ networks: 1, pools: 1, domains: 1 });
  expect((await readdir(to)).sort()).toEqual(['domains', 'host', 'networks', 'pools']);
  expect(await readdir(join(to, 'networks'))).toEqual(['default.xml']);
  expect(await readdir(join(to, 'pools'))).toEqual(['default-pool.xml']);
  expect(await readdir(join(to, 'domains'))).toEqual(['test.xml']);
  expect(await readFile(join(to, 'networks', 'default.xml'), 'utf8')).toBe(virsh('net-dumpxml', 'default'));
  expect(await readFile(join(to, 'pools', 'default-pool.xml'), 'utf8')).toBe(virsh('pool-dumpxml', 'default-pool'));
  expect(await readFile(join(to, 'domains', 'test.xml'), 'utf8')).toBe(virsh('dumpxml', '--inactive', 'test'));
  expect(await readFile(join(to, 'host', 'capabilities.xml'), 'utf8')).toBe(virsh('capabilities'));
  expect(await readFile(join(to, 'host', 'nodeinfo.txt'), 'utf8')).toBe(virsh('nodeinfo'));
  // No temporary file is left behind.
  for (const d of ['networks', 'pools', 'domains', 'host']) expect((await readdir(join(to, d))).filter((f) => f.includes('.partial'))).toEqual([]);
}, 60_000);

it('refuses a folder that is not empty unless forced, and a backup id it does not have, saying what to do', async () => {
  const to = join(t.dir, 'occupied');
  await mkdir(to, { recursive: true });
  await writeFile(join(to, 'notes.txt'), 'mine');
  await expect(restoreHostConfig(client, { hostId: 'kvm-01', to })).rejects.toThrow(
    /occupied is not empty \(1 entry, e\.g\. notes\.txt\): choose an empty or new folder, or pass --force/,
  );
  expect(await readdir(to)).toEqual(['notes.txt']);
  await restoreHostConfig(client, { hostId: 'kvm-01', to, force: true });
  expect(await readFile(join(to, 'notes.txt'), 'utf8')).toBe('mine');
  expect(await readFile(join(to, 'domains', 'test.xml'), 'utf8')).toBe(virsh('dumpxml', '--inactive', 'test'));
  await expect(restoreHostConfig(client, { hostId: 'kvm-01', at: 'nope', to: join(t.dir, 'x') })).rejects.toThrow(
    /host 'kvm-01' has no host configuration backup 'nope': list its backups with `lifeboat host-config list --host kvm-01`/,
  );
  await expect(restoreHostConfig(client, { hostId: 'kvm-02', to: join(t.dir, 'y') })).rejects.toThrow(
    /host 'kvm-02' has no host configuration backup yet: run one with `lifeboat host-config backup --host kvm-02`/,
  );
}, 60_000);

it('keeps the newest backups of a host (keep: 2): older archives are deleted, then their records', async () => {
  const ids = [first.backupId];
  for (let i = 0; i < 2; i++) {
    const d = await backup({ hostId: 'kvm-01' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as HostConfigSummary;
    expect(s.failedHosts).toEqual([]);
    const h = s.hosts[0] as HostConfigOutcome;
    ids.push(h.backupId);
    expect(h).toMatchObject({ hostId: 'kvm-01', kept: 2, deleted: i === 0 ? [] : [first.backupId] });
  }
  const records = await listHostConfigs(client, 'kvm-01');
  expect(records.map((r) => r.backupId)).toEqual([ids[2], ids[1]]);
  // `lifeboat host-config list`: every libvirt host's, newest first; kvm-02 has none.
  expect((await listHostConfigs(client)).map((r) => r.backupId)).toEqual([ids[2], ids[1]]);
  expect(formatHostConfigList(await listHostConfigs(client, 'kvm-01'))).toEqual(
    records.map((r) =>
      expect.stringMatching(
        new RegExp(
          `^kvm-01  ${r.backupId}  ${r.takenAt.replace(/[.]/g, '\\.')}  1 network\\(s\\), 1 pool\\(s\\), 1 domain\\(s\\)  [\\d.]+ KiB  sha256 ${r.sha256.slice(0, 16)}…$`,
        ),
      ),
    ),
  );
  expect(formatHostConfigList(await listHostConfigs(client, 'kvm-02'), 'kvm-02')).toEqual([
    "host 'kvm-02' has no host configuration backup (run one with `lifeboat host-config backup --host kvm-02`)",
  ]);
  const { store } = await openRepository(t.stack.endpoints);
  expect(await store.get(first.objectKey)).toBeUndefined();
  expect(await store.get(records[1]!.objectKey)).toBeDefined();
  // The restore takes the newest; the older kept one by --at.
  const older = await restoreHostConfig(client, { hostId: 'kvm-01', at: ids[1], to: join(t.dir, 'older') });
  expect(older.record.backupId).toBe(ids[1]);
  expect(await readFile(join(t.dir, 'older', 'networks', 'default.xml'), 'utf8')).toBe(virsh('net-dumpxml', 'default'));
}, 120_000);

it('refuses a host that has no host configuration to back up, naming it', async () => {
  const d = await backup({ hostId: 'esx-01' });
  expect(d.status).toBe('FAILED');
  expect(d.error).toBe('HostConfig.RequestInvalid');
  expect(d.cause).toMatch(/host 'esx-01' uses the folder driver, which has no host configuration to back up/);
}, 60_000);

it("made only the DynamoDB and S3 calls its functions are granted (retention's deletes included)", () => {
  const ours = calls.filter((c) => ['PlanHostConfigBackup', 'RecordHostConfig', 'SummarizeHostConfigBackup'].includes(c.functionId));
  expect(ours.some((c) => c.functionId === 'RecordHostConfig' && c.operation === 'DeleteObjects')).toBe(true);
  expect(ours.some((c) => c.functionId === 'RecordHostConfig' && c.operation === 'ListObjectsV2')).toBe(true);
  expect([
    ...new Set(
      ours
        .map((c) => {
          const why = denied(c, functionAccess[c.functionId]);
          return why && `${c.functionId}: ${why}`;
        })
        .filter(Boolean),
    ),
  ]).toEqual([]);
});
