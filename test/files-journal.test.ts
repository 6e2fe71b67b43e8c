/**
 * File-level restore of ext4 file systems that were not cleanly unmounted, and of damaged
 * ones with metadata checksums.
 *
 * The journal: image A is made with `mkfs.ext4 -d`; image B is A changed offline by debugfs
 * (a new folder with a file, a file removed, a file rewritten). A's journal then gets, by
 * debugfs's own jbd2 writer (`jo`/`jw`/`jc`, the format the kernel writes and e2fsck
 * replays), a committed transaction holding B's versions of every block that differs (the
 * superblock left out), a committed transaction writing garbage over a file's block that a
 * later committed transaction revokes, and an uncommitted transaction writing garbage over
 * another. A is left with `needs_recovery`: read as is, it shows A (debugfs, which does not
 * replay, proves it); the reader must show B, the committed state, and agree with e2fsck's
 * replay. Where the machine allows it (root, loop devices, python3 for the ioctl), the kernel
 * makes one too: mount, write, EXT4_IOC_SHUTDOWN with LOGFLUSH (the journal is committed,
 * nothing is checkpointed), unmount.
 *
 * Checksums: one byte flipped in the superblock, a group descriptor, an inode and a
 * directory block each gives an error naming that structure.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filesJob, type FilesJob } from '../contracts/files-job.ts';
import { runFilesOn } from '../mover/files/files-task.ts';
import { extImage, imageReader, missingTools, readTree } from './helpers/guest-disks.ts';

const missing = missingTools();
const work = mkdtempSync(join(tmpdir(), 'lifeboat-files-journal-'));
const BS = 1024;
const job = (op: Record<string, unknown>): FilesJob =>
  filesJob.parse({ filesId: 't', vmId: 'vm', backupId: 'b1', diskId: 'vda', moverGroup: 'g', repository: { bucket: 'x' }, ...op });
const debugfs = (file: string, cmds: string, write = false) =>
  execFileSync('debugfs', [...(write ? ['-w'] : []), '-f', '-', file], { input: cmds, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
let n = 0;
/** Everything in `disk`, extracted by the reader (in its sandbox), as a tree. */
async function extracted(disk: string) {
  const target = join(work, `out-${n++}`);
  await runFilesOn(imageReader(disk), job({ op: 'get', paths: ['/'], target }));
  const tree = readTree(target);
  tree.delete('lost+found');
  return tree;
}
function flip(file: string, at: number): void {
  const fd = openSync(file, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0]! ^= 0x01;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
}
/** The first data block of `path` in `image`. */
const firstBlock = (image: string, path: string) =>
  Number(
    /(\d+)/.exec(
      debugfs(image, `blocks ${path}\n`)
        .split('\n')
        .find((l) => /^\d/.test(l.trim())) ?? '',
    )?.[1],
  );

describe.skipIf(missing.length > 0 && !process.env.CI)('ext journal replay and metadata checksums', () => {
  const a = join(work, 'a.img');
  const b = join(work, 'b.img');
  beforeAll(() => {
    // A small tree: what is read is the metadata, and each extraction is a sandboxed process.
    const src = join(work, 'src');
    mkdirSync(join(src, 'docs/deep'), { recursive: true });
    writeFileSync(join(src, 'docs/readme.txt'), 'hello from the guest\n');
    writeFileSync(join(src, 'docs/deep/bottom.txt'), 'deep\n');
    for (let i = 0; i < 40; i++) writeFileSync(join(src, 'docs', `file-${i}.txt`), `${i}\n`.repeat(100));
    writeFileSync(join(src, 'secret'), 'keep out\n');
    writeFileSync(join(src, 'tiny'), 'x');
    writeFileSync(join(src, 'exec.sh'), '#!/bin/sh\necho hi\n');
    symlinkSync('docs/readme.txt', join(src, 'link'));
    extImage(a, join(work, 'src'), 16, ['-t', 'ext4', '-b', String(BS)]);
    copyFileSync(a, b);
    writeFileSync(join(work, 'new.txt'), 'written after the backup began\n');
    writeFileSync(join(work, 'tiny.txt'), 'rewritten\n');
    debugfs(b, `mkdir /journaled\nwrite ${join(work, 'new.txt')} /journaled/new.txt\nrm /exec.sh\nrm /tiny\nwrite ${join(work, 'tiny.txt')} /tiny\n`, true);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('reads the committed state of a journal left unreplayed: committed transactions replayed, revoked blocks and an uncommitted transaction left out, as e2fsck replays it', async () => {
    const dirty = join(work, 'dirty.img');
    copyFileSync(a, dirty);
    const before = readFileSync(a);
    const after = readFileSync(b);
    const changed: number[] = [];
    for (let i = 2; i < before.length / BS; i++) if (!before.subarray(i * BS, (i + 1) * BS).equals(after.subarray(i * BS, (i + 1) * BS))) changed.push(i);
    expect(changed.length).toBeGreaterThan(3);
    writeFileSync(join(work, 'changed.bin'), Buffer.concat(changed.map((i) => after.subarray(i * BS, (i + 1) * BS))));
    writeFileSync(join(work, 'garbage.bin'), Buffer.alloc(BS, 0xee));
    writeFileSync(join(work, 'none.bin'), '');
    const revokedBlock = firstBlock(a, '/docs/readme.txt');
    const uncommittedBlock = firstBlock(a, '/secret');
    expect(revokedBlock).toBeGreaterThan(0);
    expect(uncommittedBlock).toBeGreaterThan(0);
    debugfs(
      dirty,
      [
        'jo',
        `jw -b ${changed.join(',')} ${join(work, 'changed.bin')}`,
        `jw -b ${revokedBlock} ${join(work, 'garbage.bin')}`,
        `jw -r ${revokedBlock} ${join(work, 'none.bin')}`,
        `jw -b ${uncommittedBlock} -c ${join(work, 'garbage.bin')}`,
        'jc',
        '',
      ].join('\n'),
      true,
    );
    const log = debugfs(dirty, 'logdump\n');
    expect(log).toMatch(/sequence 3, type 5 \(revoke table\)/);
    expect(execFileSync('dumpe2fs', ['-h', dirty], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/needs_recovery/);
    // As stored (debugfs does not replay): the old state.
    expect(debugfs(dirty, 'ls /\n')).not.toContain('journaled');

    const got = await extracted(dirty);
    const want = await extracted(b);
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    expect(got).toEqual(want);
    expect(got.get('journaled/new.txt')?.size).toBe(31);
    expect(got.has('exec.sh')).toBe(false);
    expect(readFileSync(join(work, `out-${n - 2}`, 'docs/readme.txt'), 'utf8')).toBe('hello from the guest\n');
    expect(readFileSync(join(work, `out-${n - 2}`, 'secret'), 'utf8')).toBe('keep out\n');
    // e2fsck's replay gives the same.
    const replayed = join(work, 'replayed.img');
    copyFileSync(dirty, replayed);
    try {
      execFileSync('e2fsck', ['-fy', replayed], { stdio: 'ignore' });
    } catch (err) {
      // 1: errors corrected (the replay); anything above is not expected.
      expect((err as { status: number }).status).toBe(1);
    }
    expect(await extracted(replayed)).toEqual(got);
  });

  it.skipIf(process.getuid?.() !== 0 || !hasPython())(
    'reads the committed state of a journal the kernel left: mount, write, shut down with the log flushed, unmount',
    async () => {
      const img = join(work, 'kernel.img');
      copyFileSync(a, img);
      const mnt = join(work, 'mnt');
      mkdirSync(mnt);
      try {
        execFileSync('mount', ['-o', 'loop', img, mnt], { stdio: 'ignore' });
      } catch {
        return expect.soft('loop mount unavailable').toBe('loop mount unavailable');
      }
      try {
        mkdirSync(join(mnt, 'kernel'));
        writeFileSync(join(mnt, 'kernel/file.txt'), 'from the kernel\n');
        execFileSync('sync', ['-f', join(mnt, 'kernel/file.txt')]);
        mkdirSync(join(mnt, 'kernel/after-sync'));
        rmSync(join(mnt, 'tiny'));
        execFileSync('python3', [
          '-c',
          `import fcntl,os,struct; fd=os.open(${JSON.stringify(mnt)},os.O_RDONLY); fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 1))`,
        ]);
      } finally {
        execFileSync('umount', [mnt]);
      }
      expect(execFileSync('dumpe2fs', ['-h', img], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()).toMatch(/needs_recovery/);
      expect(debugfs(img, 'logdump\n')).toMatch(/commit block/);
      const got = await extracted(img);
      expect(got.has('kernel/after-sync')).toBe(true);
      expect(got.has('tiny')).toBe(false);
      const replayed = join(work, 'kernel-replayed.img');
      copyFileSync(img, replayed);
      try {
        execFileSync('e2fsck', ['-fy', replayed], { stdio: 'ignore' });
      } catch (err) {
        expect((err as { status: number }).status).toBe(1);
      }
      expect(await extracted(replayed)).toEqual(got);
    },
  );

  it('refuses damaged metadata, naming the structure: superblock, group descriptor, inode, directory block', async () => {
    const ls = (disk: string, path: string) => runFilesOn(imageReader(disk), job({ op: 'ls', path }));
    const bad = join(work, 'bad.img');
    copyFileSync(a, bad);
    flip(bad, 1024 + 0x2c); // s_mtime
    await expect(ls(bad, '/')).rejects.toThrow(/ext superblock: metadata checksum mismatch .*the superblock is damaged/);

    copyFileSync(a, bad);
    flip(bad, 2 * BS + 0x0c); // group 0's free block count (descriptors follow the superblock's block)
    await expect(ls(bad, '/')).rejects.toThrow(/ext group descriptor 0: metadata checksum mismatch .*the group descriptor is damaged/);

    copyFileSync(a, bad);
    const where = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(debugfs(a, 'imap /docs/readme.txt\n'))!;
    flip(bad, Number(where[1]) * BS + Number.parseInt(where[2]!, 16) + 8); // its atime
    const ino = /Inode (\d+)/.exec(debugfs(a, 'imap /docs/readme.txt\n'))![1];
    await expect(ls(bad, '/docs')).rejects.toThrow(new RegExp(`ext inode ${ino}: metadata checksum mismatch .*the inode is damaged`));

    copyFileSync(a, bad);
    flip(bad, firstBlock(a, '/docs') * BS + 30); // a byte of the entries' names
    await expect(ls(bad, '/docs')).rejects.toThrow(
      /ext: directory \/docs \(inode \d+\): directory block metadata checksum mismatch .*the directory block is damaged/,
    );
    // The sound image reads.
    const sound = await ls(a, '/docs');
    expect(sound.op === 'ls' && sound.total).toBe(42);
  });
});

function hasPython(): boolean {
  try {
    execFileSync('python3', ['-c', 'import fcntl'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
