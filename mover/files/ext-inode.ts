/** An ext inode as read from its table: its fields, times in milliseconds, and the data it holds itself (i_block, inline data). */
import { FsCorrupt } from './block-reader.ts';
import type { Entry, EntryType } from './fs-types.ts';
import { checkInode, inodeSeed } from './ext-csum.ts';

export const FLAG = { INDEX: 0x1000, ENCRYPT: 0x800, HUGE_FILE: 0x40000, EXTENTS: 0x80000, INLINE_DATA: 0x10000000 };

export interface ExtInode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  atimeMs: number;
  mtimeMs: number;
  flags: number;
  blocks512: number;
  fileAcl: number;
  /** i_block: 60 bytes (block map, extent root, fast symlink target or inline data). */
  iblock: Buffer;
  /** The `system.data` attribute of an inline-data inode (the data past the first 60 bytes). */
  inlineMore?: Buffer;
  /** The seed of its directory blocks' checksums (metadata_csum). */
  csumSeed?: number;
}

export function typeOf(mode: number): EntryType {
  switch (mode & 0xf000) {
    case 0x8000:
      return 'file';
    case 0x4000:
      return 'dir';
    case 0xa000:
      return 'symlink';
    default:
      return 'other';
  }
}

/** Seconds (32 bits, signed) with the extra field's epoch bits and nanoseconds, as milliseconds. */
function timeMs(seconds: number, extra: number | undefined): number {
  if (extra === undefined) return seconds * 1000;
  const epoch = extra & 3;
  const nanos = extra >>> 2;
  return (seconds + epoch * 2 ** 32) * 1000 + Math.floor(nanos / 1e6);
}

/** Decodes inode `ino` from its `inodeSize` bytes `b`, checking its checksum with metadata_csum (`csumSeed`). */
export function decodeInode(b: Buffer, ino: number, inodeSize: number, csumSeed: number | undefined): ExtInode {
  const extra = inodeSize > 128 ? b.readUInt16LE(128) : 0;
  if (extra > inodeSize - 128) throw new FsCorrupt(`ext inode ${ino}: extra size ${extra} overruns the ${inodeSize}-byte inode`);
  const iseed = csumSeed === undefined ? undefined : inodeSeed(csumSeed, ino, b.readUInt32LE(100));
  if (iseed !== undefined) checkInode(iseed, ino, b, extra);
  const x = (at: number) => (128 + extra >= at + 4 ? b.readUInt32LE(at) : undefined);
  const mode = b.readUInt16LE(0);
  const flags = b.readUInt32LE(32);
  const sizeHigh = typeOf(mode) === 'file' ? b.readUInt32LE(108) : 0;
  const node: ExtInode = {
    ino,
    mode,
    flags,
    uid: b.readUInt16LE(2) | (b.readUInt16LE(120) << 16),
    gid: b.readUInt16LE(24) | (b.readUInt16LE(122) << 16),
    size: b.readUInt32LE(4) + sizeHigh * 2 ** 32,
    atimeMs: timeMs(b.readInt32LE(8), x(140)),
    mtimeMs: timeMs(b.readInt32LE(16), x(136)),
    blocks512: b.readUInt32LE(28) + b.readUInt16LE(116) * 2 ** 32,
    fileAcl: b.readUInt32LE(104) + b.readUInt16LE(118) * 2 ** 32,
    iblock: Buffer.from(b.subarray(40, 100)),
    ...(iseed !== undefined ? { csumSeed: iseed } : {}),
  };
  if (!Number.isSafeInteger(node.size)) throw new FsCorrupt(`ext inode ${ino}: size ${node.size} is not a safe integer`);
  if (flags & FLAG.INLINE_DATA) node.inlineMore = inlineAttribute(b, 128 + extra, ino);
  return node;
}

/** The `system.data` value among the in-inode extended attributes (empty when absent). */
function inlineAttribute(b: Buffer, start: number, ino: number): Buffer {
  if (start + 4 > b.length || b.readUInt32LE(start) !== 0xea020000) return Buffer.alloc(0);
  const first = start + 4;
  for (let at = first; at + 16 <= b.length; ) {
    const nameLen = b[at]!;
    const index = b[at + 1]!;
    const valueOffs = b.readUInt16LE(at + 2);
    const valueSize = b.readUInt32LE(at + 8);
    if (nameLen === 0 && index === 0 && valueOffs === 0 && b.readUInt32LE(at + 4) === 0) break;
    if (at + 16 + nameLen > b.length) throw new FsCorrupt(`ext inode ${ino}: extended attribute name overruns the inode`);
    if (index === 7 && b.toString('latin1', at + 16, at + 16 + nameLen) === 'data') {
      if (first + valueOffs + valueSize > b.length)
        throw new FsCorrupt(`ext inode ${ino}: inline data attribute (${valueSize} bytes at ${valueOffs}) overruns the inode`);
      return Buffer.from(b.subarray(first + valueOffs, first + valueOffs + valueSize));
    }
    at += (16 + nameLen + 3) & ~3;
  }
  return Buffer.alloc(0);
}

export function entryOf(name: string, n: ExtInode, target?: string): Entry {
  return {
    name,
    type: typeOf(n.mode),
    size: n.size,
    mode: n.mode & 0o7777,
    uid: n.uid,
    gid: n.gid,
    mtimeMs: n.mtimeMs,
    atimeMs: n.atimeMs,
    ...(target !== undefined ? { target } : {}),
  };
}
