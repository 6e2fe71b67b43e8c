/**
 * What a backup need not read: the parent backup's manifest, walked in step with the disk
 * (the parent's chunk at the same offset is reused without any request), the extents
 * changed since the parent (changed-block tracking), and the holes the source reports.
 */
import type { ChangeTracking } from '../../contracts/jobs.ts';
import type { ParentCursor } from '../../repository/parent-chunks.ts';
import { holdsData, type Extent } from '../sources/source.ts';
import type { BackupDiskOptions } from './backup-options.ts';
import type { Entry } from './backup-entries.ts';

/**
 * The parent backup's manifest, walked in step with the disk (`cursor`: the parent's
 * chunk at the same offset is reused without any request, and is what an unchanged
 * extent holds), or why the parent cannot serve as the base of a changed-block read
 * (`unusable`: the repository says when a parent's format or chunk size rules it out).
 */
export interface ParentChunks {
  cursor?: ParentCursor;
  unusable?: string;
}

export async function openParent(o: BackupDiskOptions, firstChunk: number): Promise<ParentChunks> {
  if (!o.parentManifestKey || !o.parentBackupId) return { unusable: 'the disk has no parent backup' };
  const parent = await o.repository.openParent(o.parentBackupId, o.disk.diskId, { chunkSize: o.chunkSize, from: firstChunk });
  // The parent was pruned: every chunk is looked up in the repository's index instead.
  if (!parent) return { unusable: `the parent backup's manifest ${o.parentManifestKey} is gone` };
  if ('unusable' in parent) return parent;
  const { cursor, sizeBytes } = parent;
  if (sizeBytes !== o.disk.sizeBytes) return { cursor, unusable: `the disk was resized (${sizeBytes} bytes in the parent backup, ${o.disk.sizeBytes} now)` };
  return { cursor };
}

/** The parent's chunk at `i` as this backup may reuse it: not a quarantined one (undefined then, or past the parent's end). */
export function parentEntry(parent: ParentChunks, i: number, heal: ReadonlySet<string> | undefined): Entry | undefined {
  const e = parent.cursor?.get(i);
  if (e === undefined || e === null) return e;
  return heal?.has(e.id) ? undefined : e;
}

/**
 * The extents changed since the parent backup, when both the source (a dirty bitmap) and
 * the parent manifest can be trusted; otherwise why not: every byte is read then and
 * compared by id, which is always correct, only slower.
 */
async function changedSinceParent(o: BackupDiskOptions, parent: ParentChunks): Promise<{ extents?: Extent[]; tracking?: ChangeTracking }> {
  const offered = o.disk.changeTracking;
  if (!offered) return {};
  if (!('since' in offered)) return { tracking: { used: false, reason: offered.unavailable } };
  if (parent.unusable) return { tracking: { used: false, reason: parent.unusable } };
  if (offered.sinceBackupId !== o.parentBackupId)
    return { tracking: { used: false, reason: `the source tracks changes since backup ${offered.sinceBackupId}, not since the parent ${o.parentBackupId}` } };
  const extents = await o.reader.changed?.();
  if (!extents) return { tracking: { used: false, reason: 'the source could not list the changed extents (too many, or no dirty bitmap on the export)' } };
  return { extents, tracking: { used: true, since: offered.since } };
}

/** Which chunks are not read, and how change tracking was used (for the disk's result). */
export interface Unread {
  /** The chunk is in a hole of the disk: it reads as zeros, so it is a zero chunk, and it is not read. */
  inHole(i: number): boolean;
  /** The parent's entry for a chunk no changed extent touches (undefined: the chunk is read). */
  unchanged(i: number): Entry | undefined;
  tracking?: ChangeTracking;
}

export async function unreadChunks(o: BackupDiskOptions, parent: ParentChunks): Promise<Unread> {
  const { chunkSize, disk } = o;
  // A chunk in a hole of the disk reads as zeros: it is a zero chunk, and it is not read.
  const extents = await o.reader.allocated?.();
  const chunkLength = (i: number) => Math.min(chunkSize, disk.sizeBytes - i * chunkSize);
  // Changed-block tracking: a chunk no changed extent touches holds what the parent's chunk
  // at the same offset held, so it is taken from the parent manifest without being read.
  const { extents: changed, tracking } = await changedSinceParent(o, parent);
  return {
    inHole: (i) => extents !== undefined && !holdsData(extents, i * chunkSize, chunkLength(i)),
    // (The parent's entries up to the chunk asked for are read: `parent.cursor.ensure`.)
    unchanged: (i) => {
      if (!changed || holdsData(changed, i * chunkSize, chunkLength(i))) return undefined;
      return parentEntry(parent, i, o.healChunks); // a quarantined chunk is read again
    },
    ...(tracking ? { tracking } : {}),
  };
}
