/**
 * An incremental backup's base: its parent's manifest walked in step with the disk, each
 * chunk as the new backup may reference it again (its id and the pack it is in). A parent
 * whose chunks are not in packs (format 1: a chunk per object) or of another chunk size is
 * no base: the repository decides, so the mover never asks which format wrote it.
 */
import type { PackRef } from './format.ts';
import { ManifestCursor, type ManifestReader } from './manifest/reader.ts';

/** A parent's chunk as a new backup references it: its id and where it is stored; null for a zero chunk. */
export type ReusableChunk = { id: string; stored: { pack: PackRef; offset: number; length: number } } | null;

/** The parent's chunks at increasing chunk numbers, a bounded window of them in memory (`ManifestCursor`). */
export class ParentCursor {
  private readonly cursor: ManifestCursor;

  constructor(parent: ManifestReader, from: number) {
    this.cursor = new ManifestCursor(parent, from);
  }

  /** Reads the parent's entries until chunk `upTo` is covered, and drops those wholly before `keepFrom` (default `upTo`). */
  ensure(upTo: number, keepFrom = upTo): Promise<void> {
    return this.cursor.ensure(upTo, keepFrom);
  }

  /** Chunk `i` as the parent has it, when an `ensure` read it; undefined past the parent's end or once dropped. */
  get(i: number): ReusableChunk | undefined {
    const e = this.cursor.get(i);
    if (!e) return undefined;
    if (e.id === null) return null;
    const at = e.location;
    if (!at?.pack) return undefined;
    return { id: e.id, stored: { pack: at.pack, offset: at.offset, length: at.length } };
  }

  close(): Promise<void> {
    return this.cursor.close();
  }
}

/** A parent manifest as an incremental's base from chunk `from` on, or why it is none (`unusable`). */
export type ParentBase = { cursor: ParentCursor; sizeBytes: number } | { unusable: string };

/** `parent` as the base of a backup in chunks of `chunkSize`, walked from chunk `from`. */
export function parentBase(parent: ManifestReader, o: { chunkSize: number; from: number }): ParentBase {
  // Format 1 keeps each chunk as its own object; later manifests reference packs only.
  if (parent.info.chunkSize !== o.chunkSize || parent.info.version === 1) return { unusable: 'the parent backup has another chunk size or format' };
  return { cursor: new ParentCursor(parent, o.from), sizeBytes: parent.info.sizeBytes };
}
