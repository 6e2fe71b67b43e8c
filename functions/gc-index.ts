/**
 * The repository's index as garbage collection sees it: which index objects list which
 * packs, and taking deleted packs out of them (core/packs.ts has the format).
 */
import { Corrupt } from '../core/errors.ts';
import { keys as objectKeys, type RepositoryKeys } from '../core/format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { decodeIndexObject, encodeIndexObject, newIndexId, type PackContents } from '../core/packs.ts';
import type { RepositoryAdmin } from '../core/repository-admin.ts';

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

export async function readIndexObject(deps: IndexDeps, indexId: string): Promise<PackContents[] | undefined> {
  const sealed = await deps.store.get(objectKeys.index(indexId));
  if (!sealed) return undefined;
  try {
    return await decodeIndexObject(deps.keys, sealed, indexId);
  } catch (err) {
    throw new Corrupt(`garbage collection stopped: index object ${objectKeys.index(indexId)} does not open, so the packs it lists are unknown; delete it (the index is rebuilt from the packs' trailers) or restore it first (${(err as Error).message})`, err);
  }
}

/** What taking packs out of the index did. */
export interface Unindexed {
  /** Packs whose old index object could not be deleted: they must stay. */
  kept: Set<string>;
  rewritten: number;
  dropped: number;
  failed: { key: string; reason: string }[];
  /** Ids of the index objects written in place of the old ones. */
  written: string[];
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
      replacement = { indexId: newId, lastModified: deps.now(), packs: rest.map((p) => p.pack.id) };
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
