/**
 * The repository's index as garbage collection sees it: which index objects list which
 * packs, taking deleted packs out of them, and merging many small index objects into
 * fewer large ones (core/packs.ts has the format).
 */
import { mapLimit } from '../core/concurrency.ts';
import { Corrupt } from '../core/errors.ts';
import { keys as objectKeys, objectCrc32, open, type RepositoryKeys } from '../core/format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { decodeIndexObject, encodeIndexObject, IndexListing, joinIndexSections, newIndexId, readPackTrailer, sealIndex, type PackContents } from '../core/packs.ts';
import type { ListedObject, RepositoryAdmin } from '../core/repository-admin.ts';

/** What reading and rewriting index objects needs. */
export interface IndexDeps {
  store: ObjectStore;
  keys: RepositoryKeys;
  now: () => Date;
}

/** An index object: its key, when it was written, and the packs it lists. */
export interface IndexEntry {
  indexId: string;
  lastModified: Date;
  packs: string[];
  /** Chunk entries it lists for each of `packs`. */
  chunks: number[];
}

/** Chunk entries an index object lists. */
export const entriesOf = (e: IndexEntry): number => e.chunks.reduce((n, c) => n + c, 0);

/** The repository's index objects and which list each pack (packs are listed once, but a repaired index may list one twice). */
export class IndexMap {
  readonly objects = new Map<string, IndexEntry>();
  readonly byPack = new Map<string, Set<string>>();

  add(e: IndexEntry): void {
    this.objects.set(e.indexId, e);
    for (const p of e.packs) {
      let s = this.byPack.get(p);
      if (!s) this.byPack.set(p, (s = new Set()));
      s.add(e.indexId);
    }
  }

  remove(indexId: string): void {
    const e = this.objects.get(indexId);
    if (!e) return;
    this.objects.delete(indexId);
    for (const p of e.packs) this.byPack.get(p)?.delete(indexId);
  }

  listing(packId: string): IndexEntry[] {
    return [...(this.byPack.get(packId) ?? [])].map((id) => this.objects.get(id)!);
  }
}

export const indexIdOfKey = (key: string) => key.slice('index/'.length);

const unopened = (indexId: string, err: unknown) =>
  new Corrupt(`garbage collection stopped: index object ${objectKeys.index(indexId)} does not open, so the packs it lists are unknown; delete it (the index is rebuilt from the packs' trailers) or restore it first (${(err as Error).message})`, err);

export async function readIndexObject(deps: IndexDeps, indexId: string): Promise<PackContents[] | undefined> {
  const sealed = await deps.store.get(objectKeys.index(indexId));
  if (!sealed) return undefined;
  try {
    return await decodeIndexObject(deps.keys, sealed, indexId);
  } catch (err) {
    throw unopened(indexId, err);
  }
}

/** An index object in its binary form (not decoded: merging copies its packs as they are). */
async function readIndexListing(deps: IndexDeps, indexId: string): Promise<IndexListing | undefined> {
  const sealed = await deps.store.get(objectKeys.index(indexId));
  if (!sealed) return undefined;
  try {
    return IndexListing.parse(await open(deps.keys, sealed, `index:${indexId}`), `index object ${objectKeys.index(indexId)}`);
  } catch (err) {
    throw unopened(indexId, err);
  }
}

/** What taking packs out of the index did. */
/**
 * Every index object, read after the mark (a pack a manifest names was indexed before the
 * manifest was written), and what packs still in use hold that no manifest needs: the
 * chunks of `inUse` packs not in `needed`, counted once per pack.
 */
export async function loadIndex(deps: IndexDeps & { admin: RepositoryAdmin }, inUse: ReadonlySet<string>, needed: ReadonlySet<string>): Promise<{ index: IndexMap; reclaimable: { chunks: number; bytes: number } }> {
  const index = new IndexMap();
  const reclaimable = { chunks: 0, bytes: 0 };
  const counted = new Set<string>();
  const listed: ListedObject[] = [];
  for await (const o of deps.admin.list('index/')) listed.push(o);
  await mapLimit(listed, 16, async (o) => {
    const indexId = indexIdOfKey(o.key);
    const contents = await readIndexObject(deps, indexId);
    if (!contents) return; // replaced meanwhile (another collection): its successor lists the same packs
    index.add({ indexId, lastModified: o.lastModified, packs: contents.map((p) => p.pack.id), chunks: contents.map((p) => p.chunks.length) });
    for (const p of contents) {
      if (!inUse.has(p.pack.id) || counted.has(p.pack.id)) continue;
      counted.add(p.pack.id);
      for (const c of p.chunks) {
        if (needed.has(c.id)) continue;
        reclaimable.chunks++;
        reclaimable.bytes += c.length;
      }
    }
  });
  return { index, reclaimable };
}

/**
 * The index as deleting `going` packs would leave it (a dry run's view): index objects
 * listing none of them unchanged, the others rewritten (under a made-up id, written `at`)
 * or dropped when they list nothing else.
 */
export function indexWithout(index: IndexMap, going: ReadonlySet<string>, at: Date): { after: IndexMap; rewritten: string[]; dropped: number } {
  const after = new IndexMap();
  const rewritten: string[] = [];
  let dropped = 0;
  for (const e of index.objects.values()) {
    const left = e.packs.flatMap((p, i) => (going.has(p) ? [] : [i]));
    if (left.length === e.packs.length) after.add(e);
    else if (left.length === 0) dropped++;
    else {
      const id = `rewritten-${e.indexId}`;
      rewritten.push(id);
      after.add({ indexId: id, lastModified: at, packs: left.map((i) => e.packs[i]!), chunks: left.map((i) => e.chunks[i]!) });
    }
  }
  return { after, rewritten, dropped };
}

export interface Unindexed {
  /** Packs whose old index object could not be deleted: they must stay. */
  kept: Set<string>;
  rewritten: number;
  dropped: number;
  failed: { key: string; reason: string }[];
  /** Ids of the index objects written in place of the old ones. */
  written: string[];
}

/** Packs listed by one index object `indexPacks` writes, at most. */
const PACKS_PER_REINDEX_OBJECT = 256;

/**
 * Lists in the index packs a manifest references that no index object lists: a
 * replication that stopped between copying a pack and indexing it leaves one at the DR
 * repository when a re-run finds the pack there and copies it no more. Each pack's
 * trailer says what it holds (the pack is read whole); index objects of at most 256 packs
 * are written and added to `index`. Packs are read while `keepGoing()` says so; a pack
 * whose trailer does not open is reported, not listed.
 */
export async function indexPacks(deps: IndexDeps, index: IndexMap, packs: readonly ListedObject[], keepGoing: () => boolean): Promise<{ indexed: number; written: string[]; failed: { key: string; reason: string }[] }> {
  const out = { indexed: 0, written: [] as string[], failed: [] as { key: string; reason: string }[] };
  let pending: PackContents[] = [];
  const flush = async () => {
    if (pending.length === 0) return;
    const indexId = newIndexId();
    const sealed = await encodeIndexObject(deps.keys, indexId, pending);
    await deps.store.put(objectKeys.index(indexId), sealed, { crc32: objectCrc32(sealed) });
    index.add({ indexId, lastModified: deps.now(), packs: pending.map((p) => p.pack.id), chunks: pending.map((p) => p.chunks.length) });
    out.written.push(indexId);
    out.indexed += pending.length;
    pending = [];
  };
  for (const o of packs) {
    if (!keepGoing()) break;
    const packId = o.key.slice(o.key.lastIndexOf('/') + 1);
    const body = await deps.store.get(o.key);
    if (!body) continue; // deleted meanwhile: nothing to list
    try {
      pending.push(readPackTrailer(deps.keys, body, packId));
    } catch (err) {
      out.failed.push({ key: o.key, reason: `referenced but in no index object, and its trailer does not open: ${(err as Error).message}` });
    }
    if (pending.length >= PACKS_PER_REINDEX_OBJECT) await flush();
  }
  await flush();
  return out;
}

/**
 * Takes `packs` (ids) out of every index object that lists them: a new index object
 * without them, then the old one deleted (or only deleted when it listed nothing else).
 * `index` follows what was done.
 */
export async function removeFromIndex(deps: IndexDeps & { admin: RepositoryAdmin }, index: IndexMap, packs: Set<string>): Promise<Unindexed> {
  const out: Unindexed = { kept: new Set(), rewritten: 0, dropped: 0, failed: [], written: [] };
  const touched = new Set<string>();
  for (const p of packs) for (const e of index.listing(p)) touched.add(e.indexId);
  for (const indexId of [...touched].sort()) {
    const contents = await readIndexObject(deps, indexId);
    const oldKey = objectKeys.index(indexId);
    const rest = (contents ?? []).filter((p) => !packs.has(p.pack.id));
    let replacement: IndexEntry | undefined;
    if (rest.length > 0) {
      const newId = newIndexId();
      await deps.store.put(objectKeys.index(newId), await encodeIndexObject(deps.keys, newId, rest));
      replacement = { indexId: newId, lastModified: deps.now(), packs: rest.map((p) => p.pack.id), chunks: rest.map((p) => p.chunks.length) };
      out.written.push(newId);
    }
    const deleted = contents ? await deps.admin.delete([oldKey]) : { deleted: [oldKey], failed: [] };
    if (deleted.failed.length > 0) {
      out.failed.push(...deleted.failed);
      for (const p of index.objects.get(indexId)!.packs) if (packs.has(p)) out.kept.add(p);
    } else {
      if (replacement) out.rewritten++;
      else if (contents) out.dropped++;
      index.remove(indexId);
    }
    if (replacement) index.add(replacement);
  }
  return out;
}

// --- consolidation ---------------------------------------------------------------------

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
export function planConsolidation(index: IndexMap, settings: ConsolidationSettings, eligible: (e: IndexEntry) => boolean, exists: (packId: string) => boolean): ConsolidationPlan {
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
 * merged object (uploaded with its SHA-256, so the store checks it on arrival), and only
 * once that is stored deletes the sources. A reader therefore always finds every pack in
 * some index object: the sources until they go, the merged object from before they go
 * (IndexCache lists again when an object it knew disappears). Stopped anywhere (a crash,
 * the time running out, a refused request), the repository keeps both copies of a
 * group's entries at worst: harmless duplicates that the next collection merges away.
 * Stops at once when a source is gone (another collection merged or rewrote it): its
 * packs may be listed only by an object this run has not read. `index` follows what was
 * done. `keepGoing` is asked before each group.
 */
export async function consolidateIndex(deps: IndexDeps & { admin: RepositoryAdmin }, index: IndexMap, plan: ConsolidationPlan, keepGoing: () => boolean = () => true): Promise<Consolidated> {
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
        const sealed = await sealIndex(deps.keys, newId, plain);
        await deps.store.put(key, sealed, { crc32: objectCrc32(sealed) });
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
