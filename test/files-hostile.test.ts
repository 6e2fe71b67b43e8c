/**
 * Damaged and hostile guest file systems: a truncated image, a bit-flipped superblock, a
 * directory hard-linked into itself, an extent tree that points back at itself, a FAT
 * cluster chain that loops, and a seeded fuzz of byte mutations of ext4 and FAT images.
 * Each gives a clear error (or a sound result) within a time bound: never a hang, never a
 * crash of the reader, never a write outside the target.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, truncateSync, writeSync, closeSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockReader } from '../mover/files/block-reader.ts';
import { FsCorrupt, FsNotFound } from '../mover/files/block-reader.ts';
import { FatFs } from '../mover/files/fat.ts';
import { openVolume, walk } from '../mover/files/volume.ts';
import { runSandbox, SandboxFailure, type SandboxJob } from '../mover/files/sandbox.ts';
import { extractor } from '../mover/files/extract.ts';
import { extImage, fatImage, imageReader, makeExtTree, makeFatTree, missingTools } from './helpers/guest-disks.ts';
import { prng } from './helpers/prng.ts';

const missing = missingTools();
const work = mkdtempSync(join(tmpdir(), 'lifeboat-files-hostile-'));

function patch(file: string, at: number, bytes: number[] | Buffer): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, at);
  closeSync(fd);
}
function peek(file: string, at: number, n: number): Buffer {
  const fd = openSync(file, 'r');
  const b = Buffer.alloc(n);
  readSync(fd, b, 0, n, at);
  closeSync(fd);
  return b;
}
const debugfs = (file: string, cmd: string, write = false) =>
  execFileSync('debugfs', [...(write ? ['-w'] : []), '-R', cmd, file], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();

/** `get /` of `disk` in the sandbox with tight bounds: the failure, or undefined when it read through. */
async function extractAll(disk: BlockReader): Promise<SandboxFailure | undefined> {
  const target = mkdtempSync(join(work, 'out-'));
  const x = extractor(target);
  const job: SandboxJob = { op: 'get', diskSize: disk.size, paths: ['/'] };
  try {
    await runSandbox(disk, job, x.onMessage, { timeoutMs: 30_000, silenceMs: 10_000 });
    return undefined;
  } catch (err) {
    if (err instanceof SandboxFailure) return err;
    throw err;
  } finally {
    await x.close();
  }
}

describe.skipIf(missing.length > 0 && !process.env.CI)('hostile and damaged guest file systems', () => {
  const ext = join(work, 'ext4.img');
  const fat = join(work, 'fat16.img');
  beforeAll(() => {
    makeExtTree(join(work, 'src'), { bigMiB: 1, sparse: false });
    extImage(ext, join(work, 'src'), 16, ['-t', 'ext4', '-b', '1024']);
    makeFatTree(join(work, 'fsrc'), { bigMiB: 1 });
    fatImage(fat, join(work, 'fsrc'), 20, 16);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('a truncated image: the superblock says more blocks than there are', async () => {
    const cut = join(work, 'cut.img');
    copyFileSync(ext, cut);
    truncateSync(cut, 3 * 1024 * 1024);
    const err = await extractAll(imageReader(cut));
    expect(err?.kind).toBe('notFound');
    expect(err?.message).toMatch(/16384 blocks of 1024 bytes do not fit the 3145728-byte partition \(truncated image\?\)/);
  });

  it('a bit-flipped superblock: block size 2^(10+16), no inodes per group', async () => {
    const flipped = join(work, 'flipped.img');
    copyFileSync(ext, flipped);
    patch(flipped, 1024 + 24, [16, 0, 0, 0]);
    expect((await extractAll(imageReader(flipped)))?.message).toMatch(/block size 2\^26 is not 1 KiB-64 KiB/);
    copyFileSync(ext, flipped);
    patch(flipped, 1024 + 40, [0, 0, 0, 0]);
    expect((await extractAll(imageReader(flipped)))?.message).toMatch(/no inodes \(inodes per group or inode count is 0\)/);
  });

  it('a directory linked into itself is a loop, not an endless walk', async () => {
    const looped = join(work, 'looped.img');
    copyFileSync(ext, looped);
    debugfs(looped, 'ln /docs /docs/deep/back-to-docs', true);
    const err = await extractAll(imageReader(looped));
    expect(err?.kind).toBe('corrupt');
    expect(err?.message).toMatch(/docs\/deep\/back-to-docs: this directory is reached twice \(a directory loop in the file system\)/);
  });

  it('an extent tree whose index block points at itself', async () => {
    const looped = join(work, 'extent-loop.img');
    copyFileSync(ext, looped);
    // The inode of /big.bin: its i_block becomes a depth-2 root whose one index entry
    // names block B, and B an index node of depth 1 naming B again.
    const [, block, offset] = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(debugfs(looped, 'imap /big.bin'))!.map(Number) as [number, number, number];
    const B = 16000;
    const node = (depth: number, child: number) => {
      const b = Buffer.alloc(24);
      b.writeUInt16LE(0xf30a, 0);
      b.writeUInt16LE(1, 2);
      b.writeUInt16LE(4, 4);
      b.writeUInt16LE(depth, 6);
      b.writeUInt32LE(0, 12);
      b.writeUInt32LE(child, 16);
      return b;
    };
    patch(looped, block * 1024 + offset + 40, node(2, B));
    patch(looped, B * 1024, node(1, B));
    // The inode's metadata checksum made to match its new i_block, so the loop is what is met (debugfs -n: without checking it first).
    execFileSync('debugfs', ['-n', '-w', '-R', 'sif /big.bin checksum calc', looped], { stdio: 'ignore' });
    const err = await extractAll(imageReader(looped));
    expect(err?.message).toMatch(/big\.bin \(inode \d+\): extent tree visits block 16000 twice \(a loop\)/);
  });

  it('a FAT cluster chain that loops', async () => {
    const looped = join(work, 'fat-loop.img');
    copyFileSync(fat, looped);
    const fs = (await FatFs.open(imageReader(looped)))!;
    const big = (await fs.list((await fs.root()).node, '/')).find((e) => e.entry.name === 'BIG.BIN')!;
    const cluster = big.node.cluster;
    const b = peek(looped, 0, 512);
    const fatAt = b.readUInt16LE(14) * 512;
    patch(looped, fatAt + (cluster + 3) * 2, [cluster & 0xff, cluster >> 8]); // the 4th cluster leads back to the 1st
    const err = await extractAll(imageReader(looped));
    expect(err?.message).toMatch(/FAT: \/BIG\.BIN: its cluster chain is longer than \d+ clusters \(a loop, or a size that does not match\)/);
  });

  // The readers themselves, in process, against many mutated images: every outcome is a
  // result or a reader error, each within its bound.
  it.each([
    ['ext4', 0x5eed],
    ['vfat', 0xfa7],
  ] as const)('fuzz: %s images with random bytes changed give a result or a clear error, each within 5 s', async (kind, seed) => {
    const base = readFileSync(kind === 'ext4' ? ext : fat);
    const rand = prng(seed);
    const outcomes = { ok: 0, corrupt: 0, notFound: 0 };
    // A fixed number of mutations (seeded), so what is tested does not depend on the machine's load.
    for (let i = 0; i < 30; i++) {
      const img = Buffer.from(base);
      // Metadata lives at the front: mutate there mostly, sometimes anywhere.
      const span = rand(4) === 0 ? img.length : 160 * 1024;
      for (let k = 1 + rand(24); k > 0; k--) img[rand(span)] = rand(256);
      const disk: BlockReader = {
        size: img.length,
        read: async (o, l) => {
          if (o + l > img.length) throw new Error('past the end');
          return img.subarray(o, o + l);
        },
      };
      const attempt = (async () => {
        const { fs } = await openVolume(disk, undefined);
        let bytes = 0;
        await walk(fs, '/', async (e) => {
          if (e.kind !== 'file') return;
          for (const r of await e.ranges())
            for (let o = r.offset; o < r.offset + r.length && bytes < 4 * 1024 * 1024; o += 1 << 20)
              bytes += (await e.read(o, Math.min(1 << 20, r.offset + r.length - o)))?.length ?? 0;
        });
      })();
      const bound = new Promise<'hung'>((ok) => setTimeout(() => ok('hung'), 5000).unref());
      const outcome = await Promise.race([
        attempt.then(
          () => 'ok' as const,
          (err: unknown) => err,
        ),
        bound,
      ]);
      if (outcome === 'ok') outcomes.ok++;
      else if (outcome instanceof FsNotFound) outcomes.notFound++;
      else if (outcome instanceof FsCorrupt || outcome instanceof RangeError) {
        expect((outcome as Error).message.length).toBeGreaterThan(10);
        outcomes.corrupt++;
      } else throw new Error(`mutation ${i} (seed ${seed}): ${outcome === 'hung' ? 'still reading after 5 s' : `unexpected ${String(outcome)}`}`);
    }
    expect(outcomes.ok + outcomes.corrupt + outcomes.notFound).toBe(30);
    expect(outcomes.corrupt + outcomes.notFound).toBeGreaterThan(0);
  });

  it('nothing is written outside the target: a name with a slash or a dot-dot from the guest is refused', async () => {
    // What a subverted reader could send: the extraction refuses it before touching the disk.
    const target = mkdtempSync(join(work, 'evil-out-'));
    const x = extractor(target);
    await expect(
      x.onMessage({
        t: 'event',
        kind: 'file',
        path: 'Documents/../../escape',
        entry: { name: 'escape', type: 'file', size: 1, mode: 0o644, uid: 0, gid: 0, mtimeMs: 0, atimeMs: 0 },
      }),
    ).rejects.toThrow(/not a plain relative path; refused/);
    await expect(
      x.onMessage({
        t: 'event',
        kind: 'symlink',
        path: '/etc/passwd',
        entry: { name: 'x', type: 'symlink', size: 1, mode: 0o777, uid: 0, gid: 0, mtimeMs: 0, atimeMs: 0, target: '/' },
      }),
    ).rejects.toThrow(/refused/);
    expect(readdirSync(target)).toEqual([]);
  });
});
