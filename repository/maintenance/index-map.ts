/**
 * The repository's index as garbage collection sees it: which index objects list which
 * packs, taking deleted packs out of them, and listing again packs no object lists
 * (repository/packs.ts has the format; consolidate.ts merges small index objects).
 */
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, packIdOfKey } from '../format.ts';
import type { Repository } from '../open.ts';
import { CHUNK_ID_BYTES, ENTRY_BYTES, type IndexListing, type PackContents } from '../packs.ts';
import type { ListedObject, RepositoryAdmin } from '../admin.ts';

/** What reading and rewriting index objects needs. */
export interface IndexDeps {
  repository: Repository;
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
  new Corrupt(
    `garbage collection stopped: index object ${objectKeys.index(indexId)} does not open, so the packs it lists are unknown; delete it (the index is rebuilt from the packs' trailers) or restore it first (${(err as Error).message})`,
    err,
  );

async function readIndexObject(deps: IndexDeps, indexId: string): Promise<PackContents[] | undefined> {
  const sealed = await deps.repository.store.get(objectKeys.index(indexId));
  if (!sealed) return undefined;
  try {
    return await deps.repository.decodeIndexObject(sealed, indexId);
  } catch (err) {
    throw unopened(indexId, err);
  }
}

/** An index object in its binary form (not decoded: merging copies its packs as they are). */
export async function readIndexListing(deps: IndexDeps, indexId: string): Promise<IndexListing | undefined> {
  const sealed = await deps.repository.store.get(objectKeys.index(indexId));
  if (!sealed) return undefined;
  try {
    return await deps.repository.openIndexObject(sealed, indexId);
  } catch (err) {
    throw unopened(indexId, err);
  }
}

/**
 * Stores a new index object listing `packs` (with its CRC-32, which the store checks on
 * arrival) and adds it to `index`; its id.
 */
async function writeIndexObject(deps: IndexDeps, index: IndexMap, packs: readonly PackContents[]): Promise<string> {
  const { indexId } = await deps.repository.putIndexObject(packs);
  index.add({ indexId, lastModified: deps.now(), packs: packs.map((p) => p.pack.id), chunks: packs.map((p) => p.chunks.length) });
  return indexId;
}

/** Index objects read at once after the mark: each is held sealed and opened (~5 MB for one of 65,536 entries). */
const INDEX_READS = 4;

/**
 * Every index object, read after the mark (a pack a manifest names was indexed before the
 * manifest was written), and what packs still in use hold that no manifest needs: the
 * chunks of `inUse` packs not in `needed`, counted once per pack. Each object is read in
 * its binary form, its entries in place (no object or string per chunk), 4 at a time.
 */
export async function loadIndex(
  deps: IndexDeps & { admin: RepositoryAdmin },
  inUse: ReadonlySet<string>,
  needed: { hasAt(b: Buffer, at: number): boolean },
): Promise<{ index: IndexMap; reclaimable: { chunks: number; bytes: number } }> {
  const index = new IndexMap();
  const reclaimable = { chunks: 0, bytes: 0 };
  const counted = new Set<string>();
  const listed: ListedObject[] = [];
  for await (const o of deps.admin.list('index/')) listed.push(o);
  await mapLimit(listed, INDEX_READS, async (o) => {
    const indexId = indexIdOfKey(o.key);
    const listing = await readIndexListing(deps, indexId);
    if (!listing) return; // replaced meanwhile (another collection): its successor lists the same packs
    const packs = Array.from({ length: listing.packs }, (_, p) => listing.packId(p));
    index.add({ indexId, lastModified: o.lastModified, packs, chunks: packs.map((_, p) => listing.chunksOf(p)) });
    const b = listing.plaintext();
    for (const [p, packId] of packs.entries()) {
      if (!inUse.has(packId) || counted.has(packId)) continue;
      counted.add(packId);
      for (let c = 0, at = listing.firstEntryByte[p]!; c < listing.chunksOf(p); c++, at += ENTRY_BYTES) {
        if (needed.hasAt(b, at)) continue;
        reclaimable.chunks++;
        reclaimable.bytes += b.readUInt32BE(at + CHUNK_ID_BYTES + 4);
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

/** What taking packs out of the index did. */
interface Unindexed {
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
 * trailer says what it holds (read from the pack's end, not the whole pack:
 * fetchPackTrailer); index objects of at most 256 packs are written and added to
 * `index`. Packs are read while `keepGoing()` says so; a pack whose trailer does not open
 * is reported, not listed.
 */
export async function indexPacks(
  deps: IndexDeps,
  index: IndexMap,
  packs: readonly ListedObject[],
  keepGoing: () => boolean,
): Promise<{ indexed: number; written: string[]; failed: { key: string; reason: string }[] }> {
  const out = { indexed: 0, written: [] as string[], failed: [] as { key: string; reason: string }[] };
  let pending: PackContents[] = [];
  const flush = async () => {
    if (pending.length === 0) return;
    out.written.push(await writeIndexObject(deps, index, pending));
    out.indexed += pending.length;
    pending = [];
  };
  for (const o of packs) {
    if (!keepGoing()) break;
    const packId = packIdOfKey(o.key)!;
    let contents: PackContents | undefined;
    try {
      contents = await deps.repository.fetchPackTrailer(packId, o.size);
    } catch (err) {
      if (!(err instanceof Corrupt)) throw err;
      out.failed.push({ key: o.key, reason: `referenced but in no index object, and its trailer does not open: ${err.message}` });
    }
    if (contents) pending.push(contents); // undefined: deleted meanwhile, nothing to list
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
    const replaced = rest.length > 0;
    if (replaced) out.written.push(await writeIndexObject(deps, index, rest));
    const deleted = contents ? await deps.admin.delete([oldKey]) : { deleted: [oldKey], failed: [] };
    if (deleted.failed.length > 0) {
      out.failed.push(...deleted.failed);
      for (const p of index.objects.get(indexId)!.packs) if (packs.has(p)) out.kept.add(p);
    } else {
      if (replaced) out.rewritten++;
      else if (contents) out.dropped++;
      index.remove(indexId);
    }
  }
  return out;
}
