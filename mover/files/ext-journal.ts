/**
 * The committed state of an ext3/4 file system that was not cleanly unmounted: a backup of
 * a running guest is crash-consistent, so its file system may hold transactions that the
 * jbd2 journal committed and the kernel had not yet written back to their home blocks.
 * Like the kernel's recovery (fs/jbd2/recovery.c), this scans the log from the journal
 * superblock's start: descriptor blocks tag the file-system blocks whose new contents
 * follow them, revoke blocks cancel earlier copies, a commit block (checksum verified when
 * the journal has checksums) completes a transaction, and the first block out of sequence
 * ends the log; a transaction without its commit is ignored. Nothing is written: the result
 * maps each replayed file-system block to where its newest committed copy lies in the
 * journal, and reads of those blocks are served from there. Memory is one map entry per
 * replayed block (bounded by the journal's length), not the blocks' bytes.
 * Runs in the sandboxed child.
 */
import { FsCorrupt, view } from './block-reader.ts';
import { crc32c } from './crc32c.ts';

const MAGIC = 0xc03b3998;
const TYPE = { DESCRIPTOR: 1, COMMIT: 2, SB_V1: 3, SB_V2: 4, REVOKE: 5 };
const INCOMPAT = { REVOKE: 0x1, BIT64: 0x2, ASYNC_COMMIT: 0x4, CSUM_V2: 0x8, CSUM_V3: 0x10, FAST_COMMIT: 0x20 };
const TAG = { ESCAPE: 1, SAME_UUID: 2, LAST: 8 };

/** Where the newest committed copy of a file-system block is in the journal. */
export interface Replayed {
  /** The journal's block (logical, within the journal) holding it. */
  journalBlock: number;
  /** The copy's first 4 bytes were the journal magic and were zeroed in the log: put it back. */
  escaped: boolean;
}

export interface JournalReplay {
  /** File-system block → its committed copy. */
  blocks: Map<number, Replayed>;
  /** Transactions replayed (committed ones found in the log). */
  transactions: number;
}

/**
 * Scans the journal, whose logical block `j` is read by `readJournal(j)` (a block of the
 * file system's size), and answers what to replay. Throws FsCorrupt naming the journal
 * structure that makes no sense.
 */
export async function scanJournal(readJournal: (j: number) => Promise<Buffer>, journalBlocks: number, blockSize: number): Promise<JournalReplay> {
  const sb = await readJournal(0);
  if (sb.readUInt32BE(0) !== MAGIC) throw new FsCorrupt('ext journal: its superblock (journal block 0) has no jbd2 magic');
  const sbType = sb.readUInt32BE(4);
  if (sbType !== TYPE.SB_V1 && sbType !== TYPE.SB_V2) throw new FsCorrupt(`ext journal: its superblock has block type ${sbType}, not a journal superblock`);
  if (sb.readUInt32BE(12) !== blockSize) throw new FsCorrupt(`ext journal: block size ${sb.readUInt32BE(12)} differs from the file system's ${blockSize}`);
  const maxLen = sb.readUInt32BE(16);
  const first = sb.readUInt32BE(20);
  let sequence = sb.readUInt32BE(24);
  const start = sb.readUInt32BE(28);
  const out: JournalReplay = { blocks: new Map(), transactions: 0 };
  if (start === 0) return out; // clean: nothing to replay
  if (maxLen > journalBlocks || first < 1 || first >= maxLen || start < first || start >= maxLen) {
    throw new FsCorrupt(
      `ext journal: its superblock says log blocks ${first}..${maxLen - 1} starting at ${start}, which does not fit the journal's ${journalBlocks} blocks`,
    );
  }
  const incompat = sbType === TYPE.SB_V2 ? sb.readUInt32BE(0x28) : 0;
  if (incompat & INCOMPAT.FAST_COMMIT)
    throw new FsCorrupt('ext journal: it has fast commits (fast_commit), which this reader does not replay; the file system was not cleanly unmounted');
  const csum3 = (incompat & INCOMPAT.CSUM_V3) !== 0;
  const csum = csum3 || (incompat & INCOMPAT.CSUM_V2) !== 0;
  const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
  const tagBytes = csum3 ? 16 : (bit64 ? 12 : 8) + (incompat & INCOMPAT.CSUM_V2 ? 2 : 0);
  const seed = csum ? crc32c(0xffffffff, sb.subarray(0x30, 0x40)) : 0;

  const next = (j: number) => (j + 1 >= maxLen ? first : j + 1);
  const revoked = new Map<number, number>();
  const committed: { sequence: number; tags: { fsBlock: number; at: Replayed }[] }[] = [];
  let pending: { fsBlock: number; at: Replayed }[] = [];
  let pendingRevokes: number[] = [];
  let at = start;
  // Every log block is visited at most once: a log longer than the journal is a loop.
  for (let visited = 0; visited < maxLen; visited++) {
    const b = await readJournal(at);
    if (b.readUInt32BE(0) !== MAGIC || b.readUInt32BE(8) !== sequence) break;
    const type = b.readUInt32BE(4);
    if (type === TYPE.DESCRIPTOR) {
      const end = blockSize - (csum ? 4 : 0);
      let data = at;
      for (let t = 12; t + tagBytes <= end; ) {
        const lo = b.readUInt32BE(t);
        const flags = csum3 ? b.readUInt32BE(t + 4) : b.readUInt16BE(t + 6);
        const hi = bit64 ? b.readUInt32BE(t + 8) : 0;
        data = next(data);
        visited++;
        pending.push({ fsBlock: hi * 2 ** 32 + lo, at: { journalBlock: data, escaped: (flags & TAG.ESCAPE) !== 0 } });
        t += tagBytes + (flags & TAG.SAME_UUID ? 0 : 16);
        if (flags & TAG.LAST) break;
      }
      at = next(data);
    } else if (type === TYPE.REVOKE) {
      const count = b.readUInt32BE(12);
      const size = bit64 ? 8 : 4;
      if (count < 16 || count > blockSize) throw new FsCorrupt(`ext journal: revoke block at journal block ${at} says ${count} bytes, outside its block`);
      for (let r = 16; r + size <= count; r += size) pendingRevokes.push(bit64 ? b.readUInt32BE(r) * 2 ** 32 + b.readUInt32BE(r + 4) : b.readUInt32BE(r));
      at = next(at);
    } else if (type === TYPE.COMMIT) {
      // A commit whose checksum fails ends the log, as in the kernel (a torn last write).
      if (csum && !commitChecksumOk(b, seed)) break;
      for (const r of pendingRevokes) revoked.set(r, sequence);
      committed.push({ sequence, tags: pending });
      pending = [];
      pendingRevokes = [];
      sequence = (sequence + 1) >>> 0;
      at = next(at);
    } else {
      break;
    }
  }
  // A block is replayed from the newest committed copy that no revoke at or after its transaction cancels.
  for (const t of committed) {
    for (const tag of t.tags) {
      const r = revoked.get(tag.fsBlock);
      if (r !== undefined && (r - t.sequence) >>> 0 < 2 ** 31) continue;
      out.blocks.set(tag.fsBlock, tag.at);
    }
  }
  out.transactions = committed.length;
  return out;
}

function commitChecksumOk(b: Buffer, seed: number): boolean {
  const stored = b.readUInt32BE(16);
  const copy = Buffer.from(b);
  copy.writeUInt32BE(0, 16);
  return crc32c(seed, copy) === stored;
}

/** Puts back the journal magic an escaped block had in its first 4 bytes. */
export function unescape(b: Buffer): Buffer {
  const out = Buffer.from(view(b));
  out.writeUInt32BE(MAGIC, 0);
  return out;
}
