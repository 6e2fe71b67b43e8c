/**
 * Host configuration backups, piece by piece: the sealed archive, the mover's dump (with a
 * virsh that answers as a real one would), retention in RecordHostConfig against an
 * in-memory repository, and the restore's file writer.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeHostConfigFiles } from '../cli/host-config.ts';
import { deriveKeys } from '../repository/format.ts';
import { HOST_CONFIG_FORMAT, openHostConfig, sealHostConfig, type HostConfigArchive } from '../repository/host-config.ts';
import { type HostConfigResult } from '../contracts/host-config.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { MemoryRepositoryAdmin, type DeleteOutcome } from '../repository/admin.ts';
import type { HostConfigRecord } from '../contracts/host-config.ts';
import { ORPHAN_GRACE_MS, recordHostConfig, type HostConfigJob } from '../functions/host-config/backups.ts';
import { collectHostConfig } from '../mover/host-config.ts';
import { Virsh, VirshError } from '../mover/sources/libvirt/virsh.ts';

const keys = deriveKeys(randomBytes(32));
const archive = (over: Partial<HostConfigArchive> = {}): HostConfigArchive => ({
  format: HOST_CONFIG_FORMAT,
  version: 1,
  hostId: 'kvm-01',
  uri: 'qemu:///system',
  takenAt: '2026-12-06T20:00:00.000Z',
  host: {},
  networks: [{ name: 'default', xml: '<network>\n  <name>default</name>\n</network>\n' }],
  pools: [],
  domains: [{ name: 'web-1', xml: '<domain/>\n' }],
  ...over,
});

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('the sealed archive', () => {
  it('opens under its own key with its SHA-256, and not under another key or with another SHA-256', async () => {
    const a = archive();
    const { sealed, sha256, bytes } = await sealHostConfig(keys, a, 'host-config/kvm-01/b1');
    expect(bytes).toBe(Buffer.byteLength(JSON.stringify(a)));
    expect(await openHostConfig(keys, sealed, 'host-config/kvm-01/b1', sha256)).toEqual(a);
    await expect(openHostConfig(keys, sealed, 'host-config/kvm-02/b1', sha256)).rejects.toThrow(/failed authentication/);
    await expect(openHostConfig(keys, sealed, 'host-config/kvm-01/b1', '0'.repeat(64))).rejects.toThrow(
      /its SHA-256 is [0-9a-f]{64}, not the 0{64} recorded at backup time/,
    );
  });
});

/** A virsh whose answers are given per command line, failing as the real one does. */
class ScriptedVirsh extends Virsh {
  private readonly answers: Record<string, string | VirshError>;
  constructor(answers: Record<string, string | VirshError>) {
    super('qemu:///system');
    this.answers = answers;
  }
  override async run(args: string[]): Promise<string> {
    const line = args.join(' ');
    const a = this.answers[line];
    if (a === undefined) throw new VirshError(`virsh ${args[0]} on qemu:///system failed: unexpected`, 'unexpected');
    if (a instanceof VirshError) throw a;
    return a;
  }
}

describe("the mover's dump", () => {
  const gone = (what: string) => new VirshError(`virsh failed: ${what}`, what);
  it('dumps every definition in name order, leaves out one removed since the listing and a host fact the driver does not support', async () => {
    const v = new ScriptedVirsh({
      nodeinfo: 'CPU(s): 4\n',
      version: 'Using library: libvirt 9.0.0\n',
      capabilities: gone('this function is not supported by the connection driver: virConnectGetCapabilities'),
      'net-list --all --name': 'zeta\nalpha\n\n',
      'net-dumpxml -- alpha': '<network>alpha</network>\n',
      'net-dumpxml -- zeta': gone("Network not found: no network with matching name 'zeta'"),
      'pool-list --all --name': '',
      'list --all --name': 'web-1\n',
      'dumpxml --inactive -- web-1': "<domain type='kvm'>\n</domain>\n",
    });
    const a = await collectHostConfig(v, 'kvm-01', { now: () => new Date('2026-12-06T20:00:00Z') });
    expect(a).toEqual({
      format: HOST_CONFIG_FORMAT,
      version: 1,
      hostId: 'kvm-01',
      uri: 'qemu:///system',
      takenAt: '2026-12-06T20:00:00.000Z',
      host: { nodeinfo: 'CPU(s): 4\n', version: 'Using library: libvirt 9.0.0\n' },
      networks: [{ name: 'alpha', xml: '<network>alpha</network>\n' }],
      pools: [],
      domains: [{ name: 'web-1', xml: "<domain type='kvm'>\n</domain>\n" }],
    });
  });

  it("fails on a host it cannot reach, with the wrapper's message, and on any other failure of a dump", async () => {
    const unreachable = new VirshError(
      'cannot reach libvirt at qemu+ssh://h/system (failed to connect to the hypervisor): is libvirtd running there',
      'failed to connect to the hypervisor',
    );
    await expect(collectHostConfig(new ScriptedVirsh({ nodeinfo: unreachable }), 'kvm-01')).rejects.toBe(unreachable);
    const v = new ScriptedVirsh({
      nodeinfo: '',
      version: '',
      capabilities: '',
      'net-list --all --name': 'a\n',
      'net-dumpxml -- a': gone('internal error: connection closed'),
    });
    await expect(collectHostConfig(v, 'kvm-01')).rejects.toThrow(/connection closed/);
  });
});

describe("RecordHostConfig's retention", () => {
  const repository = { bucket: 'repo' };
  const job = (backupId: string, keep: number): HostConfigJob => ({
    hostId: 'kvm-01',
    moverGroup: 'site-a',
    hypervisor: { driver: 'libvirt', uri: 'qemu:///system' },
    repository,
    backupId,
    objectKey: `host-config/kvm-01/${backupId}`,
    keep,
  });
  const result = (backupId: string): HostConfigResult => ({
    hostId: 'kvm-01',
    backupId,
    objectKey: `host-config/kvm-01/${backupId}`,
    takenAt: '2026-12-06T20:00:00.000Z',
    sha256: 'a'.repeat(64),
    bytes: 10,
    counts: { networks: 1, pools: 0, domains: 1 },
  });
  function setup() {
    const records = new Map<string, HostConfigRecord>();
    const hostConfigs = {
      put: async (r: HostConfigRecord) => void records.set(r.backupId, r),
      list: async () => [...records.values()].sort((a, b) => b.backupId.localeCompare(a.backupId)),
      delete: async (_h: string, id: string) => void records.delete(id),
    };
    const admin = new MemoryRepositoryAdmin(new MemoryObjectStore());
    const now = new Date('2026-12-06T20:00:00Z');
    const record = async (id: string, keep: number, a: typeof admin = admin) => {
      await admin.store.put(`host-config/kvm-01/${id}`, Buffer.from(id));
      return recordHostConfig({ runId: 'run', job: job(id, keep), result: result(id) }, { hostConfigs: hostConfigs as never, admin: () => a, now: () => now });
    };
    return { records, admin, record, now };
  }

  it('keeps the newest `keep` archives of the host, deleting older objects and then their records', async () => {
    const s = setup();
    await s.record('b1', 2);
    await s.record('b2', 2);
    const out = await s.record('b3', 2);
    expect(out).toMatchObject({ backupId: 'b3', kept: 2, deleted: ['b1'], orphansDeleted: 0 });
    expect([...s.records.keys()].sort()).toEqual(['b2', 'b3']);
    expect([...s.admin.store.objects.keys()].sort()).toEqual(['host-config/kvm-01/b2', 'host-config/kvm-01/b3']);
  });

  it('keeps the record of an archive the repository refuses to delete, and reports it', async () => {
    const s = setup();
    await s.record('b1', 1);
    const locked = Object.assign(Object.create(s.admin) as MemoryRepositoryAdmin, {
      delete: async (k: string[]): Promise<DeleteOutcome> => ({ deleted: [], failed: k.map((key) => ({ key, reason: 'AccessDenied: Object Lock' })) }),
    });
    const out = await s.record('b2', 1, locked);
    expect(out).toMatchObject({ kept: 2, deleted: [], notDeleted: [{ key: 'host-config/kvm-01/b1', reason: 'AccessDenied: Object Lock' }] });
    expect([...s.records.keys()].sort()).toEqual(['b1', 'b2']);
  });

  it('deletes an archive no record names once it is a day old, and leaves a younger one (a run in flight)', async () => {
    const s = setup();
    await s.admin.store.put('host-config/kvm-01/old-orphan', Buffer.from('x'));
    s.admin.modified.set('host-config/kvm-01/old-orphan', new Date(s.now.getTime() - ORPHAN_GRACE_MS - 1000));
    await s.admin.store.put('host-config/kvm-01/new-orphan', Buffer.from('x'));
    s.admin.modified.set('host-config/kvm-01/new-orphan', new Date(s.now.getTime() - 60_000));
    await s.admin.store.put('host-config/kvm-010/other-host', Buffer.from('x'));
    s.admin.modified.set('host-config/kvm-010/other-host', new Date(0));
    const out = await s.record('b1', 3);
    expect(out.orphansDeleted).toBe(1);
    expect([...s.admin.store.objects.keys()].sort()).toEqual(['host-config/kvm-01/b1', 'host-config/kvm-01/new-orphan', 'host-config/kvm-010/other-host']);
  });

  it("refuses a result that is not the task's", async () => {
    const s = setup();
    await expect(
      recordHostConfig({ runId: 'r', job: job('b1', 2), result: result('b9') }, { hostConfigs: {} as never, admin: () => s.admin, now: () => s.now }),
    ).rejects.toThrow(/names host 'kvm-01' and object host-config\/kvm-01\/b9, but the task was host 'kvm-01' into host-config\/kvm-01\/b1/);
  });
});

describe("the restore's file writer", () => {
  it('refuses a definition whose name is not a file name before writing anything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-hostcfg-'));
    dirs.push(dir);
    const to = join(dir, 'out');
    await expect(
      writeHostConfigFiles(
        archive({
          domains: [
            { name: 'ok', xml: '' },
            { name: '../evil', xml: '' },
          ],
        }),
        to,
      ),
    ).rejects.toThrow(/the domains definition named "\.\.\/evil" cannot be written as a file name/);
    await expect(readdir(to)).rejects.toThrow(/ENOENT/);
    const w = await writeHostConfigFiles(archive(), to);
    expect(w.files.sort()).toEqual(['domains/web-1.xml', 'networks/default.xml']);
  });
});
