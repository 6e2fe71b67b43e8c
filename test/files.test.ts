/**
 * File-level restore against real file systems made at test time: ext4 (GPT, extents,
 * 64-bit, metadata checksums), ext2 in a logical MBR partition (block maps), ext4 with
 * inline data on the whole disk, FAT12/16/32 with long names. Every listed entry and every
 * extracted file must equal the source tree: bytes, type, permission bits, modification
 * time, link targets, holes. Bad requests name what was asked.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync, readSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filesJob, type FilesJob } from '../contracts/files-job.ts';
import { runFilesOn } from '../mover/files/files-task.ts';
import { SandboxFailure } from '../mover/files/sandbox.ts';
import { extImage, fatImage, imageReader, makeExtTree, makeFatTree, missingTools, partitionedDisk, readTree, type TreeEntry } from './helpers/guest-disks.ts';

const missing = missingTools();
const work = mkdtempSync(join(tmpdir(), 'lifeboat-files-'));
const job = (op: Record<string, unknown>): FilesJob =>
  filesJob.parse({ filesId: 't', vmId: 'vm', backupId: 'b1', diskId: 'vda', moverGroup: 'g', repository: { bucket: 'x' }, ...op });
const ls = (disk: string, path: string, partition?: number) =>
  runFilesOn(imageReader(disk), job({ op: 'ls', path, ...(partition !== undefined ? { partition } : {}) }));
let n = 0;
async function get(disk: string, paths: string[], partition?: number) {
  const target = join(work, `out-${n++}`);
  const r = await runFilesOn(imageReader(disk), job({ op: 'get', paths, target, ...(partition !== undefined ? { partition } : {}) }));
  return { r, target };
}

/** The source tree as a restore must give it back (FAT: its own rules for modes and times). */
function expected(src: Map<string, TreeEntry>, fat = false): Map<string, TreeEntry> {
  if (!fat) return src;
  return new Map(
    [...src].map(([k, v]) => [k, { ...v, mode: v.type === 'dir' ? 0o755 : 0o644, mtimeSec: v.type === 'dir' ? 0 : v.mtimeSec - (v.mtimeSec % 2) }]),
  );
}

function compareTrees(got: Map<string, TreeEntry>, want: Map<string, TreeEntry>, opts: { ignoreDirTimes?: boolean } = {}) {
  got.delete('lost+found');
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [p, w] of want) {
    const g = got.get(p)!;
    const strip = (e: TreeEntry) => ({
      ...e,
      blocks: undefined,
      size: e.type === 'file' ? e.size : 0,
      mtimeSec: e.type === 'dir' && opts.ignoreDirTimes ? 0 : e.mtimeSec,
    });
    expect({ path: p, ...strip(g) }).toEqual({ path: p, ...strip(w) });
  }
}

describe.skipIf(missing.length > 0 && !process.env.CI)(
  `file-level restore from real file systems${missing.length ? ` (missing: ${missing.join(', ')})` : ''}`,
  () => {
    const extSrc = join(work, 'ext-src');
    const fatSrc = join(work, 'fat-src');
    const gptDisk = join(work, 'gpt-ext4.img');
    const mbrDisk = join(work, 'mbr.img');
    const inlineDisk = join(work, 'inline.img');
    const inlineSrc = join(work, 'inline-src');
    let inlineTree: Map<string, TreeEntry>;
    let extTree: Map<string, TreeEntry>;
    let fatTree: Map<string, TreeEntry>;

    beforeAll(() => {
      makeExtTree(extSrc);
      makeFatTree(fatSrc);
      extTree = readTree(extSrc);
      fatTree = readTree(fatSrc);
      extImage(join(work, 'p-ext4.img'), extSrc, 80, ['-t', 'ext4', '-O', '64bit,metadata_csum']);
      // mkfs.ext4 -d keeps whole seconds: give one file nanoseconds (.789 s) to read back.
      execFileSync('debugfs', ['-w', '-R', `sif /big.bin mtime_extra ${789_000_000 * 4}`, join(work, 'p-ext4.img')], { stdio: 'ignore' });
      partitionedDisk(gptDisk, 100, 'label: gpt\nstart=2048, size=163840, type=L, name="root fs"\n', { 1: join(work, 'p-ext4.img') });
      extImage(join(work, 'p-ext2.img'), extSrc, 80, ['-t', 'ext2', '-b', '1024']);
      fatImage(join(work, 'p-fat16.img'), fatSrc, 20, 16);
      fatImage(join(work, 'p-fat12.img'), fatSrc, 4, 12);
      fatImage(join(work, 'p-fat32.img'), fatSrc, 40, 32);
      // MBR: FAT16 primary, an extended partition holding ext2 (5), FAT12 (6) and FAT32 (7).
      partitionedDisk(
        mbrDisk,
        200,
        'label: dos\nstart=2048, size=40960, type=6\nstart=43008, type=5\nstart=45056, size=163840, type=83\nstart=210944, size=8192, type=1\nstart=221184, size=81920, type=c\n',
        {
          1: join(work, 'p-fat16.img'),
          5: join(work, 'p-ext2.img'),
          6: join(work, 'p-fat12.img'),
          7: join(work, 'p-fat32.img'),
        },
      );
      // mke2fs 1.47.0 -d with inline_data writes a sparse file's size 1 KiB short (debugfs shows it): that tree has none.
      makeExtTree(inlineSrc, { sparse: false });
      inlineTree = readTree(inlineSrc);
      extImage(inlineDisk, inlineSrc, 80, ['-t', 'ext4', '-O', 'inline_data', '-I', '512']);
    });
    afterAll(() => rmSync(work, { recursive: true, force: true }));

    it('lists directories of ext4 on GPT: every entry equals the source (type, size, mode, owner, time, link target)', async () => {
      const root = await ls(gptDisk, '/');
      if (root.op !== 'ls') throw new Error('not a listing');
      expect(root).toMatchObject({ fs: 'ext4', partition: 1, warnings: [], next: null });
      const names = root.entries
        .map((e) => e.name)
        .filter((x) => x !== 'lost+found')
        .sort();
      expect(names).toEqual([...extTree.keys()].filter((k) => !k.includes('/')).sort());
      for (const e of root.entries.filter((x) => x.name !== 'lost+found')) {
        const w = extTree.get(e.name)!;
        expect({ name: e.name, type: e.type, mode: e.mode, mtimeSec: Math.floor(e.mtimeMs / 1000), target: e.target, uid: e.uid }).toEqual({
          name: e.name,
          type: w.type,
          mode: w.mode,
          mtimeSec: w.mtimeSec,
          target: w.target,
          uid: process.getuid!(),
        });
        if (e.type === 'file') expect(e.size).toBe(w.size);
      }
      // Nanoseconds are kept: the fixed time's .789 s.
      expect(root.entries.find((e) => e.name === 'big.bin')!.mtimeMs).toBe(Date.parse('2024-02-29T12:34:56.789Z'));
      const docs = await ls(gptDisk, '/docs');
      if (docs.op !== 'ls') throw new Error('not a listing');
      expect(docs.entries.map((e) => e.name).sort()).toEqual(
        [...extTree.keys()]
          .filter((k) => /^docs\/[^/]+$/.test(k))
          .map((k) => k.slice(5))
          .sort(),
      );
      const many = await ls(gptDisk, '/many');
      expect(many.op === 'ls' && many.entries.length).toBe(300);
      // Paged as the task pages a listing too big for one result: the pages, joined, are the listing.
      const paged: string[] = [];
      for (let offset: number | null = 0, pages = 0; offset !== null; pages++) {
        const page = await runFilesOn(imageReader(gptDisk), job({ op: 'ls', path: '/many', offset }), { pageBytes: 24 * 1024 });
        if (page.op !== 'ls' || pages > 10) throw new Error('paging does not end');
        expect(page.total).toBe(300);
        paged.push(...page.entries.map((e) => e.name));
        offset = page.next;
      }
      expect(paged).toEqual(many.op === 'ls' ? many.entries.map((e) => e.name) : []);
      expect(new Set(paged).size).toBe(300);
      const one = await ls(gptDisk, '/docs/readme.txt');
      expect(one.op === 'ls' && one.entries).toMatchObject([{ name: 'readme.txt', type: 'file', size: 21 }]);
    });

    it('extracts the whole ext4 tree from GPT: bytes, modes, times, links and holes as in the source', async () => {
      const { r, target } = await get(gptDisk, ['/']);
      expect(r).toMatchObject({ op: 'get', fs: 'ext4', partition: 1, symlinks: 3, skippedCount: 0 });
      const got = readTree(target);
      compareTrees(got, extTree);
      // The sparse file stays sparse: its three 3000-byte islands, not 40 MiB.
      expect(got.get('sparse.img')!.blocks! * 512).toBeLessThan(1024 * 1024);
    });

    it('extracts ext2 (block maps, 1 KiB blocks) from a logical MBR partition, and one file and one folder of it', async () => {
      const all = await get(mbrDisk, ['/'], 5);
      expect(all.r).toMatchObject({ fs: 'ext2', partition: 5 });
      compareTrees(readTree(all.target), extTree);
      const some = await get(mbrDisk, ['/big.bin', '/docs/deep'], 5);
      expect([...readTree(some.target).keys()].sort()).toEqual(['big.bin', 'deep', 'deep/er', 'deep/er/still', 'deep/er/still/bottom.txt']);
      expect(readTree(some.target).get('big.bin')!.sha256).toBe(extTree.get('big.bin')!.sha256);
    });

    it('extracts ext4 with inline data (small files and directories inside their inodes) on a whole disk', async () => {
      const { r, target } = await get(inlineDisk, ['/']);
      expect(r).toMatchObject({ fs: 'ext4', partition: 0 });
      compareTrees(readTree(target), inlineTree);
    });

    it.each([
      [1, 'vfat (FAT16)'],
      [6, 'vfat (FAT12)'],
      [7, 'vfat (FAT32)'],
    ] as const)('extracts FAT partition %i (%s) with long and unicode names', async (partition, fs) => {
      const listing = await ls(mbrDisk, '/Documents', partition);
      expect(listing).toMatchObject({ fs, partition });
      const { r, target } = await get(mbrDisk, ['/'], partition);
      expect(r).toMatchObject({ fs, files: 5, dirs: 3 });
      compareTrees(readTree(target), expected(fatTree, true), { ignoreDirTimes: true });
    });

    it('names what was asked when it is not there: a path, a partition, a disk with no file system, a choice to make', async () => {
      await expect(ls(gptDisk, '/docs/nope.txt')).rejects.toThrow(/\/docs\/nope.txt does not exist on the ext4 file system/);
      await expect(ls(gptDisk, '/docs/readme.txt/x')).rejects.toThrow(/\/docs\/readme.txt is a file, not a directory/);
      await expect(ls(gptDisk, '/link/x')).rejects.toThrow(/\/link is a symbolic link to 'docs\/readme.txt'/);
      await expect(ls(gptDisk, '/', 3)).rejects.toThrow(/the disk has no partition 3; it has: partition 1 \(80 MiB\): ext4/);
      await expect(ls(mbrDisk, '/')).rejects.toThrow(
        /the disk has 4 file systems; name one with --partition N: partition 1 .*vfat \(FAT16\).*partition 5 .*ext2/,
      );
      const blank = join(work, 'blank.img');
      writeFileSync(blank, Buffer.alloc(4 * 1024 * 1024, 0x5a));
      const err = await ls(blank, '/').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SandboxFailure);
      expect((err as SandboxFailure).kind).toBe('notFound');
      expect((err as Error).message).toMatch(/no partition table \(MBR or GPT\) and no ext2\/3\/4 or FAT file system/);
    });

    it('reads a GPT from its backup header when the primary is damaged, and says so', async () => {
      const disk = join(work, 'gpt-damaged.img');
      partitionedDisk(disk, 100, 'label: gpt\nstart=2048, size=163840, type=L\n', { 1: join(work, 'p-ext4.img') });
      const fd = openSync(disk, 'r+');
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, 512 + 40);
      writeSync(fd, Buffer.from([b[0]! ^ 0x10]), 0, 1, 512 + 40); // first usable LBA: the header's CRC no longer matches
      closeSync(fd);
      const r = await ls(disk, '/docs');
      expect(r.warnings.join('; ')).toMatch(/primary GPT header: header CRC-32 .* does not match.*read the partitions from the backup GPT/);
      expect(r.op === 'ls' && r.entries.length).toBe(4);
    });
  },
);
