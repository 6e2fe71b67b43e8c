/**
 * ext4's metadata checksums (`metadata_csum`): CRC-32C of the superblock, of each group
 * descriptor (low 16 bits), of each inode (seeded by its number and generation) and of each
 * directory leaf block (its tail entry), computed as the kernel does (fs/ext4/super.c,
 * inode.c, namei.c). A mismatch is an FsCorrupt naming the structure, so a damaged image is
 * refused rather than read as something it is not. Not checked: extent blocks, htree index
 * blocks, bitmaps (this reader never trusts those for anything but reading a file's blocks).
 * Runs in the sandboxed child.
 */
import { FsCorrupt } from './block-reader.ts';
import { crc32c, le32 } from './crc32c.ts';

const ZERO16 = Buffer.alloc(2);
const INCOMPAT_CSUM_SEED = 0x2000;

/** Verifies the superblock's own checksum and answers the file system's checksum seed. */
export function superblockSeed(sb: Buffer): number {
  const stored = sb.readUInt32LE(0x3fc);
  const got = crc32c(0xffffffff, sb.subarray(0, 0x3fc));
  if (got !== stored)
    throw new FsCorrupt(`ext superblock: metadata checksum mismatch (stored ${hex(stored)}, computed ${hex(got)}): the superblock is damaged`);
  return sb.readUInt32LE(96) & INCOMPAT_CSUM_SEED ? sb.readUInt32LE(0x270) : crc32c(0xffffffff, sb.subarray(0x68, 0x78));
}

/** Group descriptor `group` (its `size` bytes). */
export function checkGroupDesc(seed: number, group: number, desc: Buffer): void {
  let c = crc32c(seed, le32(group));
  c = crc32c(c, desc.subarray(0, 0x1e));
  c = crc32c(c, ZERO16);
  if (desc.length > 0x20) c = crc32c(c, desc.subarray(0x20));
  const stored = desc.readUInt16LE(0x1e);
  if ((c & 0xffff) !== stored)
    throw new FsCorrupt(
      `ext group descriptor ${group}: metadata checksum mismatch (stored ${hex(stored)}, computed ${hex(c & 0xffff)}): the group descriptor is damaged`,
    );
}

/** The seed of an inode's own checksums (inode and its directory blocks). */
export const inodeSeed = (seed: number, ino: number, generation: number) => crc32c(crc32c(seed, le32(ino)), le32(generation));

/** Inode `ino` (its raw `inodeSize` bytes; `extra` is i_extra_isize). */
export function checkInode(iseed: number, ino: number, raw: Buffer, extra: number): void {
  let c = crc32c(iseed, raw.subarray(0, 0x7c));
  c = crc32c(c, ZERO16);
  c = crc32c(c, raw.subarray(0x7e, 128));
  const hiFits = raw.length > 128 && 128 + extra >= 0x84;
  if (raw.length > 128) {
    c = crc32c(c, raw.subarray(128, 0x82));
    if (hiFits) c = crc32c(c, ZERO16);
    c = crc32c(c, raw.subarray(hiFits ? 0x84 : 0x82));
  }
  const stored = raw.readUInt16LE(0x7c) + (hiFits ? raw.readUInt16LE(0x82) * 0x10000 : 0);
  const want = hiFits ? c : c & 0xffff;
  if (want !== stored) throw new FsCorrupt(`ext inode ${ino}: metadata checksum mismatch (stored ${hex(stored)}, computed ${hex(want)}): the inode is damaged`);
}

/**
 * A directory block of inode `ino`: a leaf ends in a 12-byte tail entry (inode 0, length 12,
 * file type 0xDE) holding the checksum of the bytes before it. A block without one must be an
 * htree index block of an indexed directory (`indexed`).
 */
export function checkDirBlock(iseed: number, block: Buffer, ino: number, path: string, indexed: boolean): void {
  const t = block.length - 12;
  const isTail = block.readUInt32LE(t) === 0 && block.readUInt16LE(t + 4) === 12 && block[t + 6] === 0 && block[t + 7] === 0xde;
  if (!isTail) {
    if (indexed) return;
    throw new FsCorrupt(
      `ext: directory ${path} (inode ${ino}): a block has no checksum tail on a file system with metadata checksums: the directory block is damaged`,
    );
  }
  const got = crc32c(iseed, block.subarray(0, t));
  const stored = block.readUInt32LE(t + 8);
  if (got !== stored)
    throw new FsCorrupt(
      `ext: directory ${path} (inode ${ino}): directory block metadata checksum mismatch (stored ${hex(stored)}, computed ${hex(got)}): the directory block is damaged`,
    );
}

const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;
