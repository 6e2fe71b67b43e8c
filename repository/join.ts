/**
 * JoinSegments' view of a segment's manifest: the pieces a disk's manifest names as they
 * are. Only a manifest written as pieces (format 3) has them.
 */
import { Corrupt } from '../contracts/errors.ts';
import type { ManifestReader, PieceInfo } from './manifest/reader.ts';

/** The pieces of segment manifest `m`, in disk order; throws Corrupt when it was not written as pieces (an older mover's). */
export function segmentPieces(m: ManifestReader): PieceInfo[] {
  const { version, diskId, backupId } = m.info;
  if (version !== 3)
    throw new Corrupt(`segment manifest ${diskId} of backup ${backupId} has format ${version}, written by an older mover; run the backup again`);
  return m.pieces();
}
