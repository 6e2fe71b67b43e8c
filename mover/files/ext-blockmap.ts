/**
 * ext2/3 block maps (12 direct pointers, then single, double and triple indirect blocks):
 * the stored runs of a whole file, and the block behind one file block. Runs in the
 * sandboxed child.
 */
import { FsCorrupt } from './block-reader.ts';
import { LIMITS } from './fs-types.ts';
import type { ExtInode } from './ext-inode.ts';

/** A run of a file's blocks: file block `logical` onwards is stored at `physical` onwards. */
export interface Extent {
  logical: number;
  physical: number;
  length: number;
  unwritten: boolean;
}

export class BlockMap {
  private readonly indirectCache = new Map<number, Buffer>();
  private readonly blockSize: number;
  private readonly blocksCount: number;
  private readonly readBlock: (block: number, what: string) => Promise<Buffer>;

  constructor(blockSize: number, blocksCount: number, readBlock: (block: number, what: string) => Promise<Buffer>) {
    this.blockSize = blockSize;
    this.blocksCount = blocksCount;
    this.readBlock = readBlock;
  }

  /**
   * Every stored run of an ext2/3 block map, walking the indirect blocks and skipping the
   * holes at every level, so a huge sparse file costs its indirect blocks, not its size.
   */
  async extents(n: ExtInode, path: string): Promise<Extent[]> {
    const per = this.blockSize / 4;
    const lastBlock = Math.ceil(n.size / this.blockSize);
    const out: Extent[] = [];
    const add = (logical: number, physical: number) => {
      if (physical + 1 > this.blocksCount)
        throw new FsCorrupt(
          `ext: ${path} (inode ${n.ino}): file block ${logical} points to block ${physical}, outside the file system's ${this.blocksCount} blocks`,
        );
      const prev = out[out.length - 1];
      if (prev && prev.logical + prev.length === logical && prev.physical + prev.length === physical) prev.length++;
      else {
        if (out.length >= LIMITS.extents) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}) has more than ${LIMITS.extents} runs of blocks`);
        out.push({ logical, physical, length: 1, unwritten: false });
      }
    };
    const seen = new Set<number>();
    // `level` 0: a data block; 1-3: an indirect block covering per^level blocks from `first`.
    const visit = async (block: number, level: number, first: number): Promise<void> => {
      if (block === 0 || first >= lastBlock) return;
      if (level === 0) return add(first, block);
      if (seen.has(block)) throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): indirect block ${block} is used twice in its block map (a loop)`);
      seen.add(block);
      const b = await this.readBlock(block, `${path} (inode ${n.ino}) indirect block`);
      const span = per ** (level - 1);
      for (let i = 0; i < per; i++) await visit(b.readUInt32LE(i * 4), level - 1, first + i * span);
    };
    for (let i = 0; i < 12; i++) await visit(n.iblock.readUInt32LE(i * 4), 0, i);
    await visit(n.iblock.readUInt32LE(48), 1, 12);
    await visit(n.iblock.readUInt32LE(52), 2, 12 + per);
    await visit(n.iblock.readUInt32LE(56), 3, 12 + per + per * per);
    return out;
  }

  /** ext2/3 block map: the physical block of logical block `l`, 0 for a hole. */
  async block(n: ExtInode, l: number, path: string): Promise<number> {
    const per = this.blockSize / 4;
    const ptr = (i: number) => n.iblock.readUInt32LE(i * 4);
    const through = async (block: number, index: number): Promise<number> => {
      if (block === 0) return 0;
      let b = this.indirectCache.get(block);
      if (!b) {
        b = await this.readBlock(block, `${path} (inode ${n.ino}) indirect block`);
        if (this.indirectCache.size > 1024) this.indirectCache.clear();
        this.indirectCache.set(block, b);
      }
      return b.readUInt32LE(index * 4);
    };
    if (l < 12) return ptr(l);
    l -= 12;
    if (l < per) return through(ptr(12), l);
    l -= per;
    if (l < per * per) return through(await through(ptr(13), Math.floor(l / per)), l % per);
    l -= per * per;
    if (l < per * per * per) return through(await through(await through(ptr(14), Math.floor(l / (per * per))), Math.floor(l / per) % per), l % per);
    throw new FsCorrupt(`ext: ${path} (inode ${n.ino}): file block beyond the triple-indirect range`);
  }
}
