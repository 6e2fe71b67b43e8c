/**
 * Garbage collection's mark (gc.ts): what the repository's manifests reference, read a
 * batch of new manifests at a time (the sweep marks again before each batch, and after
 * it to find late references).
 */
import { Corrupt } from '../../contracts/errors.ts';
import { chunkIdOfKey, objectKeys, packIdOfKey } from '../format.ts';
import type { Repository } from '../open.ts';
import type { ChunkIdSet } from './chunk-id-set.ts';
import type { ListedObject, RepositoryAdmin } from '../admin.ts';

export interface MarkDeps {
  admin: RepositoryAdmin;
  repository: Repository;
  /**
   * A backup's status in the catalog (undefined: the catalog has no record of it, e.g. a
   * replica's). The manifests of a `failed` backup are garbage: never read, nothing marked
   * (gc.ts deletes them after the grace period). A manifest of a `running` backup that does
   * not open is an upload cut off (nothing can restore from it): reported, not fatal.
   */
  backupStatus?: (backupId: string) => string | undefined;
}

/** What the mark read and what it passed over. */
export interface MarkNotes {
  /** Manifests of `running` backups that do not open (an upload cut off), with the reason. */
  unreadable: { manifest: string; reason: string }[];
}

const MANIFEST = /^manifests\/([^/]+)\/(.+)\.manifest$/;

/** What the manifests read so far reference. */
export interface Marks {
  /** Chunk ids format-1 manifests reference (their objects are `chunks/<xx>/<id>`). */
  chunks: Set<string>;
  /** Pack ids format-2 manifests list. */
  packs: Set<string>;
  /** Chunk ids format-2 and -3 manifests reference, while collected (for `reclaimableInPacks` only; 8 bytes each). */
  packedChunks?: ChunkIdSet;
}
export const noMarks = (): Marks => ({ chunks: new Set(), packs: new Set() });

/** Is the chunk object or pack at `key` referenced? (Any other key under the swept prefixes is not.) */
export function isMarked(marks: Marks, key: string): boolean {
  const chunk = chunkIdOfKey(key);
  if (chunk) return marks.chunks.has(chunk);
  const pack = packIdOfKey(key);
  return pack !== undefined && marks.packs.has(pack);
}

/** Reads the manifests not seen yet and marks what they reference; `onObject` sees each object key a manifest needs. */
export async function markNew(
  deps: MarkDeps,
  seen: Set<string>,
  marks: Marks,
  onObject?: (manifest: string, key: string) => void,
  notes?: MarkNotes,
): Promise<number> {
  let added = 0;
  const fresh: ListedObject[] = [];
  for await (const o of deps.admin.list('manifests/')) if (MANIFEST.test(o.key) && !seen.has(o.key)) fresh.push(o);
  for (const o of fresh) {
    const [, backupId, diskId] = MANIFEST.exec(o.key)!;
    const status = deps.backupStatus?.(backupId!);
    if (status === 'failed') continue;
    const sealed = await deps.repository.store.get(o.key);
    if (!sealed) continue; // pruned between list and get
    const unreadable = (err: unknown) => {
      if (status === 'running') {
        notes?.unreadable.push({ manifest: o.key, reason: (err as Error).message });
        return;
      }
      throw new Corrupt(
        `garbage collection stopped: manifest ${o.key} of backup ${backupId} (${status ?? 'not in the catalog'}) does not open, so the chunks it needs are unknown; ` +
          `deep-verify backup ${backupId} (it is then marked damaged) and prune it by name (Prune workflow input { "policyId": "<its policy>", "backupId": "${backupId}" }), ` +
          `or put the manifest back from a replica (${(err as Error).message})`,
        err,
      );
    };
    // Streamed: a piece at a time; what it marks is per pack (format 2 and 3) or per chunk object (format 1).
    try {
      const m = await deps.repository.manifestFromSealed(sealed, backupId!, diskId!);
      // A pack is named once per piece (a piece's pack table); the previous piece's are skipped.
      let previous = new Set<string>();
      for await (const b of m.batches()) {
        if (m.info.version === 1) {
          for (let i = 0; i < b.count; i++) {
            const id = b.id(i);
            if (id === null) continue;
            onObject?.(o.key, objectKeys.chunk(id));
            marks.chunks.add(id);
          }
          continue;
        }
        const these = new Set<string>();
        for (const p of b.packs) {
          these.add(p.id);
          if (previous.has(p.id)) continue;
          onObject?.(o.key, objectKeys.pack(p.id));
          marks.packs.add(p.id);
        }
        previous = these;
        if (marks.packedChunks)
          for (let i = 0; i < b.count; i++) {
            const id = b.id(i);
            if (id !== null) marks.packedChunks.add(id);
          }
      }
    } catch (err) {
      unreadable(err);
      seen.add(o.key);
      continue;
    }
    seen.add(o.key);
    added++;
  }
  return added;
}
