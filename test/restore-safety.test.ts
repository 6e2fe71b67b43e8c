/**
 * Restores never overwrite silently and never leave a file that looks restored when it is
 * not: a disk is written under `<target>.partial` and renamed into place once re-hashed;
 * a file holding data, a folder that is not empty and the VM's own folder are refused
 * unless forced; a failed restore leaves nothing under the target's name.
 */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys, objectKeys, seal } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { RestoreJob } from '../contracts/recovery-jobs.ts';
import type { Catalog } from '../functions/catalog/catalog.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { planRestore, restoreRequest } from '../functions/restore/restore.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDiskTask, restoreVmConfigTask } from '../mover/recovery/restore-tasks.ts';
import { restoreVm } from '../mover/pipeline/restore-vm.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const store = new MemoryObjectStore();
const disks = { disk0: randomBytes(3 * CHUNK + 100), disk1: randomBytes(2 * CHUNK) };
let dir: string;

const job = (target: string, o: Partial<RestoreJob> = {}): RestoreJob => ({
  restoreId: 'r1',
  vmId: 'vm',
  backupId: 'b1',
  moverGroup: 'g',
  repository: { bucket: 'b' },
  target,
  diskId: 'disk0',
  disks: [],
  ...o,
});
const deps = { repository: new Repository(store, keys), parallelism: 2 };
const diskTarget = (diskId: keyof typeof disks, path: string) => ({ diskId, sizeBytes: disks[diskId].length, path });

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-safety-'));
  for (const [diskId, data] of Object.entries(disks)) {
    const reader = bufferReader(data);
    await backupDisk({
      repository: new Repository(store, keys),
      reader,
      disk: { diskId, path: 'mem', sizeBytes: data.length },
      backupId: 'b1',
      chunkSize: CHUNK,
    });
  }
  await store.put(objectKeys.vmConfig('b1'), await seal(keys, Buffer.from(JSON.stringify({ name: 'vm' })), 'vm-config:b1'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('restoring one disk into a file', () => {
  it('refuses a file that holds data, naming it and --force, and leaves it as it was', async () => {
    const path = join(dir, 'keep.raw');
    const old = randomBytes(1000);
    await writeFile(path, old);
    await expect(restoreDiskTask(job(path), diskTarget('disk0', path), deps)).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
      message: expect.stringMatching(new RegExp(`${path} exists and holds 1000 bytes; .*--force`)),
    });
    expect((await readFile(path)).equals(old)).toBe(true);
    expect(await readdir(dir)).not.toContain('keep.raw.partial');
  });

  it('overwrites it when forced, and writes under <target>.partial until verified', async () => {
    const path = join(dir, 'forced.raw');
    await writeFile(path, randomBytes(1000));
    const seen: string[] = [];
    const r = await restoreDiskTask(job(path, { force: true }), diskTarget('disk0', path), {
      ...deps,
      onProgress: (p) => {
        if (p.phase === 'write' && seen.length === 0)
          seen.push(...[path, `${path}.partial`].map((f) => `${f}: ${statSync(f, { throwIfNoEntry: false })?.size ?? 'absent'}`));
      },
    });
    expect(seen[0]).toBe(`${path}: 1000`); // the old file stays whole while the disk is written beside it
    expect(seen[1]).toMatch(/\.partial: \d+/);
    expect((await readFile(path)).equals(disks.disk0)).toBe(true);
    expect(r.path).toBe(path);
    expect(await readdir(dir)).not.toContain('forced.raw.partial');
  });

  it('restores onto an empty existing file without --force', async () => {
    const path = join(dir, 'empty.raw');
    await writeFile(path, '');
    await restoreDiskTask(job(path), diskTarget('disk0', path), deps);
    expect((await readFile(path)).equals(disks.disk0)).toBe(true);
  });

  it('leaves nothing under the target name when a chunk is damaged: the partial file is removed', async () => {
    const damaged = new MemoryObjectStore();
    for (const [k, v] of store.objects) damaged.objects.set(k, Buffer.from(v));
    for (const [k, v] of damaged.objects) if (k.startsWith('packs/')) v[v.length >> 1]! ^= 0xff;
    const path = join(dir, 'damaged.raw');
    await expect(restoreDiskTask(job(path), diskTarget('disk0', path), { ...deps, repository: new Repository(damaged, keys) })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
    });
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(`${path}.partial`)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('restoring a whole VM into a folder', () => {
  it('refuses a folder that is not empty, naming what it holds', async () => {
    const target = join(dir, 'vm-full');
    await mkdir(target);
    await writeFile(join(target, 'vm.json'), '{"name":"someone else"}');
    await expect(restoreDiskTask(job(target, { diskId: null }), diskTarget('disk0', join(target, 'disk0.raw')), deps)).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
      message: expect.stringMatching(/vm-full is not empty \(it holds vm\.json\).*--force/),
    });
    expect(await readFile(join(target, 'vm.json'), 'utf8')).toBe('{"name":"someone else"}');
    expect(await readdir(target)).toEqual(['vm.json']);
  });

  it('restores into an empty folder: its disks at once, a retried disk, then vm.json; no marker or partial file stays', async () => {
    const target = join(dir, 'vm-new');
    const j = job(target, { diskId: null });
    const restored = await Promise.all((['disk0', 'disk1'] as const).map((id) => restoreDiskTask(j, diskTarget(id, join(target, `${id}.raw`)), deps)));
    // A retry of a disk whose first attempt finished (its answer lost) may write into its own restore's folder.
    await restoreDiskTask(j, diskTarget('disk1', join(target, 'disk1.raw')), deps);
    await restoreVmConfigTask(j, restored, deps);
    expect((await readdir(target)).sort()).toEqual(['disk0.raw', 'disk1.raw', 'vm.json']);
    expect((await readFile(join(target, 'disk1.raw'))).equals(disks.disk1)).toBe(true);
    // Another restore into it is refused.
    await expect(restoreDiskTask(job(target, { diskId: null, restoreId: 'r2' }), diskTarget('disk0', join(target, 'disk0.raw')), deps)).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
    });
  });

  it('restoreVm (the library call) refuses a folder that is not empty unless forced', async () => {
    const target = join(dir, 'lib-full');
    await mkdir(target);
    await writeFile(join(target, 'disk0.raw'), 'precious');
    await expect(restoreVm({ repository: new Repository(store, keys), backupId: 'b1', diskIds: ['disk0'], targetDir: target })).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
    });
    expect(await readFile(join(target, 'disk0.raw'), 'utf8')).toBe('precious');
    await restoreVm({ repository: new Repository(store, keys), backupId: 'b1', diskIds: ['disk0'], targetDir: target, force: true });
    expect((await readFile(join(target, 'disk0.raw'))).equals(disks.disk0)).toBe(true);
  });
});

describe('PlanRestore', () => {
  const source = '/var/lib/vms/web-1';
  const catalog = {
    getVm: async () => ({ vmId: 'web-1', source }),
    getBackup: async () => undefined,
    listBackups: async () => [{ backupId: 'b1', vmId: 'web-1', policyId: 'p', status: 'committed', disks: [{ diskId: 'disk0', sizeBytes: 10 }] }],
    getPolicy: async () => ({ policyId: 'p', bucket: 'repo' }),
  } as unknown as Catalog;
  const records: unknown[] = [];
  const recovery = { putRecord: async (...a: unknown[]) => void records.push(a) } as unknown as RecoveryCatalog;
  const plan = (request: Record<string, unknown>) =>
    planRestore(
      { restoreId: 'r1', request: restoreRequest.parse({ vmId: 'web-1', moverGroup: 'g', ...request }) },
      { catalog, recovery, now: () => new Date(0) },
    );

  it("refuses a whole-VM restore into the VM's own source folder, naming it and --force", async () => {
    await expect(plan({ target: `${source}/` })).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
      message: expect.stringMatching(/is the source folder of VM 'web-1'.*--force/),
    });
    expect(records).toEqual([]);
  });

  it('allows it with force, and passes force to the movers', async () => {
    expect(await plan({ target: source, force: true })).toMatchObject({ target: source, force: true });
  });

  it('accepts only a boolean force', () => {
    expect(restoreRequest.safeParse({ vmId: 'v', moverGroup: 'g', target: '/t', force: 'yes' }).success).toBe(false);
  });
});
