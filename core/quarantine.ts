/**
 * Quarantine of damaged chunks. A deep verification that finds a chunk object damaged
 * (or missing) hands it to the control plane, which copies the object to
 * `quarantine/<verifyId>/<chunk key>` for forensics, deletes it from `chunks/` and
 * records the chunk id in the catalog. Plan gives each backup job the repository's
 * quarantined ids; the mover treats them as unknown even when the parent manifest lists
 * them, finds them missing and uploads them again. Chunks are content-addressed, so one
 * healthy copy repairs every backup that references the chunk.
 */

/** The repository prefix of quarantined objects: written and read by the control plane only; never swept by GC. */
export const QUARANTINE_PREFIX = 'quarantine/';

/**
 * At most this many quarantined chunk ids travel with one backup job (the oldest first):
 * a Step Functions state's data is limited to 256 KiB and a run carries every VM's job.
 * Further ids follow in later runs, as deep verifications clear healed ones.
 */
export const MAX_HEAL_CHUNKS_PER_JOB = 100;

/** Where a damaged chunk object is kept: under the verification that found it, so repeated incidents keep every copy. */
export function quarantineKey(verifyId: string, chunkKey: string): string {
  return `${QUARANTINE_PREFIX}${verifyId}/${chunkKey}`;
}
