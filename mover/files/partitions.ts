/**
 * Partition tables of a disk: GPT (primary header and entries checked by CRC-32, the
 * backup header at the disk's end checked too; a damaged primary falls back to a sound
 * backup) and MBR with its extended partition's chain of logical partitions. Numbering is
 * Linux's: GPT entries by slot (1-based), MBR primaries 1-4 and logicals from 5.
 *
 * Bounded against hostile tables: at most 256 GPT entries' worth of array (entry count x
 * size at most 1 MiB) and 128 logical partitions, a chain that loops or leaves the
 * extended partition is an error. Runs in the sandboxed child.
 */
import { crc32 } from 'node:zlib';
import { FsCorrupt, view, type BlockReader } from './block-reader.ts';

export interface Partition {
  /** Linux's partition number. */
  number: number;
  offset: number;
  size: number;
  /** GPT: the type GUID; MBR: the type byte as two hex digits (e.g. '83'). */
  type: string;
  name?: string;
}

export interface PartitionTable {
  scheme: 'gpt' | 'mbr';
  partitions: Partition[];
  /** What was wrong but did not stop the reading (e.g. a damaged backup GPT header). */
  warnings: string[];
}

const SECTOR = 512;
const MAX_LOGICAL = 128;
const MAX_ENTRY_BYTES = 1024 * 1024;

function guid(b: Buffer, at: number): string {
  const h = (from: number, to: number, le: boolean) => {
    const x = b.subarray(at + from, at + to);
    return Buffer.from(le ? [...x].reverse() : x).toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`.toUpperCase();
}

interface GptHeader {
  myLba: bigint;
  alternateLba: bigint;
  entriesLba: bigint;
  count: number;
  entrySize: number;
  entriesCrc: number;
}

/** The GPT header at `lba`, or why it is not a sound one. */
async function gptHeader(disk: BlockReader, lba: bigint): Promise<GptHeader | string> {
  const at = Number(lba) * SECTOR;
  if (at < 0 || at + SECTOR > disk.size) return `its LBA ${lba} lies outside the ${disk.size}-byte disk`;
  const b = view(await disk.read(at, SECTOR));
  if (b.toString('latin1', 0, 8) !== 'EFI PART') return `no "EFI PART" signature at LBA ${lba}`;
  const size = b.readUInt32LE(12);
  if (size < 92 || size > SECTOR) return `header size ${size} is not 92-512`;
  const h = Buffer.from(b.subarray(0, size));
  const crc = h.readUInt32LE(16);
  h.writeUInt32LE(0, 16);
  if (crc32(h) !== crc) return `header CRC-32 ${crc.toString(16)} does not match its bytes`;
  const count = b.readUInt32LE(80);
  const entrySize = b.readUInt32LE(84);
  if (entrySize < 128 || entrySize % 8 !== 0 || count * entrySize > MAX_ENTRY_BYTES) return `entry array of ${count} x ${entrySize} bytes is not a sound size`;
  return {
    myLba: b.readBigUInt64LE(24),
    alternateLba: b.readBigUInt64LE(32),
    entriesLba: b.readBigUInt64LE(72),
    count,
    entrySize,
    entriesCrc: b.readUInt32LE(88),
  };
}

async function gptEntries(disk: BlockReader, h: GptHeader): Promise<Buffer | string> {
  const at = Number(h.entriesLba) * SECTOR;
  const bytes = h.count * h.entrySize;
  if (at < 0 || at + bytes > disk.size) return `entry array at LBA ${h.entriesLba} lies outside the disk`;
  const b = view(await disk.read(at, bytes));
  if (crc32(b) !== h.entriesCrc) return `entry array CRC-32 does not match (${crc32(b).toString(16)}, header says ${h.entriesCrc.toString(16)})`;
  return b;
}

async function readGpt(disk: BlockReader): Promise<PartitionTable | undefined> {
  const lastLba = BigInt(Math.floor(disk.size / SECTOR) - 1);
  const primary = await gptHeader(disk, 1n);
  if (typeof primary === 'string' && primary.startsWith('no "EFI PART"')) return undefined;
  const warnings: string[] = [];
  const backupLba = typeof primary === 'string' ? lastLba : primary.alternateLba;
  const backup = await gptHeader(disk, backupLba);
  let use: GptHeader | undefined;
  let entries: Buffer | undefined;
  if (typeof primary !== 'string') {
    const e = await gptEntries(disk, primary);
    if (typeof e === 'string') warnings.push(`primary GPT: ${e}`);
    else {
      use = primary;
      entries = e;
    }
  } else warnings.push(`primary GPT header: ${primary}`);
  if (typeof backup === 'string') warnings.push(`backup GPT header: ${backup}`);
  else {
    const e = await gptEntries(disk, backup);
    if (typeof e === 'string') warnings.push(`backup GPT: ${e}`);
    else if (!use) {
      use = backup;
      entries = e;
      warnings.push('read the partitions from the backup GPT');
    } else if (!e.equals(entries!)) warnings.push("backup GPT entries differ from the primary's: read the primary's");
    if (use === primary && backup.myLba !== primary.alternateLba)
      warnings.push(`backup GPT header says it is at LBA ${backup.myLba}, the primary says ${primary.alternateLba}`);
  }
  if (!use || !entries) throw new FsCorrupt(`the disk has a GPT whose primary and backup are both damaged: ${warnings.join('; ')}`);
  const partitions: Partition[] = [];
  for (let i = 0; i < use.count; i++) {
    const at = i * use.entrySize;
    const type = guid(entries, at);
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const first = entries.readBigUInt64LE(at + 32);
    const last = entries.readBigUInt64LE(at + 40);
    if (last < first || last > lastLba)
      throw new FsCorrupt(`GPT partition ${i + 1}: sectors ${first}-${last} are not within the disk's ${lastLba + 1n} sectors`);
    const name = entries.toString('utf16le', at + 56, at + 128).replace(/\0.*$/s, '');
    partitions.push({ number: i + 1, offset: Number(first) * SECTOR, size: Number(last - first + 1n) * SECTOR, type, ...(name ? { name } : {}) });
  }
  return { scheme: 'gpt', partitions, warnings };
}

interface MbrEntry {
  type: number;
  start: number;
  sectors: number;
}

function mbrEntries(b: Buffer, where: string): MbrEntry[] | undefined {
  if (b[510] !== 0x55 || b[511] !== 0xaa) return undefined;
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const at = 446 + i * 16;
    const status = b[at]!;
    if (status !== 0 && status !== 0x80) throw new FsCorrupt(`${where}: entry ${i + 1} has boot flag 0x${status.toString(16)} (only 0x00 and 0x80 are valid)`);
    out.push({ type: b[at + 4]!, start: b.readUInt32LE(at + 8), sectors: b.readUInt32LE(at + 12) });
  }
  return out;
}

const isExtended = (t: number) => t === 0x05 || t === 0x0f || t === 0x85;
const hex = (t: number) => t.toString(16).padStart(2, '0');

async function readMbr(disk: BlockReader, sector0: Buffer): Promise<PartitionTable | undefined> {
  const primaries = mbrEntries(sector0, 'MBR');
  if (!primaries) return undefined;
  const sectors = Math.floor(disk.size / SECTOR);
  const within = (start: number, n: number, what: string) => {
    if (n === 0 || start === 0 || start + n > sectors) throw new FsCorrupt(`${what}: sectors ${start}+${n} are not within the disk's ${sectors} sectors`);
  };
  const partitions: Partition[] = [];
  let extended: MbrEntry | undefined;
  primaries.forEach((e, i) => {
    if (e.type === 0) return;
    within(e.start, e.sectors, `MBR partition ${i + 1}`);
    if (isExtended(e.type)) {
      if (extended) throw new FsCorrupt('MBR has two extended partitions');
      extended = e;
    } else partitions.push({ number: i + 1, offset: e.start * SECTOR, size: e.sectors * SECTOR, type: hex(e.type) });
  });
  if (extended) {
    const seen = new Set<number>();
    let ebr = extended.start;
    for (let n = 5; ; n++) {
      if (seen.has(ebr)) throw new FsCorrupt(`MBR extended partition: the chain of logical partitions loops back to sector ${ebr}`);
      if (seen.size >= MAX_LOGICAL) throw new FsCorrupt(`MBR extended partition: more than ${MAX_LOGICAL} logical partitions`);
      seen.add(ebr);
      const [logical, next] = mbrEntries(view(await disk.read(ebr * SECTOR, SECTOR)), `extended boot record at sector ${ebr}`) ?? [];
      if (!logical) throw new FsCorrupt(`extended boot record at sector ${ebr} has no 55AA signature`);
      if (logical.type !== 0) {
        within(ebr + logical.start, logical.sectors, `logical partition ${n}`);
        if (ebr + logical.start + logical.sectors > extended.start + extended.sectors)
          throw new FsCorrupt(`logical partition ${n} ends past its extended partition`);
        partitions.push({ number: n, offset: (ebr + logical.start) * SECTOR, size: logical.sectors * SECTOR, type: hex(logical.type) });
      }
      if (!next || next.type === 0 || next.start === 0) break;
      ebr = extended.start + next.start;
      within(ebr, 1, `extended boot record after logical partition ${n}`);
    }
  }
  return { scheme: 'mbr', partitions, warnings: [] };
}

/**
 * The disk's partition table, or undefined when it has none (a file system on the whole
 * disk, or nothing recognisable). A protective MBR (type 0xEE) means GPT.
 */
export async function readPartitionTable(disk: BlockReader): Promise<PartitionTable | undefined> {
  if (disk.size < 2 * SECTOR) return undefined;
  const gpt = await readGpt(disk);
  if (gpt) return gpt;
  const sector0 = view(await disk.read(0, SECTOR));
  const mbr = await readMbr(disk, sector0);
  if (mbr?.partitions.some((p) => p.type === 'ee'))
    throw new FsCorrupt("the disk has a protective MBR (type EE) but no readable GPT header at LBA 1 or at the disk's end");
  return mbr;
}
