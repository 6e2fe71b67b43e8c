/** Finding the backup a restore or verification names, with clear errors when it cannot. */
import { location, type RepositoryLocation } from '../../contracts/endpoints.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { Backup, Catalog, Policy } from '../catalog/catalog.ts';
import type { BackupDamage } from '../catalog/recovery-catalog.ts';

export interface ResolvedBackup {
  backup: Backup & { disks: NonNullable<Backup['disks']> };
  bucket: string;
  /** The backup's repository: its bucket and, when not the stack's own S3, its endpoint. */
  repository: RepositoryLocation;
  /** The backup's policy, when it still exists. */
  policy?: Policy;
  /**
   * When no backup was named and newer ones are damaged: what the caller must say out
   * loud, that an older backup is used instead (never a silent fall-back).
   */
  notice?: string;
}

/**
 * Why a damaged backup is not restored, before anything is written: the backup, its first
 * damaged chunk (disk, offset, where it is stored), the verification that found it (of
 * this backup, or of another that shares the chunk), and the next steps: heal it, or
 * restore an older backup (named, when there is one).
 */
async function damagedMessage(catalog: Catalog, backup: Backup): Promise<string> {
  const damage = (backup as Backup & { damage?: BackupDamage }).damage;
  const f = damage?.findings[0];
  const chunks = new Set(damage?.findings.map((x) => x.chunkId ?? x.objectKey));
  const what = f
    ? `${f.chunkId ? `chunk ${f.chunkId}` : `object ${f.objectKey}`} (disk '${f.diskId}'${f.offsets.length ? `, offset ${f.offsets[0]}` : ''}, stored in ${f.objectKey}${f.range ? ` bytes ${f.range.offset}+${f.range.length}` : ''})${chunks.size > 1 ? ` and ${chunks.size - 1} more` : ''} does not open`
    : 'objects do not open';
  const by = damage?.foundIn
    ? `found by deep verification ${damage.verifyId} of backup '${damage.foundIn.backupId}' (VM '${damage.foundIn.vmId}'), which shares the chunk`
    : `found by deep verification ${damage?.verifyId ?? '(unknown)'}`;
  const all = await catalog.listBackups(backup.vmId); // newest first
  const older = all.slice(all.findIndex((b) => b.backupId === backup.backupId) + 1).find((b) => b.status === 'committed');
  return (
    `backup '${backup.backupId}' of VM '${backup.vmId}' is damaged: ${what}, ${by}; nothing was restored. ` +
    `To heal it, let the next backup of a VM that holds the chunk store it again (backups do that by themselves), then deep-verify backup '${backup.backupId}' in full` +
    (older
      ? `; or restore the older backup '${older.backupId}' (committed ${older.committedAt ?? older.startedAt})`
      : '; no older committed backup of this VM exists')
  );
}

/** The location of `bucket` as a policy knows it: its own repository or its DR repository (with their endpoints). */
export function locationOf(policy: Policy | undefined, bucket: string): RepositoryLocation {
  if (policy?.bucket === bucket) return location(bucket, policy.endpoint);
  if (policy?.replicateTo?.bucket === bucket) return location(bucket, policy.replicateTo.endpoint);
  return { bucket };
}

/**
 * The named backup of a VM, or its newest committed one. Only committed backups (and,
 * with `allowDamaged`, damaged ones) qualify: running, failed and pruning ones do not.
 */
export async function resolveBackup(
  catalog: Catalog,
  vmId: string,
  backupId: string | undefined,
  opts: { allowDamaged?: boolean; bucketIfPolicyGone?: string } = {},
): Promise<ResolvedBackup> {
  const vm = await catalog.getVm(vmId);
  if (!vm) throw new RecoveryRequestInvalid(`VM '${vmId}' is not in the inventory`);
  const usable = (s: string) => s === 'committed' || (opts.allowDamaged === true && s === 'damaged');
  let backup: Backup | undefined;
  let notice: string | undefined;
  if (backupId) {
    backup = await catalog.getBackup(vmId, backupId);
    if (!backup) throw new RecoveryRequestInvalid(`VM '${vmId}' has no backup '${backupId}'`);
    if (!usable(backup.status)) {
      if ((backup.status as string) === 'damaged') throw new RecoveryRequestInvalid(await damagedMessage(catalog, backup));
      throw new RecoveryRequestInvalid(`backup '${backupId}' of VM '${vmId}' is '${backup.status}', not committed`);
    }
  } else {
    const all = await catalog.listBackups(vmId); // newest first
    backup = all.find((b) => usable(b.status));
    if (!backup) {
      const damaged = all.find((b) => (b.status as string) === 'damaged');
      throw new RecoveryRequestInvalid(
        damaged ? `VM '${vmId}' has no committed backup to restore: ${await damagedMessage(catalog, damaged)}` : `VM '${vmId}' has no committed backup`,
      );
    }
    const passed = all.slice(0, all.indexOf(backup)).filter((b) => (b.status as string) === 'damaged');
    if (passed.length) {
      const damage = (passed[0] as { damage?: { verifyId?: string } }).damage;
      notice =
        `the newest backup ${passed[0]!.backupId} of VM '${vmId}' is damaged (deep verification ${damage?.verifyId ?? 'found chunks that do not open'}${passed.length > 1 ? `; ${passed.length - 1} more newer backup(s) too` : ''}): ` +
        `restoring the older backup ${backup.backupId} instead. To restore the newest, let the next backup store its quarantined chunks again and deep-verify it, then restore it by name`;
    }
  }
  if (!backup.disks?.length) throw new RecoveryRequestInvalid(`backup '${backup.backupId}' of VM '${vmId}' records no disks`);
  // Backups outlive their policy: when it is gone, the caller may name the repository.
  const policy = await catalog.getPolicy(backup.policyId);
  const bucket = policy?.bucket ?? opts.bucketIfPolicyGone;
  if (!bucket)
    throw new RecoveryRequestInvalid(
      `backup '${backup.backupId}' of VM '${vmId}' belongs to policy '${backup.policyId}', which is gone, so its repository is unknown; name it with "fromBucket"`,
    );
  return {
    backup: backup as ResolvedBackup['backup'],
    bucket,
    repository: locationOf(policy, bucket),
    ...(policy ? { policy } : {}),
    ...(notice ? { notice } : {}),
  };
}

/** The VMs a policy selects: by id, and every inventory VM on its hosts. */
export async function policyVms(catalog: Catalog, policy: Policy): Promise<string[]> {
  const ids = new Set(policy.vmIds);
  for (const host of policy.hosts ?? []) for (const id of await catalog.vmsOnHost(host)) ids.add(id);
  return [...ids].sort();
}
