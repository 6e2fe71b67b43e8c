/**
 * The objects a manifest references, whatever its version: packs (formats 2 and 3), or a
 * chunk stored as its own object (format 1). Verify HEADs them, replication copies them
 * (replica.ts); neither knows which format wrote the manifest.
 */
import type { ManifestBatch, ManifestInfo, PieceInfo } from './manifest/reader.ts';
import { MAX_PIECE_ENTRIES } from './manifest/piece.ts';

/** A chunk of a batch, and where in its object it is stored. */
export interface ReferencedChunk {
  id: string;
  offset: number;
  length: number;
}

/** An object a manifest's batch references. */
export interface ReferencedObject {
  /** A pack (many chunks, with a trailer) or a single chunk's own object (format 1): how messages and counts name it. */
  kind: 'pack' | 'chunk';
  /** Its id: the pack's, or the chunk's. */
  id: string;
  key: string;
  /** Its stored size, as the manifest records it. */
  size: number;
  /** The stored bytes' base64 SHA-256, where the manifest kept one (format 1). */
  sha256?: string;
  /** The batch's chunks stored in it that `fresh` let through. */
  chunks: ReferencedChunk[];
}

/** What a batch references: the chunks `fresh` let through (zeros never), and the objects holding them, each once. */
export interface BatchReferences {
  chunks: number;
  objects: ReferencedObject[];
}

/**
 * The objects holding the chunks of `b` that `fresh` lets through (a `RecentIds`'s `fresh`,
 * so a chunk repeated close by is handled once), each with those chunks.
 */
export function referencedObjects(b: ManifestBatch, fresh: (id: string) => boolean = () => true): BatchReferences {
  const byKey = new Map<string, ReferencedObject>();
  let chunks = 0;
  for (let i = 0; i < b.count; i++) {
    const id = b.id(i);
    if (id === null || !fresh(id)) continue;
    chunks++;
    const loc = b.location(i)!;
    let o = byKey.get(loc.key);
    if (!o) {
      const sha256 = loc.pack ? undefined : b.sha256?.(i);
      o = loc.pack
        ? { kind: 'pack', id: loc.pack.id, key: loc.key, size: loc.pack.size, chunks: [] }
        : { kind: 'chunk', id, key: loc.key, size: loc.length, ...(sha256 ? { sha256 } : {}), chunks: [] };
      byKey.set(loc.key, o);
    }
    o.chunks.push({ id, offset: loc.offset, length: loc.length });
  }
  return { chunks, objects: [...byKey.values()] };
}

/** Consecutive pieces of one manifest, checked by one Verify invocation: pieces `firstPiece` … `firstPiece + pieces - 1`, chunks `from` … `to - 1`. */
export interface PieceRange {
  firstPiece: number;
  pieces: number;
  from: number;
  to: number;
}

/**
 * A manifest's pieces in runs of at most `perRange`, from its head alone (no piece is read):
 * version 3's pieces as its head names them; versions 1 and 2 (one document) as the batches
 * their reader serves, `MAX_PIECE_ENTRIES` chunks each.
 */
export function pieceRanges(info: ManifestInfo, pieces: readonly Pick<PieceInfo, 'firstChunk' | 'count'>[], perRange: number): PieceRange[] {
  if (!(Number.isSafeInteger(perRange) && perRange >= 1)) throw new RangeError(`pieces per Verify range ${perRange} (an integer, at least 1)`);
  const bounds =
    info.version === 3
      ? pieces.map((p) => [p.firstChunk, p.firstChunk + p.count] as const)
      : Array.from({ length: Math.ceil((info.to - info.from) / MAX_PIECE_ENTRIES) }, (_, i) => {
          const first = info.from + i * MAX_PIECE_ENTRIES;
          return [first, Math.min(info.to, first + MAX_PIECE_ENTRIES)] as const;
        });
  const out: PieceRange[] = [];
  for (let first = 0; first < bounds.length; first += perRange) {
    const last = Math.min(bounds.length, first + perRange) - 1;
    out.push({ firstPiece: first, pieces: last - first + 1, from: bounds[first]![0], to: bounds[last]![1] });
  }
  return out;
}

/** How many pieces a manifest has (versions 1 and 2: its batches), from its head alone. */
export const pieceCount = (info: ManifestInfo, pieces: readonly unknown[]): number =>
  info.version === 3 ? pieces.length : Math.ceil((info.to - info.from) / MAX_PIECE_ENTRIES);
