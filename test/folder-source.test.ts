/**
 * The folder driver checks a VM's definition and disks before it reads any of them, and
 * its snapshot copy can be stopped: duplicate disk ids, disks that are not disk images
 * (a FIFO, a directory, a socket), an empty disk, an aborted copy, a retried snapshot.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FolderDriver } from '../mover/sources/folder.ts';

const within = <T>(ms: number, what: string, p: Promise<T>): Promise<T> =>
  Promise.race([p, new Promise<never>((_, no) => setTimeout(() => no(new Error(`${what} did not finish within ${ms} ms`)), ms).unref())]);

describe('folder driver: a VM is checked before anything is read', () => {
  let vm: string;
  const driver = new FolderDriver({ qemuImg: false });
  const define = (disks: { id: string; file: string }[]) => writeFile(join(vm, 'vm.json'), JSON.stringify({ name: 'web-1', disks }));

  beforeEach(async () => {
    vm = await mkdtemp(join(tmpdir(), 'lifeboat-folder-'));
    await writeFile(join(vm, 'a.raw'), randomBytes(4096));
    await writeFile(join(vm, 'b.raw'), randomBytes(4096));
  });
  afterEach(() => rm(vm, { recursive: true, force: true }));

  it('refuses two disks with one id, naming the id and both files, and copies nothing', async () => {
    await define([
      { id: 'disk0', file: 'a.raw' },
      { id: 'disk0', file: 'b.raw' },
    ]);
    await expect(driver.snapshot({ source: vm, backupId: 'b1' })).rejects.toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringMatching(/2 disks with the id 'disk0' \(a\.raw, b\.raw\); give each disk its own id/),
    });
    expect(await readdir(vm)).not.toContain('.lifeboat-snapshots');
  });

  it('refuses a FIFO at once (never blocks on the copy), naming the VM, the disk, what it is and what to do', async () => {
    execFileSync('mkfifo', [join(vm, 'pipe.raw')]);
    await define([
      { id: 'disk0', file: 'a.raw' },
      { id: 'disk1', file: 'pipe.raw' },
    ]);
    const err = await within(
      3000,
      'a snapshot of a FIFO',
      driver.snapshot({ source: vm, backupId: 'b1' }).then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
    expect(err).toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringMatching(
        /disk 'disk1' of VM 'web-1': .*pipe\.raw is a FIFO \(named pipe\), not a disk image; point "file" in .*vm\.json at a raw image file or a block device/,
      ),
    });
  });

  it('refuses a directory and a socket as disks', async () => {
    await mkdir(join(vm, 'dir.raw'));
    await define([{ id: 'disk0', file: 'dir.raw' }]);
    await expect(driver.snapshot({ source: vm, backupId: 'b1' })).rejects.toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringContaining('dir.raw is a directory, not a disk image'),
    });
    const server = createServer();
    await new Promise<void>((ok) => server.listen(join(vm, 'sock.raw'), ok));
    try {
      await define([{ id: 'disk0', file: 'sock.raw' }]);
      await expect(within(3000, 'a snapshot of a socket', driver.snapshot({ source: vm, backupId: 'b1' }))).rejects.toMatchObject({
        message: expect.stringContaining('sock.raw is a socket, not a disk image'),
      });
    } finally {
      server.close();
    }
  });

  it('refuses an empty disk with an error of its own', async () => {
    await writeFile(join(vm, 'empty.raw'), '');
    await define([
      { id: 'disk0', file: 'a.raw' },
      { id: 'disk1', file: 'empty.raw' },
    ]);
    await expect(driver.snapshot({ source: vm, backupId: 'b1' })).rejects.toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringMatching(/disk 'disk1' of VM 'web-1': .*empty\.raw is empty \(0 bytes\)/),
    });
  });

  it('kills the copy when the task is aborted, and leaves no snapshot folder', async () => {
    await define([{ id: 'disk0', file: 'a.raw' }]);
    const abort = new AbortController();
    abort.abort(new Error('the task was stopped'));
    await expect(within(3000, 'an aborted snapshot', driver.snapshot({ source: vm, backupId: 'b1' }, { signal: abort.signal }))).rejects.toThrow(
      'the task was stopped',
    );
    expect(await readdir(join(vm, '.lifeboat-snapshots')).catch(() => [])).toEqual([]);
  });

  it('kills a copy in progress when the task is aborted', async () => {
    const big = await (await import('node:fs/promises')).open(join(vm, 'big.raw'), 'w');
    const mib = Buffer.alloc(1024 * 1024, 7);
    for (let i = 0; i < 256; i++) await big.write(mib);
    await big.close();
    await define([{ id: 'disk0', file: 'big.raw' }]);
    const abort = new AbortController();
    const copying = driver.snapshot({ source: vm, backupId: 'b1' }, { signal: abort.signal });
    await new Promise((ok) => setTimeout(ok, 20));
    abort.abort(new Error('the task was stopped'));
    await expect(within(3000, 'an aborted copy', copying)).rejects.toThrow('the task was stopped');
    const children = execFileSync('ps', ['-o', 'comm=', '--ppid', String(process.pid)], { encoding: 'utf8' }).split('\n');
    expect(children).not.toContain('cp');
    expect(await readdir(join(vm, '.lifeboat-snapshots'))).toEqual([]);
  });

  it('a retried snapshot starts afresh over what an earlier, killed attempt left behind', async () => {
    await define([{ id: 'disk0', file: 'a.raw' }]);
    // A killed attempt's leftovers: a FIFO where the copy goes would block a copy into it, a stray partial file.
    const dir = join(vm, '.lifeboat-snapshots', 'b1');
    await mkdir(dir, { recursive: true });
    execFileSync('mkfifo', [join(dir, 'disk0.raw')]);
    await writeFile(join(dir, 'stray.partial'), 'x');
    const snap = await within(5000, 'a retried snapshot', driver.snapshot({ source: vm, backupId: 'b1' }));
    expect((await readFile(snap.disks[0]!.path)).equals(await readFile(join(vm, 'a.raw')))).toBe(true);
    expect(await readdir(dir)).toEqual(['disk0.raw']);
  });
});
