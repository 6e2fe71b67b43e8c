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

/** Ids RecentIds keeps at most. */
const RECENT_IDS = 65_536;

/**
 * Ids this backup stored or found in the repository's index most recently, least recent
 * first, remembered so a repeated chunk costs no lookup (bounded); the chunks it stores are
 * in no index object it has read. A chunk taken from the parent is not remembered: the
 * index lists it anyway, and an incremental remembering every unchanged chunk kept ~65,000
 * ids and locations alive long enough to reach V8's old generation, which then grew by that
 * much garbage again and again between full collections.
 */
export class RecentIds {
  private readonly ids = new Map<string, Stored>();

  get(id: string): Stored | undefined {
    return this.ids.get(id);
  }

  /** Notes `id` as stored at `at` (the most recent now); returns its entry. */
  remember(id: string, at: Stored): Entry {
    this.ids.delete(id);
    this.ids.set(id, at);
    if (this.ids.size > RECENT_IDS) this.ids.delete(this.ids.keys().next().value!);
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
