/**
 * Restoring a libvirt backup into a storage pool, against the real libvirtd: a lab guest
 * backed up through the embedded stack, restored as qcow2 and as raw volumes of a `dir`
 * pool made for this test, each equal to the disk as the guest hashed it at the freeze;
 * the qcow2 restore boot-tested (its volume goes with the test domain); an existing volume
 * refused; a restore that fails after writing its volumes leaves none behind.
 */
import { Repository } from '../repository/open.ts';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys, objectKeys, seal } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { RestoreJob } from '../contracts/recovery-jobs.ts';
import { runExecution } from '../local/client.ts';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh, waitForConsoleLine } from '../local/vm-lab/libvirtd.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { discardPoolVolumes } from '../mover/recovery/pool-volumes.ts';
import { restoreDiskTask } from '../mover/recovery/restore-tasks.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary, RunSummary } from '../contracts/workflow-outputs.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DISK = 32 * MiB;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

const pool = `lifeboat-pool-${process.pid}`;
const vmId = 'pool-guest';
const domains: string[] = [];
let poolDir: string;
let t: TestStack;
let vm: LabVm;
let freezeHash: string;
/** The console of the VM restored as qcow2 volumes (the qcow2 test defines it, the backup test boots it). */
let qcow2Console: string;

const sha256 = (path: string, bytes: number) =>
  new Promise<string>((ok, fail) => {
    const h = createHash('sha256');
    createReadStream(path, { start: 0, end: bytes - 1 })
      .on('data', (b) => h.update(b))
      .on('end', () => ok(h.digest('hex')))
      .on('error', fail);
  });
const volumes = async () =>
  (await virsh(['vol-list', '--pool', pool]))
    .split('\n')
    .slice(2)
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);

let restores = 0;
/** A whole-VM restore into the pool (its own restore folder each time), as domain `name`. */
async function restore(name: string, define: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  domains.push(name);
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
    vmId,
    moverGroup: 'site-a',
    target: join(t.dir, `restore-${++restores}`),
    define: { uri: 'qemu:///system', name, pool, ...define },
    ...extra,
  });
  return { status: d.status, error: d.error, cause: d.cause ?? '', summary: d.output ? (JSON.parse(d.output) as RestoreSummary) : undefined };
}

beforeAll(async () => {
  if (!lab.available) return;
  poolDir = await mkdtemp(join(tmpdir(), 'lifeboat-pool-'));
  await virsh(['pool-define-as', pool, 'dir', '--target', poolDir]);
  await virsh(['pool-start', pool]);
});
afterAll(async () => {
  if (!lab.available) return;
  await virsh(['pool-destroy', pool]).catch(() => {});
  await virsh(['pool-undefine', pool]).catch(() => {});
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

describe.skipIf(!lab.available)('restoring a libvirt backup into a storage pool', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 1, moverEnv: { LIFEBOAT_WORK_DIR: '' } });
    await t.movers[0]!.stop(true);
    t.movers[0] = (await import('../local/movers.ts')).startMover(t.stack.endpoints, {
      name: 'pool-mover',
      group: 'site-a',
      env: { LIFEBOAT_WORK_DIR: join(t.dir, 'work') },
      onLog: (l) => t.logs.push(l),
    });
    vm = await startLabVm({
      dir: join(t.dir, 'vm'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: `lifeboat-pool-src-${process.pid}`,
      sizeBytes: DISK,
      dataBytes: 12 * MiB,
      behaviour: { mode: 'write', writeKiBs: 64 },
    });
    await t.stack.catalog.putVm({ vmId, host: 'kvm-01', source: vm.name });
    await t.stack.catalog.putPolicy({ policyId: 'p-pool', vmIds: [vmId], bucket: t.stack.endpoints.bucket, chunkSize: 256 * 1024, slotLimit: 1 });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-pool' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect((JSON.parse(d.output!) as RunSummary).committed).toBe(1);
    freezeHash = (await vm.freezeHashes(1))[0]!;
  }, 300_000);

  afterAll(async () => {
    for (const name of domains) {
      await virsh(['destroy', name]).catch(() => {});
      // The backed-up one has checkpoints: their metadata goes with it.
      await virsh(['undefine', '--checkpoints-metadata', name]).catch(() => virsh(['undefine', name]).catch(() => {}));
    }
    await vm?.remove();
    await t?.close();
  }, 120_000);

  it('restores as a qcow2 volume that boots, and the restore test removes the volume with its domain', async () => {
    const name = `lifeboat-pool-boot-${process.pid}`;
    const r = await restore(name, { bootCheck: { consoleLine: 'LIFEBOAT-GUEST READY', timeoutSeconds: 240 } });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    expect(r.summary!.disks[0]).toMatchObject({
      diskId: 'vda',
      sha256: freezeHash,
      volume: { pool, name: `${name}-vda.qcow2`, format: 'qcow2' },
      path: join(poolDir, `${name}-vda.qcow2`),
    });
    expect(r.summary!.domain).toMatchObject({ name, bootCheck: { passed: true } });
    expect(await virsh(['list', '--all', '--name'])).not.toContain(name);
    expect(await volumes()).not.toContain(`${name}-vda.qcow2`);
  }, 400_000);

  it("restores as a qcow2 volume holding the disk as it was at the freeze, and defines the domain on the pool's volume", async () => {
    const name = `lifeboat-pool-q-${process.pid}`;
    const r = await restore(name, {});
    expect(r.status, r.cause).toBe('SUCCEEDED');
    const path = join(poolDir, `${name}-vda.qcow2`);
    // compat 1.1: it can hold the bitmaps of the restored VM's own incremental backups.
    expect(JSON.parse((await run('qemu-img', ['info', '--output=json', '-U', path])).stdout)).toMatchObject({
      format: 'qcow2',
      'virtual-size': DISK,
      'format-specific': { data: { compat: '1.1' } },
    });
    const raw = join(t.dir, 'q.raw');
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, raw]);
    expect(await sha256(raw, DISK)).toBe(freezeHash);
    const xml = await virsh(['dumpxml', '--inactive', name]);
    expect(xml).toMatch(
      new RegExp(`<disk type='volume' device='disk'>[\\s\\S]*<driver name='qemu' type='qcow2'/>[\\s\\S]*<source pool='${pool}' volume='${name}-vda.qcow2'/>`),
    );
    // The qcow2 volume is thin: it holds the disk's data, not its size.
    expect(Number((await run('du', ['-B1', path])).stdout.split('\t')[0])).toBeLessThan(DISK * 0.75);
    qcow2Console = r.summary!.domain!.consoleLog;
  }, 300_000);

  it('restores as a raw volume written in place, equal to the disk at the freeze, and then refuses to overwrite it unless forced', async () => {
    const name = `lifeboat-pool-r-${process.pid}`;
    const r = await restore(name, { format: 'raw' });
    expect(r.status, r.cause).toBe('SUCCEEDED');
    const path = join(poolDir, `${name}-vda.raw`);
    expect(r.summary!.disks[0]).toMatchObject({ sha256: freezeHash, path, volume: { pool, name: `${name}-vda.raw`, format: 'raw' } });
    expect(await sha256(path, DISK)).toBe(freezeHash);
    expect(await virsh(['dumpxml', '--inactive', name])).toMatch(
      new RegExp(`<driver name='qemu' type='raw'/>[\\s\\S]*<source pool='${pool}' volume='${name}-vda.raw'/>`),
    );

    // Its volume is taken: a restore under the same name (its domain removed) is refused and the volume kept.
    await virsh(['undefine', name]);
    const again = await restore(name, { format: 'raw' });
    expect(again.status).toBe('FAILED');
    expect(again.error).toBe('Recovery.RequestInvalid');
    expect(again.cause).toMatch(new RegExp(`volume '${name}-vda.raw' exists already in storage pool '${pool}'.*vol-delete.*--force`));
    expect(await sha256(path, DISK)).toBe(freezeHash);
    expect(await virsh(['list', '--all', '--name'])).not.toContain(name);

    const forced = await restore(name, { format: 'raw' }, { force: true });
    expect(forced.status, forced.cause).toBe('SUCCEEDED');
    expect(await sha256(path, DISK)).toBe(freezeHash);
  }, 400_000);

  // A running VM needs qcow2 disks to be backed up (libvirt keeps checkpoints as qcow2 bitmaps): the qcow2 restore.
  it('backs up the VM restored into the pool, shut off and running: its disks are pool volumes', async () => {
    const name = `lifeboat-pool-q-${process.pid}`;
    await t.stack.catalog.putVm({ vmId: 'pool-restored', host: 'kvm-01', source: name });
    await t.stack.catalog.putPolicy({
      policyId: 'p-restored',
      vmIds: ['pool-restored'],
      bucket: t.stack.endpoints.bucket,
      chunkSize: 256 * 1024,
      slotLimit: 1,
    });
    const backup = async () => {
      const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-restored' });
      expect(d.status, d.cause).toBe('SUCCEEDED');
      const summary = JSON.parse(d.output!) as RunSummary;
      expect(summary.committed, JSON.stringify(summary.vms.map((v) => v.error))).toBe(1);
      return summary;
    };
    const off = await backup();
    expect(off.vms[0]!.consistency?.reason).toMatch(/shut off/);
    // Shut off, the volume is read as it is: the restored disk, the guest's disk at the freeze.
    const [latest] = await t.stack.catalog.listBackups('pool-restored');
    const back = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId: 'pool-restored',
      backupId: latest!.backupId,
      moverGroup: 'site-a',
      target: join(t.dir, 'restore-of-restored'),
    });
    expect(back.status, back.cause).toBe('SUCCEEDED');
    expect((JSON.parse(back.output!) as RestoreSummary).disks[0]!.sha256).toBe(freezeHash);

    await virsh(['start', name]);
    await waitForConsoleLine(qcow2Console, /LIFEBOAT-GUEST READY/, 240_000);
    const running = await backup();
    expect(running.vms[0]!.consistency?.reason ?? '').not.toMatch(/shut off/);
    await virsh(['destroy', name]);
  }, 400_000);

  it('deletes the volumes it wrote when the restore fails before the domain is defined', async () => {
    // A domain of that name exists (the qcow2 restore above): the disks are written, the define is refused.
    const name = `lifeboat-pool-q-${process.pid}`;
    const r = await restore(name, { format: 'raw' });
    expect(r.status).toBe('FAILED');
    expect(r.cause).toMatch(new RegExp(`a domain named '${name}' already exists`));
    expect(await volumes()).not.toContain(`${name}-vda.raw`);
    expect(await volumes()).toContain(`${name}-vda.qcow2`); // the existing domain's volume is untouched
  }, 300_000);

  it('refuses a pool that does not exist or is not active, naming it and what to do', async () => {
    const missing = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Restore!, {
      vmId,
      moverGroup: 'site-a',
      target: join(t.dir, 'restore-missing'),
      define: { uri: 'qemu:///system', name: `lifeboat-pool-x-${process.pid}`, pool: `no-such-pool-${process.pid}` },
    });
    expect(missing.status).toBe('FAILED');
    expect(missing.cause).toMatch(new RegExp(`storage pool 'no-such-pool-${process.pid}' on qemu:///system does not exist: .*pool-define-as`));

    await virsh(['pool-destroy', pool]);
    try {
      const inactive = await restore(`lifeboat-pool-y-${process.pid}`, {});
      expect(inactive.status).toBe('FAILED');
      expect(inactive.cause).toMatch(new RegExp(`storage pool '${pool}' on qemu:///system is not active: start it \\(virsh pool-start ${pool}\\)`));
    } finally {
      await virsh(['pool-start', pool]);
    }
  }, 300_000);
});

describe.skipIf(!lab.available)('a restore into a storage pool that fails part way (mover tasks)', () => {
  const CHUNK = 64 * 1024;
  const keys = deriveKeys(randomBytes(32));
  const store = new MemoryObjectStore();
  const damaged = new MemoryObjectStore();
  const data = { disk0: randomBytes(3 * CHUNK + 100), disk1: randomBytes(2 * CHUNK) };
  let dir: string;
  const job = (name: string, o: Partial<RestoreJob> = {}): RestoreJob => ({
    restoreId: `r-${name}`,
    vmId: 'vm',
    backupId: 'b1',
    moverGroup: 'g',
    repository: { bucket: 'b' },
    target: join(dir, name),
    diskId: null,
    disks: [],
    define: { uri: 'qemu:///system', name, pool, format: 'raw' },
    ...o,
  });
  const target = (diskId: 'disk0' | 'disk1') => ({ diskId, sizeBytes: data[diskId].length, path: join(dir, `${diskId}.raw`) });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-pool-tasks-'));
    const before = new Set<string>();
    for (const diskId of ['disk0', 'disk1'] as const) {
      const bytes = data[diskId];
      if (diskId === 'disk1') for (const k of store.objects.keys()) before.add(k);
      const reader = { sizeBytes: bytes.length, read: async (b: Buffer, off: number, len: number) => bytes.copy(b, 0, off, off + len), close: async () => {} };
      await backupDisk({
        repository: new Repository(store, keys),
        reader,
        disk: { diskId, path: 'mem', sizeBytes: bytes.length },
        backupId: 'b1',
        chunkSize: CHUNK,
      });
    }
    await store.put(
      objectKeys.vmConfig('b1'),
      await seal(keys, Buffer.from(JSON.stringify({ driver: 'libvirt', name: 'vm', domainXml: '<domain/>' })), 'vm-config:b1'),
    );
    // A copy of the repository whose packs written for disk1 are damaged: disk0 restores, disk1 fails after its volume exists.
    for (const [k, v] of store.objects) damaged.objects.set(k, Buffer.from(v));
    for (const [k, v] of damaged.objects) if (k.startsWith('packs/') && !before.has(k)) v[v.length >> 1]! ^= 0xff;
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("deletes the failed disk's volume at once, and the finished disk's when the failed restore is discarded", async () => {
    const name = `lifeboat-pool-part-${process.pid}`;
    const deps = { repository: new Repository(damaged, keys), parallelism: 2, workDir: join(dir, 'work') };
    const ok = await restoreDiskTask(job(name), target('disk0'), deps);
    expect(ok).toMatchObject({ volume: { pool, name: `${name}-disk0.raw` }, sha256: createHash('sha256').update(data.disk0).digest('hex') });
    await expect(restoreDiskTask(job(name), target('disk1'), deps)).rejects.toMatchObject({ name: 'Mover.Corrupt' });
    expect(await volumes()).toContain(`${name}-disk0.raw`);
    expect(await volumes()).not.toContain(`${name}-disk1.raw`);
    expect(await discardPoolVolumes(deps.workDir, job(name).restoreId)).toEqual([`${name}-disk0.raw`]);
    expect(await volumes()).not.toContain(`${name}-disk0.raw`);
  });

  it('replaces its own volume on a retried disk task, and never deletes a volume that was there before', async () => {
    const name = `lifeboat-pool-own-${process.pid}`;
    const deps = { repository: new Repository(store, keys), parallelism: 2, workDir: join(dir, 'work') };
    await restoreDiskTask(job(name), target('disk0'), deps);
    await restoreDiskTask(job(name), target('disk0'), deps); // a retry of the same restore: its own volume
    // Someone else's volume under the name the next restore would take.
    await virsh(['vol-create-as', '--pool', pool, '--name', `${name}-disk1.raw`, '--capacity', '1M', '--format', 'raw']);
    const other = job(name, { restoreId: `r2-${name}`, target: join(dir, `${name}-2`) });
    await expect(restoreDiskTask(other, target('disk1'), deps)).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
      message: expect.stringMatching(/volume '.*-disk1\.raw' exists already/),
    });
    expect(await discardPoolVolumes(deps.workDir, other.restoreId)).toEqual([]);
    expect(await volumes()).toEqual(expect.arrayContaining([`${name}-disk0.raw`, `${name}-disk1.raw`]));
    expect(await discardPoolVolumes(deps.workDir, job(name).restoreId)).toEqual([`${name}-disk0.raw`]);
    expect(await volumes()).toContain(`${name}-disk1.raw`);
  });
});
