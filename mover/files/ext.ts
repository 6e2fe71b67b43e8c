/**
 * A read-only ext2/3/4 reader: superblock and group descriptors (32- and 64-bit), inodes
 * of any size with nanosecond times, extent trees and ext2/3 block maps (direct, indirect,
 * double and triple), linear directories (htree directories are read linearly: their index
 * blocks look like empty entries), inline data (files and directories in the inode and its
 * `system.data` attribute), fast and slow symbolic links, sparse files (holes and
 * unwritten extents read as zeros). A file system that was not cleanly unmounted (a
 * crash-consistent backup of a running guest) is read in its committed state: the jbd2
 * journal's committed transactions are replayed into the view of the blocks read, in memory
 * (ext-journal.ts). With `metadata_csum`, the superblock, group descriptors, inodes and
 * directory blocks are checked against their checksums (ext-csum.ts).
 *
 * Refuses what it cannot read truthfully (compression, META_BG, encrypted directories,
 * a journal device) with the feature named. Every number from the image is checked before
 * it is used: a block outside the file system, an extent tree deeper than 5 or looping, a
 * directory entry whose length is 0 or overruns its block are errors naming the inode.
 * Runs in the sandboxed child.
 */
import { FsCorrupt, view, type BlockReader } from './block-reader.ts';
import { LIMITS, type Entry, type FileSystem } from './fs-types.ts';
import { checkDirBlock, checkGroupDesc, superblockSeed } from './ext-csum.ts';
import { scanJournal, unescape, type Replayed } from './ext-journal.ts';
import { BlockMap, type Extent } from './ext-blockmap.ts';
import { decodeInode, entryOf, FLAG, typeOf, type ExtInode } from './ext-inode.ts';

const INCOMPAT = { COMPRESSION: 0x1, FILETYPE: 0x2, JOURNAL_DEV: 0x8, META_BG: 0x10, EXTENTS: 0x40, BIT64: 0x80, DIRDATA: 0x1000, INLINE_DATA: 0x8000 };
const ROOT_INO = 2;
const COMPAT_HAS_JOURNAL = 0x4;
const INCOMPAT_RECOVER = 0x4;
const RO_COMPAT_METADATA_CSUM = 0x400;

export class ExtFs implements FileSystem<ExtInode> {
  readonly kind: string;
  private readonly blockSize: number;
  private readonly blocksCount: number;
  private readonly inodesCount: number;
  private readonly inodesPerGroup: number;
  private readonly inodeSize: number;
  private readonly descSize: number;
  private readonly firstDataBlock: number;
  private readonly fileType: boolean;
  private readonly descCache = new Map<number, number>();
  private readonly extentCache = new WeakMap<ExtInode, Extent[]>();
  private readonly blockMaps: BlockMap;
  /** metadata_csum: the file system's checksum seed. */
  private readonly csumSeed: number | undefined;
  /** Blocks whose committed contents are in the journal, and where (empty when clean). */
  private replay = new Map<number, Replayed>();
  private journal: ExtInode | undefined;
  /** Committed transactions replayed from the journal when opened. */
  replayedTransactions = 0;

  private readonly disk: BlockReader;

  private constructor(disk: BlockReader, sb: Buffer) {
    this.disk = disk;
    const logBlock = sb.readUInt32LE(24);
    if (logBlock > 6) throw new FsCorrupt(`ext superblock: block size 2^${10 + logBlock} is not 1 KiB-64 KiB`);
    this.blockSize = 1024 << logBlock;
    const incompat = sb.readUInt32LE(96);
    const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
    this.blocksCount = sb.readUInt32LE(4) + (bit64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    this.inodesCount = sb.readUInt32LE(0);
    this.inodesPerGroup = sb.readUInt32LE(40);
    this.firstDataBlock = sb.readUInt32LE(20);
    const rev = sb.readUInt32LE(76);
    this.inodeSize = rev === 0 ? 128 : sb.readUInt16LE(88);
    this.descSize = bit64 ? sb.readUInt16LE(254) : 32;
    this.fileType = (incompat & INCOMPAT.FILETYPE) !== 0;
    const refuse: string[] = [];
    if (incompat & INCOMPAT.COMPRESSION) refuse.push('compression');
    if (incompat & INCOMPAT.JOURNAL_DEV) refuse.push('journal_dev (an external journal device, not a file system)');
    if (incompat & INCOMPAT.META_BG) refuse.push('meta_bg');
    if (incompat & INCOMPAT.DIRDATA) refuse.push('dirdata');
    if (refuse.length) throw new FsCorrupt(`ext file system uses ${refuse.join(', ')}, which this reader does not support`);
    if (this.inodeSize < 128 || this.inodeSize > this.blockSize || (this.inodeSize & (this.inodeSize - 1)) !== 0)
      throw new FsCorrupt(`ext superblock: inode size ${this.inodeSize} is not a power of two from 128 to the block size`);
    if (bit64 && (this.descSize < 64 || this.descSize > 1024 || (this.descSize & (this.descSize - 1)) !== 0))
      throw new FsCorrupt(`ext superblock: group descriptor size ${this.descSize} is not a power of two from 64 to 1024`);
    if (this.inodesPerGroup === 0 || this.inodesCount === 0) throw new FsCorrupt('ext superblock: no inodes (inodes per group or inode count is 0)');
    if (this.blocksCount * this.blockSize > disk.size + this.blockSize)
      throw new FsCorrupt(
        `ext superblock: ${this.blocksCount} blocks of ${this.blockSize} bytes do not fit the ${disk.size}-byte partition (truncated image?)`,
      );
    const ro = sb.readUInt32LE(100);
    this.csumSeed = ro & RO_COMPAT_METADATA_CSUM ? superblockSeed(sb) : undefined;
    this.kind = incompat & INCOMPAT.EXTENTS || incompat & 0x200 ? 'ext4' : sb.readUInt32LE(92) & 0x4 ? 'ext3' : ro & 0x8 ? 'ext4' : 'ext2';
    this.blockMaps = new BlockMap(this.blockSize, this.blocksCount, (block, what) => this.readBlocks(block, 1, what));
  }

  /** The ext file system on `disk`, or undefined when its superblock has no ext magic. */
  static async open(disk: BlockReader): Promise<ExtFs | undefined> {
    if (disk.size < 2048) return undefined;
    const sb = view(await disk.read(1024, 1024));
    if (sb.readUInt16LE(56) !== 0xef53) return undefined;
    const fs = new ExtFs(disk, sb);
    const journalIno = sb.readUInt32LE(0xe0);
    if (sb.readUInt32LE(92) & COMPAT_HAS_JOURNAL && sb.readUInt32LE(96) & INCOMPAT_RECOVER && journalIno !== 0) await fs.replayJournal(journalIno);
    return fs;
  }

  /** Reads the journal (inode `ino`) and serves its committed blocks from now on. */
  private async replayJournal(ino: number): Promise<void> {
    const j = await this.inode(ino);
    this.journal = j;
    const blocks = Math.floor(j.size / this.blockSize);
    const r = await scanJournal(
      async (at) => {
        if (at >= blocks) throw new FsCorrupt(`ext journal (inode ${ino}): log block ${at} is past its ${blocks} blocks`);
        const b = await this.read(j, at * this.blockSize, this.blockSize, 'the journal');
        return b ? view(b) : Buffer.alloc(this.blockSize);
      },
      blocks,
      this.blockSize,
    );
    for (const fsBlock of r.blocks.keys())
      if (fsBlock >= this.blocksCount)
        throw new FsCorrupt(`ext journal (inode ${ino}): it logs block ${fsBlock}, outside the file system's ${this.blocksCount} blocks`);
    this.replay = r.blocks;
    this.replayedTransactions = r.transactions;
  }

  private async readBlocks(block: number, count: number, what: string): Promise<Buffer> {
    if (!Number.isSafeInteger(block) || block < 0 || count < 0 || block + count > this.blocksCount)
      throw new FsCorrupt(`${what}: block ${block}+${count} lies outside the file system's ${this.blocksCount} blocks`);
    const b = view(await this.disk.read(block * this.blockSize, count * this.blockSize));
    if (this.replay.size === 0) return b;
    for (let i = 0; i < count; i++) {
      const r = this.replay.get(block + i);
      if (!r) continue;
      // The journal's own blocks are never logged, so this reads the disk as it is.
      const copy = view((await this.read(this.journal!, r.journalBlock * this.blockSize, this.blockSize, 'the journal')) ?? Buffer.alloc(this.blockSize));
      (r.escaped ? unescape(copy) : copy).copy(b, i * this.blockSize);
    }
    return b;
  }

  private async inodeTable(group: number): Promise<number> {
    const hit = this.descCache.get(group);
    if (hit !== undefined) return hit;
    const perBlock = this.blockSize / this.descSize;
    const block = this.firstDataBlock + 1 + Math.floor(group / perBlock);
    const b = await this.readBlocks(block, 1, `group descriptor ${group}`);
    const at = (group % perBlock) * this.descSize;
    if (this.csumSeed !== undefined) checkGroupDesc(this.csumSeed, group, b.subarray(at, at + this.descSize));
    const table = b.readUInt32LE(at + 8) + (this.descSize >= 64 ? b.readUInt32LE(at + 0x28) * 2 ** 32 : 0);
    this.descCache.set(group, table);
    return table;
  }

  async inode(ino: number): Promise<ExtInode> {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.inodesCount)
      throw new FsCorrupt(`ext: inode ${ino} is outside the file system's ${this.inodesCount} inodes`);
    const group = Math.floor((ino - 1) / this.inodesPerGroup);
    const index = (ino - 1) % this.inodesPerGroup;
    const table = await this.inodeTable(group);
    const byteInTable = index * this.inodeSize;
    const block = table + Math.floor(byteInTable / this.blockSize);
    const b = (await this.readBlocks(block, 1, `inode ${ino}`)).subarray(byteInTable % this.blockSize, (byteInTable % this.blockSize) + this.inodeSize);
    return decodeInode(b, ino, this.inodeSize, this.csumSeed);
  }

  nodeId(n: ExtInode): string {
    return `inode ${n.ino}`;
  }

  async root(): Promise<{ node: ExtInode; entry: Entry }> {
    const n = await this.inode(ROOT_INO);
    if (typeOf(n.mode) !== 'dir') throw new FsCorrupt(`ext: the root inode ${ROOT_INO} is not a directory (mode ${n.mode.toString(8)})`);
    return { node: n, entry: entryOf('/', n) };
  }

  async list(dir: ExtInode, path: string): Promise<{ node: ExtInode; entry: Entry }[]> {
    if (typeOf(dir.mode) !== 'dir') throw new FsCorrupt(`ext: ${path} (inode ${dir.ino}) is not a directory`);
    if (dir.flags & FLAG.ENCRYPT) throw new FsCorrupt(`ext: directory ${path} is encrypted (fscrypt); its names cannot be read without the key`);
    if (dir.size > LIMITS.dirBytes)
      throw new FsCorrupt(`ext: directory ${path} (inode ${dir.ino}) claims ${dir.size} bytes, above the ${LIMITS.dirBytes}-byte limit`);
    const raw: { ino: number; name: string }[] = [];
    if (dir.flags & FLAG.INLINE_DATA) {
      // The parent's inode number, then entries in the rest of i_block and in system.data.
      this.parseEntries(dir.iblock.subarray(4), raw, path, dir.ino);
      if (dir.inlineMore?.length) this.parseEntries(dir.inlineMore, raw, path, dir.ino);
    } else {
      const blocks = Math.ceil(dir.size / this.blockSize);
      for (let i = 0; i < blocks; i++) {
        const b = await this.read(dir, i * this.blockSize, this.blockSize, path);
        if (b && dir.csumSeed !== undefined) checkDirBlock(dir.csumSeed, view(b), dir.ino, path, (dir.flags & FLAG.INDEX) !== 0);
        if (b) this.parseEntries(view(b), raw, path, dir.ino);
      }
    }
    const out: { node: ExtInode; entry: Entry }[] = [];
    for (const r of raw) {
      if (r.name === '.' || r.name === '..') continue;
      const n = await this.inode(r.ino);
      out.push({ node: n, entry: entryOf(r.name, n, typeOf(n.mode) === 'symlink' ? await this.readlink(n, `${path}/${r.name}`) : undefined) });
    }
    return out;
  }

  private parseEntries(b: Buffer, out: { ino: number; name: string }[], path: string, ino: number): void {
    for (let at = 0; at + 8 <= b.length; ) {
      const entryIno = b.readUInt32LE(at);
      const recLen = b.readUInt16LE(at + 4);
      const nameLen = this.fileType ? b[at + 6]! : b.readUInt16LE(at + 6);
      if (recLen < 8 || recLen % 4 !== 0 || at + recLen > b.length)
        throw new FsCorrupt(
          `ext: directory ${path} (inode ${ino}): entry at byte ${at} has length ${recLen} (must be a multiple of 4, at least 8, within its block)`,
        );
      if (entryIno !== 0) {
        if (8 + nameLen > recLen) throw new FsCorrupt(`ext: directory ${path} (inode ${ino}): name of ${nameLen} bytes overruns its ${recLen}-byte entry`);
        if (out.length >= LIMITS.dirEntries) throw new FsCorrupt(`ext: directory ${path} has more than ${LIMITS.dirEntries} entries`);
        out.push({ ino: entryIno, name: b.toString('utf8', at + 8, at + 8 + nameLen) });
      }
      at += recLen;
    }
  }

  private async readlink(n: ExtInode, path: string): Promise<string> {
    if (n.size > LIMITS.symlinkBytes) throw new FsCorrupt(`ext: symbolic link ${path} claims a ${n.size}-byte target (limit ${LIMITS.symlinkBytes})`);
    const aclBlocks = n.fileAcl ? this.blockSize / 512 : 0;
    const fast = !(n.flags & (FLAG.EXTENTS | FLAG.INLINE_DATA)) && n.size < 60 && n.blocks512 - aclBlocks <= 0;
    if (fast) return n.iblock.toString('utf8', 0, n.size);
    const b = await this.read(n, 0, n.size, path);
    return b ? Buffer.from(b).toString('utf8') : '';
  }

  async read(n: ExtInode, offset: number, length: number, path: string): Promise<Uint8Array | null> {
    const end = Math.min(n.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    if (n.flags & FLAG.INLINE_DATA) {
      const all = Buffer.concat([n.iblock, n.inlineMore ?? Buffer.alloc(0)]);
      const out = Buffer.alloc(end - offset);
      all.copy(out, 0, offset, Math.min(all.length, end));
      return out;
    }
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    const runs = await this.map(n, first, last - first + 1, path);
    if (runs.length === 0) return null;
    const out = Buffer.alloc((last - first + 1) * bs);
    for (const r of runs) {
      const data = await this.readBlocks(r.physical, r.length, `${path} (inode ${n.ino})`);
      data.copy(out, (r.logical - first) * bs);
    }
    return out.subarray(offset - first * bs, end - first * bs);
  }

  async dataRanges(n: ExtInode, path: string): Promise<{ offset: number; length: number }[] | undefined> {
    if (n.flags & FLAG.INLINE_DATA) return [{ offset: 0, length: n.size }];
    const out: { offset: number; length: number }[] = [];
    for (const e of n.flags & FLAG.EXTENTS ? await this.extents(n, path) : await this.blockMaps.extents(n, path)) {
      if (e.unwritten) continue;
      const offset = e.logical * this.blockSize;
      const length = Math.min(e.length * this.blockSize, n.size - offset);
      if (length <= 0) continue;
      const prev = out[out.length - 1];
      if (prev && prev.offset + prev.length === offset) prev.length += length;
      else out.push({ offset, length });
    }
    return out;
  }

  /** The stored runs of blocks `first`..`first+count-1` of a file (holes and unwritten extents left out). */
  private async map(n: ExtInode, first: number, count: number, path: string): Promise<Extent[]> {
    const out: Extent[] = [];
    if (n.flags & FLAG.EXTENTS) {
      for (const e of await this.extents(n, path)) {
        if (e.unwritten) continue;
        const from = Math.max(first, e.logical);
        const to = Math.min(first + count, e.logical + e.length);
        if (from < to) out.push({ logical: from, physical: e.physical + (from - e.logical), length: to - from, unwritten: false });
      }
      return out;
    }
    for (let l = first; l < first + count; l++) {
      const p = await this.blockMaps.block(n, l, path);
      if (p === 0) continue;
      const prev = out[out.length - 1];
      if (prev && prev.logical + prev.length === l && prev.physical + prev.length === p) prev.length++;
      else out.push({ logical: l, physical: p, length: 1, unwritten: false });
    }
    return out;
  }

  /** Every extent of a file, in logical order, checked (depth, count, overlap, bounds). */
  private async extents(n: ExtInode, path: string): Promise<Extent[]> {
    const hit = this.extentCache.get(n);
    if (hit) return hit;
    const out: Extent[] = [];
    const visited = new Set<number>();
    const walk = async (node: Buffer, depthLeft: number, where: string): Promise<void> => {
      if (node.readUInt16LE(0) !== 0xf30a) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): extent node ${where} has no extent magic`);
      const entries = node.readUInt16LE(2);
      const depth = node.readUInt16LE(6);
      if (depth > LIMITS.extentDepth || (depth !== depthLeft && depthLeft !== -1))
        throw new FsCorrupt(
          `ext: ${path} (inode ${n.ino}): extent node ${where} says depth ${depth}${depthLeft === -1 ? '' : ` where ${depthLeft} was expected`} (at most ${LIMITS.extentDepth})`,
        );
      if (12 + entries * 12 > node.length) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): extent node ${where} lists ${entries} entries, more than fit`);
      for (let i = 0; i < entries; i++) {
        const at = 12 + i * 12;
        if (depth === 0) {
          let len = node.readUInt16LE(at + 4);
          const unwritten = len > 32768;
          if (unwritten) len -= 32768;
          const e = { logical: node.readUInt32LE(at), physical: node.readUInt16LE(at + 6) * 2 ** 32 + node.readUInt32LE(at + 8), length: len, unwritten };
          if (e.physical + e.length > this.blocksCount)
            throw new FsCorrupt(
              `ext: ${path} (inode ${n.ino}): extent at file block ${e.logical} points to blocks ${e.physical}+${e.length}, outside the file system's ${this.blocksCount} blocks`,
            );
          const prev = out[out.length - 1];
          if (prev && e.logical < prev.logical + prev.length)
            throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): extents overlap or are out of order at file block ${e.logical}`);
          if (out.length >= LIMITS.extents) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}) has more than ${LIMITS.extents} extents`);
          out.push(e);
        } else {
          const child = node.readUInt16LE(at + 8) * 2 ** 32 + node.readUInt32LE(at + 4);
          if (visited.has(child)) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): extent tree visits block ${child} twice (a loop)`);
          visited.add(child);
          await walk(await this.readBlocks(child, 1, `${path} (inode ${n.ino}) extent block`), depth - 1, `block ${child}`);
        }
      }
    };
    await walk(n.iblock, -1, 'in the inode');
    this.extentCache.set(n, out);
    return out;
  }
}
