/**
 * Manifest format 3's pieces: a run of a disk's chunks in disk order as fixed-size binary
 * entries, with the table of the packs they are in (spec: REPOSITORY-FORMAT.md, "Manifests,
 * version 3"). Pure encoding; the stored object is this plaintext sealed
 * (`manifest-piece:<key>`), written by writer.ts and read by reader.ts.
 *
 * ```
 * 0   magic "LBMP" (u32)   4 version 3 (u8)   5 reserved (3 bytes)
 * 8   first chunk (u64)   16 entries (u32)   20 packs (u32)
 * 24  packs × (pack id 16 bytes, pack size u32)
 * ..  entries × (chunk id 32 bytes, pack number u32, offset u32, stored size u32)
 * ```
 *
 * A zero chunk's entry has pack number 0xffffffff and every other byte 0.
 */
import { Corrupt } from '../../contracts/errors.ts';
import type { PackRef } from '../format.ts';

const MAGIC = 0x4c424d50; // "LBMP"
export const PIECE_VERSION = 3;
export const PIECE_HEAD_BYTES = 24;
export const PIECE_PACK_BYTES = 16 + 4;
/** Bytes of one chunk's entry. */
export const ENTRY_BYTES = 32 + 4 + 4 + 4;
/** The pack number of a zero chunk. */
export const ZERO = 0xffff_ffff;
/** Entries in a piece at most: 65,536 entries are 2.75 MiB of plaintext. */
export const MAX_PIECE_ENTRIES = 65_536;
/** Packs a piece lists at most (every entry in its own pack). */
const MAX_PIECE_PACKS = MAX_PIECE_ENTRIES;

/** A decoded piece: its chunks `firstChunk` … `firstChunk + count - 1`, read in place from `bytes`. */
export class Piece {
  readonly firstChunk: number;
  readonly count: number;
  readonly packs: readonly PackRef[];
  private readonly bytes: Buffer;
  private readonly entries: number;

  private constructor(bytes: Buffer, firstChunk: number, count: number, packs: PackRef[]) {
    this.bytes = bytes;
    this.firstChunk = firstChunk;
    this.count = count;
    this.packs = packs;
    this.entries = PIECE_HEAD_BYTES + packs.length * PIECE_PACK_BYTES;
  }

  /** Parses and checks a piece's plaintext; `what` names it in errors. */
  static decode(bytes: Buffer, what: string): Piece {
    const bad = (why: string) => new Corrupt(`manifest piece ${what} is inconsistent: ${why}`);
    if (bytes.length < PIECE_HEAD_BYTES) throw bad(`${bytes.length} bytes, shorter than its header`);
    if (bytes.readUInt32BE(0) !== MAGIC) throw bad('no piece header');
    if (bytes[4] !== PIECE_VERSION) throw bad(`version ${bytes[4]}, this reader reads ${PIECE_VERSION}`);
    const firstChunk = bytes.readUInt32BE(8) * 2 ** 32 + bytes.readUInt32BE(12);
    const count = bytes.readUInt32BE(16);
    const packCount = bytes.readUInt32BE(20);
    if (count === 0 || count > MAX_PIECE_ENTRIES) throw bad(`${count} entries (1 to ${MAX_PIECE_ENTRIES})`);
    if (packCount > MAX_PIECE_PACKS) throw bad(`${packCount} packs`);
    const expected = PIECE_HEAD_BYTES + packCount * PIECE_PACK_BYTES + count * ENTRY_BYTES;
    if (bytes.length !== expected) throw bad(`${bytes.length} bytes, ${expected} for ${count} entries and ${packCount} packs`);
    const packs: PackRef[] = [];
    for (let p = 0, at = PIECE_HEAD_BYTES; p < packCount; p++, at += PIECE_PACK_BYTES) {
      packs.push({ id: bytes.toString('hex', at, at + 16), size: bytes.readUInt32BE(at + 16) });
    }
    const piece = new Piece(bytes, firstChunk, count, packs);
    for (let i = 0; i < count; i++) {
      const at = piece.entries + i * ENTRY_BYTES;
      const pack = bytes.readUInt32BE(at + 32);
      if (pack === ZERO) continue;
      if (pack >= packCount) throw bad(`chunk ${firstChunk + i} names pack ${pack} of ${packCount}`);
      const end = bytes.readUInt32BE(at + 36) + bytes.readUInt32BE(at + 40);
      if (end > packs[pack]!.size) throw bad(`chunk ${firstChunk + i} ends at ${end}, past the end of pack ${packs[pack]!.id} (${packs[pack]!.size} bytes)`);
    }
    return piece;
  }

  private at(i: number): number {
    if (!(i >= 0 && i < this.count)) throw new RangeError(`entry ${i} of a piece of ${this.count}`);
    return this.entries + i * ENTRY_BYTES;
  }

  /** True for a zero chunk (nothing stored). */
  isZero(i: number): boolean {
    return this.bytes.readUInt32BE(this.at(i) + 32) === ZERO;
  }

  /** The `i`th chunk's id (hex), or null for a zero chunk. */
  id(i: number): string | null {
    const at = this.at(i);
    return this.bytes.readUInt32BE(at + 32) === ZERO ? null : this.bytes.toString('hex', at, at + 32);
  }

  /** The `i`th chunk's pack number in `packs`, offset and stored size (undefined for a zero chunk). */
  where(i: number): { pack: number; offset: number; length: number } | undefined {
    const at = this.at(i);
    const pack = this.bytes.readUInt32BE(at + 32);
    if (pack === ZERO) return undefined;
    return { pack, offset: this.bytes.readUInt32BE(at + 36), length: this.bytes.readUInt32BE(at + 40) };
  }
}

/** Builds a piece's plaintext entry by entry, in disk order, into one buffer of bounded size. */
export class PieceBuilder {
  readonly firstChunk: number;
  private readonly entries: Buffer;
  private readonly packIndex = new Map<string, number>();
  private readonly packIds: string[] = [];
  count = 0;

  constructor(firstChunk: number, capacity = MAX_PIECE_ENTRIES) {
    if (!Number.isSafeInteger(firstChunk) || firstChunk < 0) throw new RangeError(`first chunk ${firstChunk}`);
    if (!(capacity >= 1 && capacity <= MAX_PIECE_ENTRIES)) throw new RangeError(`piece capacity ${capacity} (1 to ${MAX_PIECE_ENTRIES})`);
    this.firstChunk = firstChunk;
    this.entries = Buffer.alloc(capacity * ENTRY_BYTES);
  }

  get full(): boolean {
    return this.count * ENTRY_BYTES === this.entries.length;
  }

  /** The packs the entries so far name, in the order first named. */
  get packs(): readonly string[] {
    return this.packIds;
  }

  addZero(): void {
    if (this.full) throw new RangeError('the piece is full');
    // The buffer is new and zeroed, and entries are written once each: only the marker.
    this.entries.writeUInt32BE(ZERO, this.count++ * ENTRY_BYTES + 32);
  }

  /** A stored chunk: its id (hex), its pack's id (hex), offset and sealed length. */
  add(id: string, packId: string, offset: number, length: number): void {
    if (this.full) throw new RangeError('the piece is full');
    let p = this.packIndex.get(packId);
    if (p === undefined) {
      this.packIndex.set(packId, (p = this.packIds.length));
      this.packIds.push(packId);
    }
    const at = this.count++ * ENTRY_BYTES;
    if (this.entries.write(id, at, 32, 'hex') !== 32) throw new RangeError(`chunk id ${id} is not 32 bytes of hex`);
    this.entries.writeUInt32BE(p, at + 32);
    this.entries.writeUInt32BE(offset, at + 36);
    this.entries.writeUInt32BE(length, at + 40);
  }

  /** The plaintext, given each named pack's size (`packs` order). */
  encode(packSizes: readonly number[]): Buffer {
    if (packSizes.length !== this.packIds.length) throw new RangeError(`${packSizes.length} pack sizes for ${this.packIds.length} packs`);
    const head = Buffer.alloc(PIECE_HEAD_BYTES + this.packIds.length * PIECE_PACK_BYTES);
    head.writeUInt32BE(MAGIC, 0);
    head[4] = PIECE_VERSION;
    head.writeUInt32BE(Math.floor(this.firstChunk / 2 ** 32), 8);
    head.writeUInt32BE(this.firstChunk % 2 ** 32, 12);
    head.writeUInt32BE(this.count, 16);
    head.writeUInt32BE(this.packIds.length, 20);
    for (const [p, id] of this.packIds.entries()) {
      const at = PIECE_HEAD_BYTES + p * PIECE_PACK_BYTES;
      if (head.write(id, at, 16, 'hex') !== 16) throw new RangeError(`pack id ${id} is not 16 bytes of hex`);
      head.writeUInt32BE(packSizes[p]!, at + 16);
    }
    return Buffer.concat([head, this.entries.subarray(0, this.count * ENTRY_BYTES)]);
  }
}
