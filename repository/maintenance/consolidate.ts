/**
 * Index consolidation, after garbage collection's sweep: many small index objects merged
 * into few large ones (the index's objects as index-map.ts maps them).
 */
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../format.ts';
import { objectCrc32 } from '../../core/object-store.ts';
import { IndexListing, joinIndexSections, newIndexId } from '../packs.ts';
import type { RepositoryAdmin } from '../admin.ts';
import { indexIdOfKey, readIndexListing, type IndexDeps, type IndexEntry, type IndexMap } from './index-map.ts';

/** Chunk entries an index object lists. */
const entriesOf = (e: IndexEntry): number => e.chunks.reduce((n, c) => n + c, 0);

/**
 * When and how far garbage collection merges index objects (after its sweep).
 *
 * Every disk backup writes a few index objects of a few hundred entries; nothing else
 * merges them, and a mover's first refresh (IndexCache) GETs every one. Merging keeps the
 * count near the index's size divided by `maxEntries`.
 */
export interface ConsolidationSettings {
  /**
   * Merge only when more than this many small index objects (under half of `maxEntries`
   * entries) can be merged. 64: a mover reads them 8 at a time, so 64 cost a cold refresh
   * about 8 round trips; below that, merging would mostly rewrite the last, partly filled
   * merged object (and make every mover read it again) for little gain. It also makes a
   * collection right after one that merged do nothing.
   */
  minObjects: number;
  /**
   * Chunk entries a merged object lists at most. 65,536 (2^16): 2.6 MB of plaintext
   * (40 bytes an entry; 32 GiB of distinct data at 512 KiB chunks). A mover's refresh
   * reads 8 index objects at once, each held sealed, decrypted and opened for a moment
   * (~3x its size): ~60 MiB at 8 such objects, inside the mover's 256 MiB. Garbage
   * collection holds one group at a time (its sources and the merged object, ~10 MB)
   * beside its map of the index; and an index object that loses a pack to a sweep is
   * rewritten whole, and read again by every mover: smaller objects mean less of that.
   * A larger bound would save only GETs (one per 2.6 MB already).
   */
  maxEntries: number;
}

export const CONSOLIDATION: ConsolidationSettings = { minObjects: 64, maxEntries: 65_536 };

/** Index objects merged into one: the sources (to delete once it is stored) and the packs it lists. */
export interface MergeGroup {
  sources: IndexEntry[];
  /** Packs the merged object lists, in the order the sources list them; none: the sources only go. */
  packs: Set<string>;
  entries: number;
  /** Entries of the sources it leaves out: of packs that are gone, or that another object lists. */
  dropped: number;
}

export interface ConsolidationPlan {
  /** Small index objects that could be merged. */
  candidates: number;
  groups: MergeGroup[];
}

/**
 * Which index objects to merge: the small ones (under half of `maxEntries` entries) that
 * `eligible` allows (not written by this run, not under Object Lock retention), when there
 * are more than `minObjects`; oldest first, into groups of at most `maxEntries` source
 * entries, so packs of one period stay together (a later sweep rewrites few objects) and
 * every group but the last lists more than half of `maxEntries`: large objects are never
 * merged again, a collection rewrites about what was written since the last one. A merged
 * object lists a pack once, and only a pack that `exists` and that no object outside the
 * merge lists (duplicates left by an interrupted merge, or a repaired index, go).
 */
export function planConsolidation(
  index: IndexMap,
  settings: ConsolidationSettings,
  eligible: (e: IndexEntry) => boolean,
  exists: (packId: string) => boolean,
): ConsolidationPlan {
  const small = [...index.objects.values()].filter((e) => eligible(e) && entriesOf(e) < settings.maxEntries / 2);
  if (small.length <= settings.minObjects) return { candidates: small.length, groups: [] };
  small.sort((a, b) => a.lastModified.getTime() - b.lastModified.getTime() || (a.indexId < b.indexId ? -1 : a.indexId > b.indexId ? 1 : 0));
  const merging = new Set(small.map((e) => e.indexId));
  /** Packs an object that stays lists, or that a merged object already lists. */
  const listed = new Set<string>();
  for (const e of index.objects.values()) if (!merging.has(e.indexId)) for (const p of e.packs) listed.add(p);
  const groups: MergeGroup[] = [];
  let group: MergeGroup | undefined;
  let sourceEntries = 0;
  for (const e of small) {
    const n = entriesOf(e);
    if (!group || sourceEntries + n > settings.maxEntries) {
      groups.push((group = { sources: [], packs: new Set(), entries: 0, dropped: 0 }));
      sourceEntries = 0;
    }
    group.sources.push(e);
    sourceEntries += n;
    for (const [i, p] of e.packs.entries()) {
      const c = e.chunks[i]!;
      if (!exists(p) || listed.has(p)) {
        group.dropped += c;
        continue;
      }
      listed.add(p);
      group.packs.add(p);
      group.entries += c;
    }
  }
  // One object merged into itself: nothing gained (its packs stay listed, by it).
  return { candidates: small.length, groups: groups.filter((g) => g.sources.length > 1 || g.dropped > 0) };
}

/** What merging did. */
export interface Consolidated {
  /** Source objects deleted. */
  merged: number;
  /** Merged objects stored. */
  written: number;
  /** Chunk entries the merged objects list. */
  entries: number;
  /** Entries of the deleted sources the merged objects leave out (packs gone, or listed by another object). */
  dropped: number;
  failed: { key: string; reason: string }[];
  /** Why it stopped before the last group, if it did. */
  stopped: string | null;
}

/**
 * Merges each group of `plan`, one after the other: reads its sources again, writes the
 * merged object (uploaded with its CRC-32, so the store checks it on arrival), and only
 * once that is stored deletes the sources. A reader therefore always finds every pack in
 * some index object: the sources until they go, the merged object from before they go
 * (IndexCache lists again when an object it knew disappears). Stopped anywhere (a crash,
 * the time running out, a refused request), the repository keeps both copies of a
 * group's entries at worst: harmless duplicates that the next collection merges away.
 * Stops at once when a source is gone (another collection merged or rewrote it): its
 * packs may be listed only by an object this run has not read. `index` follows what was
 * done. `keepGoing` is asked before each group.
 */
export async function consolidateIndex(
  deps: IndexDeps & { admin: RepositoryAdmin },
  index: IndexMap,
  plan: ConsolidationPlan,
  keepGoing: () => boolean,
): Promise<Consolidated> {
  const out: Consolidated = { merged: 0, written: 0, entries: 0, dropped: 0, failed: [], stopped: null };
  for (const group of plan.groups) {
    if (!keepGoing()) {
      out.stopped = 'out of time: the next collection merges the rest';
      break;
    }
    let listings: (IndexListing | undefined)[];
    try {
      listings = await mapLimit(group.sources, 16, (e) => readIndexListing(deps, e.indexId));
    } catch (err) {
      if (err instanceof Corrupt) throw err;
      out.stopped = `reading ${group.sources.length} index objects to merge failed: ${(err as Error).message}`;
      break;
    }
    const gone = listings.findIndex((l) => l === undefined);
    if (gone >= 0) {
      out.stopped = `${objectKeys.index(group.sources[gone]!.indexId)} was gone before it was merged (another collection?)`;
      break;
    }
    const sections: Buffer[] = [];
    const packs: string[] = [];
    const chunks: number[] = [];
    const taken = new Set<string>();
    for (const l of listings as IndexListing[]) {
      for (let p = 0; p < l.packs; p++) {
        const id = l.packId(p);
        if (!group.packs.has(id) || taken.has(id)) continue;
        taken.add(id);
        sections.push(l.section(p));
        packs.push(id);
        chunks.push(l.chunksOf(p));
      }
    }
    listings = [];
    if (taken.size !== group.packs.size) {
      // Cannot happen (index objects are never overwritten); if it did, deleting the sources could unindex a pack.
      out.stopped = `the index objects to merge no longer list the packs they listed when read; nothing merged`;
      break;
    }
    let entries = 0;
    if (sections.length > 0) {
      const plain = joinIndexSections(sections);
      const newId = newIndexId();
      const key = objectKeys.index(newId);
      entries = IndexListing.parse(plain, key).entries;
      try {
        const sealed = await deps.repository.sealIndex(newId, plain);
        await deps.repository.store.put(key, sealed, { crc32: objectCrc32(sealed) });
      } catch (err) {
        out.failed.push({ key, reason: (err as Error).message });
        out.stopped = `storing a merged index object failed; nothing it would replace was deleted`;
        break;
      }
      index.add({ indexId: newId, lastModified: deps.now(), packs, chunks });
      out.written++;
      out.entries += entries;
    }
    // The merged object is stored: only now may its sources go.
    let deleted;
    try {
      deleted = await deps.admin.delete(group.sources.map((e) => objectKeys.index(e.indexId)));
    } catch (err) {
      out.stopped = `deleting merged index objects failed (they stay, listed twice): ${(err as Error).message}`;
      break;
    }
    out.failed.push(...deleted.failed);
    for (const k of deleted.deleted) {
      index.remove(indexIdOfKey(k));
      out.merged++;
    }
    if (deleted.failed.length === 0) out.dropped += group.dropped;
  }
  return out;
}
