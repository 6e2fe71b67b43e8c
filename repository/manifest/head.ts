/**
 * Manifest format 3's head: the object at `manifests/<backupId>/<diskId>.manifest`, a small
 * sealed JSON document naming the pieces (piece.ts) that hold the disk's entries, in disk
 * order. A disk's head may name pieces that segments of it wrote (JoinSegments joins them
 * by writing a head, without reading an entry).
 */
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../format.ts';
import { MAX_PIECE_ENTRIES } from './piece.ts';

/** One piece a head names: [owner (index into `owners`), first chunk, entries, sealed bytes]. */
export type PieceRef = [owner: number, firstChunk: number, count: number, bytes: number];

export interface ManifestHead {
  version: 3;
  backupId: string;
  /** The manifest id: a disk id, or a segment's (core/jobs.ts segmentManifestId). */
  diskId: string;
  sizeBytes: number;
  chunkSize: number;
  /** The chunks it covers: `from` … `to - 1` (a whole disk: 0 … ceil(sizeBytes / chunkSize)). */
  from: number;
  to: number;
  /** Manifest ids whose pieces it names (its own, or its segments'). */
  owners: string[];
  /** In disk order, each starting where the one before ended. */
  pieces: PieceRef[];
}

/** The object key of the piece starting at `firstChunk` written for manifest `owner` of `backupId`. */
export const pieceKey = (backupId: string, owner: string, firstChunk: number): string => `${objectKeys.manifest(backupId, owner)}.pieces/${firstChunk}`;

/** The purpose a piece is sealed for: bound to its key, so no piece passes for another. */
export const piecePurpose = (key: string): string => `manifest-piece:${key}`;

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Checks an opened version-3 head field by field (`o.version` is 3). */
export function checkHead(o: Record<string, unknown>, backupId: string, diskId: string): ManifestHead {
  const bad = (what: string) => new Corrupt(`manifest ${backupId}/${diskId} is inconsistent: ${what}`);
  if (o.backupId !== backupId || o.diskId !== diskId) throw bad(`it names ${JSON.stringify(o.backupId)}/${JSON.stringify(o.diskId)}`);
  if (!isCount(o.sizeBytes)) throw bad(`sizeBytes ${JSON.stringify(o.sizeBytes)}`);
  if (!isCount(o.chunkSize) || o.chunkSize === 0) throw bad(`chunkSize ${JSON.stringify(o.chunkSize)}`);
  const total = Math.ceil(o.sizeBytes / o.chunkSize);
  if (!isCount(o.from) || !isCount(o.to) || o.from > o.to || o.to > total)
    throw bad(`covers chunks ${JSON.stringify(o.from)} to ${JSON.stringify(o.to)} of ${total}`);
  if (!Array.isArray(o.owners) || o.owners.some((w) => typeof w !== 'string' || w.length === 0)) throw bad('owners is not a list of manifest ids');
  if (!Array.isArray(o.pieces)) throw bad('pieces is not a list');
  let next = o.from;
  for (const [i, p] of (o.pieces as unknown[]).entries()) {
    const r = p as number[];
    if (!Array.isArray(p) || p.length !== 4 || !p.every(isCount) || r[0]! >= o.owners.length || r[2] === 0 || r[2]! > MAX_PIECE_ENTRIES) {
      throw bad(`piece ${i} is ${JSON.stringify(p)?.slice(0, 80)}, not [owner, first chunk, entries, bytes]`);
    }
    if (r[1] !== next) throw bad(`piece ${i} starts at chunk ${r[1]}, the pieces before it end at ${next}`);
    next += r[2]!;
  }
  if (next !== o.to) throw bad(`its pieces end at chunk ${next}, it covers up to ${o.to}`);
  return o as unknown as ManifestHead;
}
