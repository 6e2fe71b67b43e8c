/**
 * From a disk to the file system a request names: the partition table (or none: a file
 * system on the whole disk), the file system on the chosen partition, a path resolved in
 * it, and the two operations of file-level restore — list a directory (or one entry) and
 * walk a tree for extraction. Runs in the sandboxed child.
 */
import { FsCorrupt, FsNotFound, slice, type BlockReader } from './block-reader.ts';
import { ExtFs } from './ext.ts';
import { FatFs } from './fat.ts';
import { LIMITS, type Entry, type FileSystem } from './fs-types.ts';
import { readPartitionTable } from './partitions.ts';

/** One partition (or the whole disk, number 0) and what is on it. */
export interface VolumeInfo {
  partition: number;
  offset: number;
  size: number;
  /** The file system found, or why none was. */
  fs: string | null;
  problem?: string;
}

async function openFs(disk: BlockReader): Promise<FileSystem | undefined> {
  return (await ExtFs.open(disk)) ?? (await FatFs.open(disk));
}

/** Every partition of the disk with the file system on it (the whole disk as partition 0 when there is no table). */
export async function volumes(disk: BlockReader): Promise<{ scheme: string; warnings: string[]; volumes: VolumeInfo[] }> {
  // A file system on the whole disk first: a FAT boot sector also ends in 55AA.
  let whole: FileSystem | undefined;
  let problem: string | undefined;
  try {
    whole = await openFs(disk);
  } catch (err) {
    if (!(err instanceof FsCorrupt)) throw err;
    problem = err.message;
  }
  if (whole) return { scheme: 'none', warnings: [], volumes: [{ partition: 0, offset: 0, size: disk.size, fs: whole.kind }] };
  const table = await readPartitionTable(disk);
  if (!table)
    return {
      scheme: 'none',
      warnings: [],
      volumes: [
        {
          partition: 0,
          offset: 0,
          size: disk.size,
          fs: null,
          problem: problem ?? 'no partition table (MBR or GPT) and no ext2/3/4 or FAT file system at the start of the disk',
        },
      ],
    };
  const out: VolumeInfo[] = [];
  for (const p of table.partitions) {
    const v: VolumeInfo = { partition: p.number, offset: p.offset, size: p.size, fs: null };
    try {
      const fs = await openFs(slice(disk, p.offset, p.size, `partition ${p.number}`));
      if (fs) v.fs = fs.kind;
      else v.problem = 'no ext2/3/4 or FAT file system';
    } catch (err) {
      if (!(err instanceof FsCorrupt)) throw err;
      v.problem = err.message;
    }
    out.push(v);
  }
  return { scheme: table.scheme, warnings: table.warnings, volumes: out };
}

/** The file system of partition `partition` (or the only one with a file system when not given). */
export async function openVolume(disk: BlockReader, partition: number | undefined): Promise<{ fs: FileSystem; volume: VolumeInfo; warnings: string[] }> {
  const found = await volumes(disk);
  const describe = (v: VolumeInfo) =>
    `${v.partition === 0 ? 'whole disk' : `partition ${v.partition}`} (${(v.size / 2 ** 20).toFixed(0)} MiB): ${v.fs ?? v.problem}`;
  let v: VolumeInfo | undefined;
  if (partition !== undefined) {
    v = found.volumes.find((x) => x.partition === partition);
    if (!v)
      throw new FsNotFound(
        `the disk has no partition ${partition}; it has: ${found.volumes.map(describe).join('; ') || `a ${found.scheme} table with no partitions`}`,
      );
    if (!v.fs) throw new FsNotFound(`partition ${partition} has no file system this reader knows: ${v.problem}`);
  } else {
    const withFs = found.volumes.filter((x) => x.fs);
    if (withFs.length === 0)
      throw new FsNotFound(
        `the disk has no ext2/3/4 or FAT file system: ${found.volumes.map(describe).join('; ') || `a ${found.scheme} table with no partitions`}`,
      );
    if (withFs.length > 1)
      throw new FsNotFound(`the disk has ${withFs.length} file systems; name one with --partition N: ${found.volumes.map(describe).join('; ')}`);
    v = withFs[0]!;
  }
  const fs = (await openFs(v.partition === 0 ? disk : slice(disk, v.offset, v.size, `partition ${v.partition}`)))!;
  return { fs, volume: v, warnings: found.warnings };
}

/** The components of an absolute guest path ('/' is none); '..' and '.' are refused, not resolved. */
export function pathComponents(path: string): string[] {
  if (!path.startsWith('/')) throw new FsNotFound(`path '${path}' is not absolute: give it from the file system's root, e.g. /etc/hostname`);
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.length > LIMITS.pathComponents) throw new FsNotFound(`path '${path.slice(0, 200)}...' has more than ${LIMITS.pathComponents} components`);
  if (parts.some((p) => p === '.' || p === '..')) throw new FsNotFound(`path '${path}' has a '.' or '..' component: give it without them`);
  return parts;
}

/** The node and entry at `path`; symbolic links are not followed (one in the middle is an error naming its target). */
export async function resolve<N>(fs: FileSystem<N>, path: string): Promise<{ node: N; entry: Entry }> {
  let at = await fs.root();
  let walked = '';
  for (const name of pathComponents(path)) {
    if (at.entry.type === 'symlink')
      throw new FsNotFound(`${walked} is a symbolic link to '${at.entry.target}', not a directory: give the path through its target`);
    if (at.entry.type !== 'dir') throw new FsNotFound(`${walked} is a ${at.entry.type}, not a directory, so '${path}' does not exist`);
    const found = (await fs.list(at.node, walked || '/')).find((e) => e.entry.name === name);
    walked += `/${name}`;
    if (!found)
      throw new FsNotFound(
        `${walked} does not exist on the ${fs.kind} file system (list ${walked.slice(0, walked.lastIndexOf('/')) || '/'} to see what is there; names are case-sensitive on ext)`,
      );
    at = found;
  }
  return at;
}

/** What extraction is told, in tree order: a directory before its contents, its times after them ('dirEnd'). */
export type WalkEvent =
  | { kind: 'dir'; path: string; entry: Entry }
  | { kind: 'dirEnd'; path: string; entry: Entry }
  | { kind: 'symlink'; path: string; entry: Entry }
  | { kind: 'other'; path: string; entry: Entry }
  | {
      kind: 'file';
      path: string;
      entry: Entry;
      read: (offset: number, length: number) => Promise<Uint8Array | null>;
      ranges: () => Promise<{ offset: number; length: number }[]>;
    };

/**
 * Walks the tree at `path` (a file, a link or a directory, recursively), paths relative to
 * its parent. A directory reached twice (a loop in a hostile image) or deeper than
 * LIMITS.depth is an error.
 */
export async function walk<N>(fs: FileSystem<N>, path: string, visit: (e: WalkEvent) => Promise<void>): Promise<void> {
  const top = await resolve(fs, path);
  const parts = pathComponents(path);
  const topName = parts[parts.length - 1] ?? '';
  const seen = new Set<string>();
  const go = async (node: N, entry: Entry, rel: string, guestPath: string, depth: number): Promise<void> => {
    if (entry.type === 'dir') {
      if (depth > LIMITS.depth) throw new FsCorrupt(`${guestPath}: directories nest deeper than ${LIMITS.depth} levels`);
      const key = fs.nodeId(node);
      if (seen.has(key)) throw new FsCorrupt(`${guestPath}: this directory is reached twice (a directory loop in the file system)`);
      seen.add(key);
      await visit({ kind: 'dir', path: rel, entry });
      for (const child of await fs.list(node, guestPath || '/')) {
        await go(child.node, child.entry, rel ? `${rel}/${child.entry.name}` : child.entry.name, `${guestPath}/${child.entry.name}`, depth + 1);
      }
      await visit({ kind: 'dirEnd', path: rel, entry });
    } else if (entry.type === 'file') {
      const ranges = async () => (await fs.dataRanges?.(node, guestPath)) ?? [{ offset: 0, length: entry.size }];
      await visit({ kind: 'file', path: rel, entry, read: (o, l) => fs.read(node, o, l, guestPath), ranges });
    } else await visit({ kind: entry.type, path: rel, entry });
  };
  await go(top.node, top.entry, topName, parts.length ? `/${parts.join('/')}` : '', 0);
}
