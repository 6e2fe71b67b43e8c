/**
 * A disk's manifest entries on their way from the chunks to the manifest: where a chunk
 * is stored, the ids a backup stored or reused lately (so a chunk repeated on the disk
 * costs no lookup), and the window that hands entries to the manifest writer in disk
 * order while chunks finish out of order.
 */
import type { ManifestWriter } from '../../repository/types.ts';

/** Where a chunk is stored, as a manifest records it (`pack.size` unknown while a pack this backup writes has not landed). */
export interface Stored {
  pack: { id: string; size?: number };
  offset: number;
  length: number;
}

/** A chunk's manifest entry: null for zeros. */
export type Entry = { id: string; stored: Stored } | null;

/** Ids RecentIds keeps at most: two generations of half as many. */
const RECENT_IDS = 65_536;

/**
 * Ids this backup stored or found in the repository's index most recently, remembered so a
 * repeated chunk costs no lookup (bounded); the chunks it stores are in no index object it
 * has read. A chunk taken from the parent is not remembered: the index lists it anyway, and
 * an incremental remembering every unchanged chunk kept ~65,000 ids and locations alive
 * long enough to reach V8's old generation, which then grew by that much garbage again and
 * again between full collections.
 *
 * Two generations, not one Map whose oldest entry is deleted: forgetting a Map's first key
 * (`keys().next()`) walks past every entry deleted since V8 last rehashed it, tens of
 * microseconds a chunk once the limit is reached (Verify's RecentIds, measured). An id used
 * again is set in the current generation; when that is full, the previous one is dropped
 * whole. So the last RECENT_IDS / 2 distinct ids are always remembered, and at most
 * RECENT_IDS are.
 */
export class RecentIds {
  private current = new Map<string, Stored>();
  private previous = new Map<string, Stored>();
  private readonly generation: number;

  constructor(limit = RECENT_IDS) {
    if (!(Number.isInteger(limit) && limit >= 2)) throw new RangeError(`RecentIds limit ${limit} (an integer, at least 2)`);
    this.generation = Math.floor(limit / 2);
  }

  get(id: string): Stored | undefined {
    return this.current.get(id) ?? this.previous.get(id);
  }

  /** Entries held now: at most the limit (an id used again in both generations is held twice). */
  get size(): number {
    return this.current.size + this.previous.size;
  }

  /** Notes `id` as stored at `at` (the most recent now); returns its entry. */
  remember(id: string, at: Stored): Entry {
    this.current.set(id, at);
    if (this.current.size >= this.generation) {
      this.previous = this.current;
      this.current = new Map();
    }
    return { id, stored: at };
  }
}

/**
 * Entries go to the manifest in disk order; chunks finish out of order, so a bounded
 * window of them waits here (the oldest is awaited when it is full).
 */
export class EntryWindow {
  private readonly slots: { value?: Entry; done: boolean; wait?: Promise<Entry> }[] = [];
  private readonly manifest: ManifestWriter;
  private readonly max: number;

  constructor(manifest: ManifestWriter, max: number) {
    this.manifest = manifest;
    this.max = max;
  }

  /** Entries waiting (the oldest chunk still in flight is this many chunks back). */
  get length(): number {
    return this.slots.length;
  }

  /** The next chunk's entry, known now. */
  settled(value: Entry): void {
    this.slots.push({ value, done: true });
  }

  /** The next chunk's entry, once `entry` settles; returns the entry's promise. */
  pending(entry: Promise<Entry>): Promise<Entry> {
    const slot: { value?: Entry; done: boolean; wait?: Promise<Entry> } = { done: false };
    const p = entry.then((e) => {
      slot.value = e;
      slot.done = true;
      return e;
    });
    slot.wait = p;
    this.slots.push(slot);
    return p;
  }

  /** Hands the entries that are done at the front to the manifest; `final`: all of them, waiting for each. */
  async emit(final = false): Promise<void> {
    while (this.slots.length > 0 && (this.slots[0]!.done || final || this.slots.length > this.max)) {
      const head = this.slots.shift()!;
      const e = head.done ? head.value! : await head.wait!;
      const wait = this.manifest.add(
        e && {
          id: e.id,
          packId: e.stored.pack.id,
          offset: e.stored.offset,
          length: e.stored.length,
          ...(e.stored.pack.size !== undefined ? { packSize: e.stored.pack.size } : {}),
        },
      );
      if (wait) await wait;
    }
  }
}
