/**
 * QuarantineDamage (Deep verify workflow, after RecordDeepVerify found damage): moves
 * each damaged chunk object aside — a copy under `quarantine/<verifyId>/` for forensics,
 * then deleted from `chunks/` — and records its id in the catalog, so the next backup
 * of any VM that has the chunk uploads it again (Plan passes the ids to each job; the
 * mover does not trust the parent manifest for them). Movers never delete: this is the
 * control plane's job. Manifest damage is not healed here (findings without a chunk key).
 *
 * A chunk object that opens and matches its id by now (a writer replaced an object of
 * the wrong size meanwhile) is left alone and not recorded.
 */
import { z } from 'zod';
import { mapLimit } from '../core/concurrency.ts';
import { locationKey } from '../core/endpoints.ts';
import { chunkId, chunkIdOfKey, open, type RepositoryKeys } from '../core/format.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { quarantineKey } from '../core/quarantine.ts';
import type { RepositoryAdmin } from '../core/repository-admin.ts';
import type { RecoveryCatalog } from './catalog/recovery-catalog.ts';
import { clients } from './commons/clients.ts';
import { lambdaHandler } from './commons/lambda.ts';
import { repositoryLocation } from './commons/schemas.ts';

const text = z.string().min(1);
export const quarantineInput = z.looseObject({
  verifyId: text, vmId: text, backupId: text, repository: repositoryLocation,
  findings: z.array(z.looseObject({ objectKey: text, reason: z.string() })),
});

export interface QuarantineReport {
  /** Chunks recorded for re-upload; `quarantineKey` where a damaged object was kept (none for a missing one). */
  quarantined: { chunkId: string; objectKey: string; quarantineKey?: string }[];
  /** Chunk objects that open and match their id by now: left alone. */
  alreadyHealthy: string[];
  /** Deletions the store refused (permissions); the chunk stays recorded, the object in place. */
  failed: { key: string; reason: string }[];
  /** Findings that name no chunk (a manifest): not healable by a re-upload. */
  notChunks: string[];
}

export interface QuarantineDeps {
  store: ObjectStore;
  admin: RepositoryAdmin;
  keys: RepositoryKeys;
  recovery: Pick<RecoveryCatalog, 'putQuarantine'>;
  now: () => Date;
}

async function stillDamaged(keys: RepositoryKeys, id: string, body: Buffer): Promise<boolean> {
  try {
    return chunkId(keys, await open(keys, body, id)) !== id;
  } catch {
    return true;
  }
}

export async function quarantineDamage(input: z.output<typeof quarantineInput>, deps: QuarantineDeps): Promise<QuarantineReport> {
  const repository = locationKey(input.repository);
  const report: QuarantineReport = { quarantined: [], alreadyHealthy: [], failed: [], notChunks: [] };
  const byKey = new Map<string, string>();
  for (const f of input.findings) {
    if (byKey.has(f.objectKey)) continue;
    if (chunkIdOfKey(f.objectKey)) byKey.set(f.objectKey, f.reason);
    else if (!report.notChunks.includes(f.objectKey)) report.notChunks.push(f.objectKey);
  }
  const at = deps.now().toISOString();
  const toDelete: string[] = [];
  await mapLimit([...byKey], 8, async ([objectKey, reason]) => {
    const id = chunkIdOfKey(objectKey)!;
    const body = await deps.store.get(objectKey);
    if (body && !(await stillDamaged(deps.keys, id, body))) {
      report.alreadyHealthy.push(objectKey);
      return;
    }
    // The record first: whatever happens next, the next backups re-check this chunk.
    const kept = body ? quarantineKey(input.verifyId, objectKey) : undefined;
    await deps.recovery.putQuarantine(repository, {
      chunkId: id, objectKey, ...(kept ? { quarantineKey: kept } : {}), reason, vmId: input.vmId, backupId: input.backupId, verifyId: input.verifyId, quarantinedAt: at,
    });
    if (body) {
      await deps.store.put(kept!, body);
      toDelete.push(objectKey);
    }
    report.quarantined.push({ chunkId: id, objectKey, ...(kept ? { quarantineKey: kept } : {}) });
  });
  if (toDelete.length > 0) report.failed = (await deps.admin.delete(toDelete.sort())).failed;
  report.quarantined.sort((a, b) => a.objectKey.localeCompare(b.objectKey));
  return report;
}

export const handler = lambdaHandler('QuarantineDamage', quarantineInput, async (input) => {
  const c = clients();
  const { bucket, endpoint } = input.repository;
  return quarantineDamage(input, { store: c.store(bucket, endpoint), admin: c.admin(bucket, endpoint), keys: await c.repositoryKeys(bucket, endpoint), recovery: c.recovery, now: () => new Date() });
});
