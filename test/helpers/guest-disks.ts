/**
 * Real guest disks for file-level restore tests, made at test time with the real tools:
 * a source tree (directories, a large file, sparse files, symbolic links fast and slow,
 * odd names), file systems made from it (`mkfs.ext4 -d`, `mkfs.vfat` + `mcopy`), and
 * partition tables (`sfdisk`: GPT, MBR with logical partitions) with the file systems
 * copied in at their partitions' offsets. Also reads a tree back (lstat, SHA-256) so a
 * test compares what was extracted with what was put in.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  chmodSync,
  writeSync,
  readSync,
  ftruncateSync,
} from 'node:fs';
import { join } from 'node:path';
import type { BlockReader } from '../../mover/files/block-reader.ts';

const MiB = 1024 * 1024;
const run = (cmd: string, args: string[], input?: string) =>
  execFileSync(cmd, args, { stdio: ['pipe', 'ignore', 'pipe'], ...(input !== undefined ? { input } : {}) });

/** Every tool the tests need, or the list of what is missing (for a skip message; CI installs them: .ci/run). */
export function missingTools(): string[] {
  return ['mkfs.ext4', 'mkfs.vfat', 'mcopy', 'sfdisk'].filter((t) => {
    try {
      execFileSync('sh', ['-c', `command -v ${t} || test -x /usr/sbin/${t} || test -x /sbin/${t}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
}

/** A source tree for ext: what file-level restore must bring back exactly. Times are fixed (whole seconds, then nanoseconds). */
export function makeExtTree(dir: string, opts: { bigMiB?: number; sparse?: boolean } = {}): void {
  mkdirSync(join(dir, 'docs/deep/er/still'), { recursive: true });
  writeFileSync(join(dir, 'docs/readme.txt'), 'hello from the guest\n');
  writeFileSync(join(dir, 'docs/spa ce ü 日本語.txt'), 'odd name\n');
  writeFileSync(join(dir, `docs/${'long-name-'.repeat(24)}end`), 'a 250-byte name\n');
  writeFileSync(join(dir, 'docs/deep/er/still/bottom.txt'), 'deep\n');
  writeFileSync(join(dir, 'big.bin'), randomBytes((opts.bigMiB ?? 6) * MiB + 12345));
  writeFileSync(join(dir, 'empty'), '');
  writeFileSync(join(dir, 'tiny'), 'x');
  writeFileSync(join(dir, 'exec.sh'), '#!/bin/sh\necho hi\n');
  chmodSync(join(dir, 'exec.sh'), 0o755);
  writeFileSync(join(dir, 'secret'), 'keep out\n');
  chmodSync(join(dir, 'secret'), 0o600);
  // Sparse: 40 MiB apparent, three islands of data.
  if (opts.sparse !== false) sparseFile(join(dir, 'sparse.img'));
  mkdirSync(join(dir, 'many'));
  for (let i = 0; i < 300; i++) writeFileSync(join(dir, 'many', `file-${String(i).padStart(4, '0')}-with-a-longer-name.txt`), `${i}\n`);
  symlinkSync('docs/readme.txt', join(dir, 'link'));
  symlinkSync(`/${'target/'.repeat(20)}far`, join(dir, 'slow-link'));
  symlinkSync('/nowhere/at/all', join(dir, 'dangling'));
  const t = new Date('2024-02-29T12:34:56.789Z');
  for (const p of ['docs/readme.txt', 'big.bin', 'secret', 'many']) utimesSync(join(dir, p), t, t);
}

function sparseFile(path: string): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, 40 * MiB);
  for (const at of [0, 17 * MiB + 4096, 40 * MiB - 5000]) writeSync(fd, randomBytes(3000), 0, 3000, at);
  closeSync(fd);
}

/** A source tree for FAT: no links, no holes, no permission bits; long and unicode names, times on even seconds. */
export function makeFatTree(dir: string, opts: { bigMiB?: number } = {}): void {
  mkdirSync(join(dir, 'Documents/Sub Folder'), { recursive: true });
  writeFileSync(join(dir, 'Documents/readme.txt'), 'hello from FAT\n');
  writeFileSync(join(dir, 'Documents/A rather long file name with spaces.text'), 'long name\n');
  writeFileSync(join(dir, 'Documents/Sub Folder/Ünïcödé Name 日本.txt'), 'unicode\n');
  writeFileSync(join(dir, 'BIG.BIN'), randomBytes((opts.bigMiB ?? 2) * MiB + 777));
  writeFileSync(join(dir, 'empty.txt'), '');
  const t = new Date('2023-07-14T08:09:10.000Z');
  for (const p of ['Documents/readme.txt', 'BIG.BIN', 'empty.txt']) utimesSync(join(dir, p), t, t);
}

/** An ext file system image of `sizeMiB` filled from `tree` (mkfs.ext4 -d). */
export function extImage(file: string, tree: string, sizeMiB: number, args: string[] = []): void {
  run('truncate', ['-s', `${sizeMiB}M`, file]);
  run('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', ...args, '-d', tree, file]);
}

/** A FAT image (`bits` 12, 16 or 32) of `sizeMiB` filled from `tree` (mcopy keeps the times). */
export function fatImage(file: string, tree: string, sizeMiB: number, bits: 12 | 16 | 32): void {
  run('truncate', ['-s', `${sizeMiB}M`, file]);
  run('mkfs.vfat', ['-F', String(bits), ...(bits === 32 ? ['-s', '1'] : []), '-n', `LB${bits}`, file]);
  const entries = readdirSync(tree).map((n) => join(tree, n));
  if (entries.length)
    execFileSync('mcopy', ['-s', '-p', '-m', '-Q', '-i', file, ...entries, '::/'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, MTOOLS_SKIP_CHECK: '1', TZ: 'UTC' },
    });
}

/**
 * A disk of `sizeMiB` with a partition table (`sfdisk` script) and partition images copied
 * in: `parts` maps Linux's partition number to an image file.
 */
export function partitionedDisk(file: string, sizeMiB: number, script: string, parts: Record<number, string>): void {
  run('truncate', ['-s', `${sizeMiB}M`, file]);
  run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', file], script);
  const table = JSON.parse(execFileSync('sfdisk', ['--json', file]).toString()) as {
    partitiontable: { sectorsize?: number; partitions: { node: string; start: number; size: number }[] };
  };
  const sector = table.partitiontable.sectorsize ?? 512;
  for (const [n, image] of Object.entries(parts)) {
    const p = table.partitiontable.partitions.find((x) => x.node.endsWith(String(n)) && new RegExp(`\\D${n}$`).test(x.node));
    if (!p) throw new Error(`sfdisk made no partition ${n} in ${file}`);
    if (lstatSync(image).size > p.size * sector) throw new Error(`image ${image} does not fit partition ${n}`);
    run('dd', [`if=${image}`, `of=${file}`, 'bs=1M', `seek=${p.start * sector}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
  }
}

/** A local image as a block reader (exact reads or an error), counting the bytes read. */
export function imageReader(file: string): BlockReader & { bytes: number } {
  const fd = openSync(file, 'r');
  const size = lstatSync(file).size;
  const r = {
    size,
    bytes: 0,
    async read(offset: number, length: number) {
      const b = Buffer.alloc(length);
      const n = readSync(fd, b, 0, length, offset);
      if (n !== length) throw new Error(`short read of ${file} at ${offset}: ${n} of ${length}`);
      r.bytes += length;
      return b;
    },
  };
  return r;
}

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: number;
  mtimeSec: number;
  target?: string;
  sha256?: string;
  blocks?: number;
}

/** A tree as path → what a restore must keep (the top folder itself left out). */
export function readTree(dir: string, rel = ''): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  for (const name of readdirSync(join(dir, rel))) {
    const p = rel ? `${rel}/${name}` : name;
    const st = lstatSync(join(dir, p));
    const common = { mode: st.mode & 0o7777, mtimeSec: Math.floor(st.mtimeMs / 1000) };
    if (st.isSymbolicLink()) out.set(p, { type: 'symlink', size: 0, ...common, target: readlinkSync(join(dir, p)) });
    else if (st.isDirectory()) {
      out.set(p, { type: 'dir', size: 0, ...common });
      for (const [k, v] of readTree(dir, p)) out.set(k, v);
    } else
      out.set(p, {
        type: 'file',
        size: st.size,
        ...common,
        sha256: createHash('sha256')
          .update(readFileSync(join(dir, p)))
          .digest('hex'),
        blocks: st.blocks,
      });
  }
  return out;
}
