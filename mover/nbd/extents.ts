/**
 * Walking an export's metadata with BLOCK_STATUS: which parts may hold data
 * (`base:allocation`) or changed since a checkpoint (`qemu:dirty-bitmap:NAME`).
 */
import { MAX_EXTENTS } from '../sources/allocation.ts';
import type { Extent } from '../sources/source.ts';
import type { NbdReader } from './client.ts';
import { DirtyFlag, NbdProtocolError, StateFlag } from './protocol.ts';

/** Options of {@link mapExtents}. */
export interface MapExtentsOptions {
  offset?: number;
  /** Bytes to map from `offset`; the rest of the export by default. */
  length?: number;
  /** More merged extents than this and the map is given up (undefined). */
  maxExtents?: number;
  /**
   * The length asked in one BLOCK_STATUS request. Bounded so the server answers each in
   * bounded time and memory; it may answer less, and the walk goes on from there.
   */
  requestLength?: number;
  /** Which status flags make an extent one of interest; defaults by context (see below). */
  select?: (flags: number) => boolean;
}

/** 1 GiB: a 1 TiB disk in about a thousand requests. */
export const MAP_REQUEST_LENGTH = 1 << 30;

/**
 * The flags of interest of the contexts this mover reads: for `base:allocation` the
 * extents that may hold data (neither HOLE nor ZERO; a hole reported without ZERO has
 * undefined contents, which the spec says not to read, so it is skipped too), for a QEMU
 * dirty bitmap the dirty ones.
 */
export function defaultSelect(context: string): (flags: number) => boolean {
  if (context === 'base:allocation') return (flags) => (flags & (StateFlag.HOLE | StateFlag.ZERO)) === 0;
  if (context.startsWith('qemu:dirty-bitmap:')) return (flags) => (flags & DirtyFlag.DIRTY) !== 0;
  throw new Error(`no default selection of extents for metadata context '${context}': pass select`);
}

/**
 * The extents of interest of [offset, offset + length) in `context`, in order, neighbours
 * merged; undefined when there are more than `maxExtents`.
 */
export async function mapExtents(
  reader: Pick<NbdReader, 'size' | 'blockStatus'>,
  context: string,
  opts: MapExtentsOptions = {},
): Promise<Extent[] | undefined> {
  const select = opts.select ?? defaultSelect(context);
  const maxExtents = opts.maxExtents ?? MAX_EXTENTS;
  const start = opts.offset ?? 0;
  const end = Math.min(reader.size, start + (opts.length ?? reader.size - start));
  const out: Extent[] = [];
  for (let at = start; at < end; ) {
    const got = await reader.blockStatus(context, at, Math.min(end - at, opts.requestLength ?? MAP_REQUEST_LENGTH));
    const last = got[got.length - 1];
    if (!last) throw new NbdProtocolError(`block status of '${context}' at ${at} returned no extent`);
    for (const e of got) {
      if (select(e.flags) && !append(out, e.offset, e.length, maxExtents)) return undefined;
    }
    at = last.offset + last.length;
  }
  return out;
}

/** Appends an extent, merging it with an adjacent last one; false when over `max`. */
function append(out: Extent[], offset: number, length: number, max: number): boolean {
  const last = out[out.length - 1];
  if (last && last.offset + last.length === offset) {
    last.length += length;
    return true;
  }
  if (out.length === max) return false;
  out.push({ offset, length });
  return true;
}
