/**
 * How a restore reads a disk's chunks: the manifest as a stream of entries in disk order,
 * cut into bounded windows; in each window, the chunks of one pack that lie close together
 * become one run, read with one range GET. Nothing here grows with the disk's size: a
 * window holds at most `windowEntries` entries, whatever the manifest's length.
 */
import { Corrupt } from '../contracts/errors.ts';
import type { Manifest } from './format.ts';
import type { ManifestReader } from './manifest/reader.ts';
import { chunkLocation } from './packs.ts';

/**
 * One chunk of a disk as its manifest lists it, in disk order: a zero chunk (not stored),
 * or a stored chunk and where its envelope is (a range of a pack, or a format-1 object).
 */
export type ManifestEntry = { index: number; id: null } | { index: number; id: string; key: string; packed: boolean; offset: number; storedSize: number };

/** A stored entry of the manifest. */
export type StoredEntry = Extract<ManifestEntry, { id: string }>;

/** The entries of an in-memory (format 1 or 2) manifest, in disk order. */
export function* manifestEntries(m: Manifest): Generator<ManifestEntry> {
  for (let index = 0; index < m.chunks.length; index++) {
    const id = m.chunks[index]!;
    if (id === null) {
      yield { index, id: null };
      continue;
    }
    const loc = chunkLocation(m, id);
    yield { index, id, key: loc.key, packed: !!loc.pack, offset: loc.offset, storedSize: loc.length };
  }
}

/** The entries of a manifest of any version, read a batch (a version-3 piece) at a time: memory stays bounded whatever the disk's size. */
export async function* readerEntries(reader: ManifestReader): AsyncGenerator<ManifestEntry> {
  for await (const b of reader.batches()) {
    for (let i = 0; i < b.count; i++) {
      const index = b.firstChunk + i;
      const id = b.id(i);
      if (id === null) {
        yield { index, id: null };
        continue;
      }
      const loc = b.location(i);
      if (!loc) throw new Corrupt(`manifest chunk ${index} (${id}) has no location`);
      yield { index, id, key: loc.key, packed: !!loc.pack, offset: loc.offset, storedSize: loc.length };
    }
  }
}

/** One stored chunk in a run: where it starts in the run, and every disk chunk index it fills. */
export interface RunChunk {
  id: string;
  /** Its offset in the object (the pack). */
  offset: number;
  /** Where it starts within the run's bytes. */
  at: number;
  length: number;
  /** The disk's chunk indexes that hold this chunk (a chunk repeated in a disk is read once per window). */
  indexes: number[];
}

/** One range GET: bytes `offset`..`offset + length` of object `key` (a format-1 chunk object: all of it). */
export interface ReadRun {
  key: string;
  packed: boolean;
  offset: number;
  length: number;
  chunks: RunChunk[];
}

/** A window of the manifest: its zero chunks' indexes, and the runs that read its stored chunks. */
export interface ReadWindow {
  zeros: number[];
  runs: ReadRun[];
}

export interface RunPlanOptions {
  /** The most bytes one GET reads (a chunk larger than this is still read, alone). */
  maxRunBytes: number;
  /**
   * Two chunks of a pack this close (bytes between them) are read by one GET, gap included:
   * reading the gap costs less than a second request.
   */
  maxGapBytes: number;
  /** Entries (zero or stored) planned at once: bounds memory, and how far apart in the disk two chunks of one run may be. */
  windowEntries: number;
}

/**
 * The manifest's entries as windows of runs: within a window, chunks are grouped by object
 * and location (a chunk stored once and used at several indexes is read once), sorted by
 * offset, and neighbours within `maxGapBytes` joined while the run stays within
 * `maxRunBytes`. Runs come in the order of the first disk index they fill, so the target
 * is written front to back. Entries out of disk order, or a stored size that is not
 * positive, are Corrupt.
 */
export async function* planWindows(entries: Iterable<ManifestEntry> | AsyncIterable<ManifestEntry>, o: RunPlanOptions): AsyncGenerator<ReadWindow> {
  let zeros: number[] = [];
  let stored: StoredEntry[] = [];
  let last = -1;
  for await (const e of entries) {
    if (!Number.isSafeInteger(e.index) || e.index <= last)
      throw new Corrupt(`manifest entry ${e.index} follows entry ${last}: entries must come in disk order`);
    last = e.index;
    if (e.id === null) zeros.push(e.index);
    else {
      if (!Number.isSafeInteger(e.storedSize) || e.storedSize <= 0 || !Number.isSafeInteger(e.offset) || e.offset < 0) {
        throw new Corrupt(`manifest entry ${e.index} (chunk ${e.id}) is stored at ${e.key} bytes ${e.offset}+${e.storedSize}: not a valid range`);
      }
      stored.push(e);
    }
    if (zeros.length + stored.length >= o.windowEntries) {
      yield { zeros, runs: planRuns(stored, o) };
      zeros = [];
      stored = [];
    }
  }
  if (zeros.length + stored.length > 0) yield { zeros, runs: planRuns(stored, o) };
}

/** The runs that read `entries` (see planWindows). */
export function planRuns(entries: readonly StoredEntry[], o: Pick<RunPlanOptions, 'maxRunBytes' | 'maxGapBytes'>): ReadRun[] {
  // One RunChunk per chunk and location, with every index that uses it. Two ids at one
  // location (a faulty manifest) are both read: the one that is not there fails its id check.
  const byObject = new Map<string, { packed: boolean; chunks: Map<string, RunChunk> }>();
  for (const e of entries) {
    let inObject = byObject.get(e.key);
    if (!inObject) byObject.set(e.key, (inObject = { packed: e.packed, chunks: new Map() }));
    const where = `${e.offset}+${e.storedSize}:${e.id}`;
    const c = inObject.chunks.get(where);
    if (c) c.indexes.push(e.index);
    else inObject.chunks.set(where, { id: e.id, offset: e.offset, at: 0, length: e.storedSize, indexes: [e.index] });
  }
  // A run's first disk index (a chunk's first index is its smallest: entries come in disk order).
  type Planned = ReadRun & { first: number };
  const runs: Planned[] = [];
  for (const [key, { packed, chunks }] of byObject) {
    let run: Planned | undefined;
    for (const c of [...chunks.values()].sort((a, b) => a.offset - b.offset)) {
      const end = c.offset + c.length;
      if (run && packed && c.offset - (run.offset + run.length) <= o.maxGapBytes && end - run.offset <= o.maxRunBytes) {
        run.length = Math.max(run.length, end - run.offset);
        run.first = Math.min(run.first, c.indexes[0]!);
      } else {
        run = { key, packed, offset: c.offset, length: c.length, chunks: [], first: c.indexes[0]! };
        runs.push(run);
      }
      c.at = c.offset - run.offset;
      run.chunks.push(c);
    }
  }
  return runs.sort((a, b) => a.first - b.first).map(({ first: _, ...run }) => run);
}

/** Neighbouring disk chunks that one run fills: placed side by side in memory and written to the target at once. */
export interface WriteExtent {
  /** The first disk chunk index. */
  first: number;
  /** The chunk that fills each index from `first` on, in disk order (a chunk repeated in the disk appears at each of its indexes). */
  chunks: RunChunk[];
}

/** The disk indexes a run's chunks fill, as runs of neighbours of at most `maxChunks` each, in disk order. */
export function writeExtents(chunks: readonly RunChunk[], maxChunks: number): WriteExtent[] {
  if (!Number.isSafeInteger(maxChunks) || maxChunks < 1) throw new RangeError(`a write extent holds at least one chunk, got ${maxChunks}`);
  const placed = chunks.flatMap((c) => c.indexes.map((i) => [i, c] as const)).sort((a, b) => a[0] - b[0]);
  const extents: WriteExtent[] = [];
  let extent: WriteExtent | undefined;
  for (const [i, c] of placed) {
    if (extent && i === extent.first + extent.chunks.length && extent.chunks.length < maxChunks) extent.chunks.push(c);
    else extents.push((extent = { first: i, chunks: [c] }));
  }
  return extents;
}
