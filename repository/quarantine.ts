/**
 * Quarantine of damaged chunks. A deep verification that finds a chunk damaged (or
 * missing) hands it to the control plane, which records the chunk id in the catalog and
 * keeps the damaged bytes under `quarantine/<verifyId>/` for forensics:
 *
 * - Format 1 (a chunk object `chunks/<xx>/<id>`): the object is copied to
 *   `quarantine/<verifyId>/chunks/<xx>/<id>` and deleted from `chunks/`.
 * - Format 2 (a chunk in a pack `packs/<xx>/<packId>`): just the chunk's bytes are copied
 *   to `quarantine/<verifyId>/packs/<xx>/<packId>/<id>`; the pack is NOT deleted (its
 *   other chunks are fine, and other backups reference them).
 *
 * Plan gives each backup job the repository's quarantined ids; the mover treats them as
 * unknown even when the parent manifest or the repository's index lists them, and stores
 * them again (format 2: in a new pack, listed by a new index object). Chunks are
 * content-addressed, so one healthy copy repairs every backup that references the chunk:
 * format 1 under the same key; format 2 because readers (restore, deep verification) fall
 * back to another copy the repository's index lists when the one at the manifest's
 * location is damaged.
 */

/** The repository prefix of quarantined objects: written and read by the control plane only; never swept by GC. */
export const QUARANTINE_PREFIX = 'quarantine/';

/**
 * At most this many quarantined chunk ids travel with one backup job (the oldest first):
 * a Step Functions state's data is limited to 256 KiB and a run carries every VM's job.
 * Further ids follow in later runs, as deep verifications clear healed ones.
 */
export const MAX_HEAL_CHUNKS_PER_JOB = 100;

/**
 * Where the damaged bytes of a chunk are kept: under the verification that found them, so
 * repeated incidents keep every copy. `objectKey` is the chunk object (format 1), or the
 * pack holding the chunk (format 2), then `chunkId` names the chunk within it.
 */
export function quarantineKey(verifyId: string, objectKey: string, chunkId?: string): string {
  return `${QUARANTINE_PREFIX}${verifyId}/${objectKey}${chunkId === undefined ? '' : `/${chunkId}`}`;
}
