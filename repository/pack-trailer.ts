/**
 * A pack's trailer (repository/REPOSITORY-FORMAT.md): the sealed index of the pack itself,
 * then its length, so a pack describes itself and the index can be rebuilt from the packs.
 * Written by the pack writer, read whole (replication) or from the pack's end alone.
 */
import { Corrupt } from '../contracts/errors.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { objectKeys, openSync, sealedCapacity, sealSync, type RepositoryKeys } from './format.ts';
import { decodeIndex, encodeIndex, ENTRY_BYTES, PACK_HEAD_BYTES, type PackContents, type PackEntry } from './packs.ts';

/**
 * The trailer that ends a pack: the sealed index of this one pack, whose size field holds
 * where the trailer begins (the bytes of chunks before it), then the sealed trailer's
 * length, unsigned 32-bit big-endian.
 */
export function packTrailer(keys: RepositoryKeys, packId: string, chunks: readonly PackEntry[], chunkBytes: number): Buffer {
  const sealed = sealSync(keys, encodeIndex([{ pack: { id: packId, size: chunkBytes }, chunks: [...chunks] }]), `pack:${packId}`, { level: 1 });
  const out = Buffer.alloc(sealed.length + 4);
  sealed.copy(out);
  out.writeUInt32BE(sealed.length, sealed.length);
  return out;
}

/** The most bytes `packTrailer` makes for a pack of `chunks` chunks (the sealed index of one pack, then its length). */
export const trailerBytes = (chunks: number): number => sealedCapacity(9 + PACK_HEAD_BYTES + chunks * ENTRY_BYTES) + 4;

/** The chunks a whole pack lists in its trailer (for replication, which copies the pack anyway). */
export function readPackTrailer(keys: RepositoryKeys, pack: Uint8Array, packId: string): PackContents {
  return trailerOf(keys, pack, pack.byteLength, packId);
}

/** The length of the sealed trailer that the last 4 bytes of a pack (ending `tail`) give. */
function trailerLength(tail: Uint8Array, packSize: number, what: string): number {
  if (tail.byteLength < 4) throw new Corrupt(`${what} is ${packSize} bytes, too short for a trailer`);
  const len = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength).readUInt32BE(tail.byteLength - 4);
  if (len + 4 > packSize) throw new Corrupt(`${what}: its trailer claims ${len} bytes, the pack has ${packSize}`);
  return len;
}

/** The trailer of a pack of `packSize` bytes from `tail`, its last bytes (all of the trailer and its length). */
function trailerOf(keys: RepositoryKeys, tail: Uint8Array, packSize: number, packId: string): PackContents {
  const what = `pack ${objectKeys.pack(packId)}`;
  const len = trailerLength(tail, packSize, what);
  if (len + 4 > tail.byteLength) throw new Corrupt(`${what}: its trailer claims ${len} bytes, only the last ${tail.byteLength} were read`);
  const plain = openSync(keys, tail.subarray(tail.byteLength - 4 - len, tail.byteLength - 4), `pack:${packId}`);
  const [contents, ...rest] = decodeIndex(plain, `the trailer of ${what}`);
  if (!contents || rest.length > 0 || contents.pack.id !== packId) throw new Corrupt(`${what}: its trailer does not describe this pack`);
  if (contents.pack.size !== packSize - 4 - len) throw new Corrupt(`${what}: its trailer begins at byte ${packSize - 4 - len}, it says ${contents.pack.size}`);
  return { pack: { id: packId, size: packSize }, chunks: contents.chunks };
}

/**
 * Bytes read from a pack's end to find its trailer (fetchPackTrailer): a trailer of about
 * 1,600 chunks (40 bytes each) fits, where an 8 MiB pack of 512 KiB chunks that compress
 * 4:1 lists ~64; a longer one takes a second read.
 */
export const TRAILER_PROBE_BYTES = 64 * 1024;

/**
 * The chunks the pack `packId` of `size` bytes (as listed) lists in its trailer, reading
 * only its end: one range GET, a second when the trailer is longer than `probeBytes`.
 * Rebuilding an index from packs then moves kilobytes per pack, not the pack. Undefined
 * when the pack is gone; Corrupt when its end is not a trailer of this pack.
 */
export async function fetchPackTrailer(
  store: ObjectStore,
  keys: RepositoryKeys,
  packId: string,
  size: number,
  probeBytes = TRAILER_PROBE_BYTES,
): Promise<PackContents | undefined> {
  const key = objectKeys.pack(packId);
  const what = `pack ${key}`;
  const readEnd = async (length: number): Promise<Buffer | undefined> => {
    const got = await store.get(key, { range: { offset: size - length, length } });
    if (got && got.length !== length) throw new Corrupt(`${what}: reading its last ${length} of ${size} bytes returned ${got.length} (is it ${size} bytes?)`);
    return got;
  };
  if (size < 4) throw new Corrupt(`${what} is ${size} bytes, too short for a trailer`);
  let tail = await readEnd(Math.min(size, probeBytes));
  if (!tail) return undefined;
  const len = trailerLength(tail, size, what);
  if (len + 4 > tail.length) tail = await readEnd(len + 4);
  return tail && trailerOf(keys, tail, size, packId);
}
