/**
 * Damage is a chunk's, not a backup's: a chunk is stored once for every backup that holds
 * it, so when a deep verification finds a chunk damaged, every committed backup whose
 * manifests reference it is damaged too. `shareDamage` (QuarantineDamage) marks each of
 * them `damaged`, naming the chunks and the backup whose verification found them, so a
 * restore of any of them is refused up front instead of failing half-way; `healShared`
 * (RecordDeepVerify) turns them back to `committed` once a full verification found those
 * chunks stored intact again (a good copy serves every manifest that lists the id).
 */
import type { DamageFinding } from '../../contracts/recovery-jobs.ts';
import type { Repository } from '../../repository/open.ts';
import type { ChunkLocation } from '../../repository/packs.ts';
import type { Backup, Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';

/** A backup marked damaged because its manifests reference chunks found damaged in another backup. */
export interface SharedDamage {
  vmId: string;
  backupId: string;
  /** The damaged chunks its manifests reference. */
  chunks: string[];
}

export interface ShareDamageDeps {
  /** The repository the verified backup is in: only backups whose manifests are there share its chunks. */
  repository: Repository;
  catalog: Pick<Catalog, 'backupsWithStatus'>;
  recovery: Pick<RecoveryCatalog, 'markSharedDamage'>;
  now: () => Date;
}

/** The findings of `b`'s manifests that reference `damaged` chunk ids (one per disk and chunk); each manifest read a piece at a time. */
async function findingsOf(b: Backup, damaged: Set<string>, deps: Pick<ShareDamageDeps, 'repository'>, reason: string): Promise<DamageFinding[]> {
  const out: DamageFinding[] = [];
  for (const d of b.disks ?? []) {
    const m = await deps.repository.openManifest(b.backupId, d.diskId);
    if (!m) continue; // a backup of another repository
    const found = new Map<string, { offsets: number[]; loc: ChunkLocation }>();
    for await (const batch of m.batches()) {
      for (let i = 0; i < batch.count; i++) {
        const id = batch.id(i);
        if (id === null || !damaged.has(id)) continue;
        let f = found.get(id);
        if (!f) found.set(id, (f = { offsets: [], loc: batch.location(i)! }));
        f.offsets.push((batch.firstChunk + i) * m.info.chunkSize);
      }
    }
    for (const [id, { offsets, loc }] of found) {
      out.push({
        backupId: b.backupId,
        diskId: d.diskId,
        offsets,
        chunkId: id,
        reason,
        objectKey: loc.key,
        ...(loc.pack ? { range: { offset: loc.offset, length: loc.length } } : {}),
      });
    }
  }
  return out;
}

/**
 * Marks `damaged` every committed backup other than the verified one whose manifests in
 * the repository reference one of `chunkIds`; returns them. A backup already damaged keeps
 * its own findings.
 */
export async function shareDamage(
  verified: { vmId: string; backupId: string; verifyId: string },
  chunkIds: string[],
  deps: ShareDamageDeps,
): Promise<SharedDamage[]> {
  if (chunkIds.length === 0) return [];
  const damaged = new Set(chunkIds);
  const reason = `chunk found damaged by deep verification ${verified.verifyId} of backup ${verified.backupId} (VM '${verified.vmId}'), which shares it`;
  const marked: SharedDamage[] = [];
  const foundAt = deps.now().toISOString();
  for (const b of await deps.catalog.backupsWithStatus(['committed'])) {
    if (b.backupId === verified.backupId) continue;
    const findings = await findingsOf(b, damaged, deps, reason);
    if (findings.length === 0) continue;
    const ok = await deps.recovery.markSharedDamage(b.vmId, b.backupId, {
      verifyId: verified.verifyId,
      foundAt,
      findings,
      foundIn: { vmId: verified.vmId, backupId: verified.backupId },
    });
    if (ok) marked.push({ vmId: b.vmId, backupId: b.backupId, chunks: [...new Set(findings.map((f) => f.chunkId!))].sort() });
  }
  return marked;
}

/**
 * After a full verification found the chunks `healed` intact again: every backup marked
 * damaged only through chunks now healed is `committed` again. Returns them.
 */
export async function healShared(
  healed: string[],
  by: { verifyId: string; healedAt: string },
  deps: { catalog: Pick<Catalog, 'backupsWithStatus'>; recovery: Pick<RecoveryCatalog, 'markHealthy'> },
): Promise<{ vmId: string; backupId: string }[]> {
  if (healed.length === 0) return [];
  const ok = new Set(healed);
  const out: { vmId: string; backupId: string }[] = [];
  for (const b of await deps.catalog.backupsWithStatus(['damaged'])) {
    const damage = (b as Backup & { damage?: { findings?: DamageFinding[]; foundIn?: unknown } }).damage;
    if (!damage?.foundIn || !damage.findings?.length) continue;
    if (!damage.findings.every((f) => f.chunkId !== undefined && ok.has(f.chunkId))) continue;
    if (await deps.recovery.markHealthy(b.vmId, b.backupId, by)) out.push({ vmId: b.vmId, backupId: b.backupId });
  }
  return out;
}
