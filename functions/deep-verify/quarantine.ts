/**
 * QuarantineDamage (Deep verify workflow, after RecordDeepVerify found damage): sets each
 * damaged chunk aside and records its id in the catalog, so the next backup of any VM
 * that has the chunk stores it again (Plan passes the ids to each job; the mover trusts
 * neither the parent manifest nor the repository's index for them). Movers never delete:
 * this is the control plane's job. Manifest damage is not healed here (findings that name
 * no chunk).
 *
 * - A chunk object (`chunks/…`, format 1) is copied to `quarantine/<verifyId>/` for
 *   forensics, then deleted from `chunks/`.
 * - A chunk in a pack (`packs/…`, format 2; the finding's `chunkId` and `range` say which
 *   bytes): those bytes are read again (a range GET) and copied to
 *   `quarantine/<verifyId>/packs/<xx>/<packId>/<chunkId>`; the pack is left in place, as
 *   its other chunks are fine. Readers fall back to the copy the next backup stores.
 *
 * A chunk that opens and matches its id by now (a writer replaced an object of the wrong
 * size meanwhile, or the finding came from a faulty read) is left alone and not recorded.
 *
 * Then every other committed backup whose manifests reference a quarantined chunk is
 * marked damaged too (`recovery/shared-damage.ts`): a restore of any of them is refused
 * up front, naming the chunk, instead of failing half-way.
 */
import { z } from 'zod';
import { mapLimit } from '../../core/concurrency.ts';
import { locationKey, repositoryLocation } from '../../contracts/endpoints.ts';
import { chunkIdOfKey, packIdOfKey } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import { quarantineKey } from '../../repository/quarantine.ts';
import type { RepositoryAdmin } from '../../repository/admin.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { shareDamage, type SharedDamage } from '../recovery/shared-damage.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();
export const quarantineInput = z.looseObject({
  verifyId: text,
  vmId: text,
  backupId: text,
  repository: repositoryLocation,
  findings: z.array(
    z.looseObject({
      objectKey: text,
      reason: z.string(),
      /** Set by movers of format 2 (always for a chunk in a pack). */
      chunkId: z
        .string()
        .regex(/^[0-9a-f]{64}$/, 'must be a chunk id')
        .optional(),
      /** The chunk's bytes in its pack. */
      range: z.object({ offset: count, length: z.number().int().positive() }).strict().optional(),
    }),
  ),
});

export interface QuarantineReport {
  /**
   * Chunks recorded for re-upload; `quarantineKey` where damaged bytes were kept (none for
   * a missing object); `range`: the chunk's bytes in its pack (format 2).
   */
  quarantined: { chunkId: string; objectKey: string; range?: { offset: number; length: number }; quarantineKey?: string }[];
  /** Chunks that open and match their id by now: left alone (a pack's chunk: `<key> bytes <offset>+<length>`). */
  alreadyHealthy: string[];
  /** Deletions the store refused (permissions); the chunk stays recorded, the object in place. */
  failed: { key: string; reason: string }[];
  /** Findings that name no chunk (a manifest): not healable by a re-upload. */
  notChunks: string[];
  /** Other committed backups whose manifests reference a quarantined chunk: marked damaged too. */
  shared: SharedDamage[];
}

export interface QuarantineDeps {
  repository: Repository;
  admin: RepositoryAdmin;
  recovery: Pick<RecoveryCatalog, 'putQuarantine' | 'markSharedDamage'>;
  catalog: Pick<Catalog, 'backupsWithStatus'>;
  now: () => Date;
}

/** One damaged chunk to set aside: a chunk object, or a chunk's bytes in a pack. */
interface Damaged {
  id: string;
  objectKey: string;
  /** Format 2: the chunk's bytes in the pack (absent when the finding did not carry them). */
  range?: { offset: number; length: number };
  packed: boolean;
  reason: string;
}

export async function quarantineDamage(input: z.output<typeof quarantineInput>, deps: QuarantineDeps): Promise<QuarantineReport> {
  const repository = locationKey(input.repository);
  const report: QuarantineReport = { quarantined: [], alreadyHealthy: [], failed: [], notChunks: [], shared: [] };
  // One entry per damaged copy: a chunk on several disks is found once per disk.
  const damaged = new Map<string, Damaged>();
  for (const f of input.findings) {
    const packed = packIdOfKey(f.objectKey) !== undefined;
    const id = packed ? f.chunkId : chunkIdOfKey(f.objectKey);
    if (!id) {
      if (!report.notChunks.includes(f.objectKey)) report.notChunks.push(f.objectKey);
      continue;
    }
    const copy = packed ? `${f.objectKey}#${id}@${f.range?.offset ?? '?'}` : f.objectKey;
    if (!damaged.has(copy)) damaged.set(copy, { id, objectKey: f.objectKey, packed, reason: f.reason, ...(packed && f.range ? { range: f.range } : {}) });
  }
  const at = deps.now().toISOString();
  const toDelete: string[] = [];
  await mapLimit([...damaged.values()], 8, async (x) => {
    // A pack finding without its byte range (not written by this code's movers) cannot be
    // re-read: the chunk is recorded for re-upload, nothing is kept.
    const canRead = !x.packed || x.range !== undefined;
    const body = canRead ? await deps.repository.store.get(x.objectKey, x.range ? { range: x.range } : {}) : undefined;
    const whole = body !== undefined && (!x.range || body.length === x.range.length);
    if (body && whole && (await deps.repository.isIntactChunk(body, x.id))) {
      report.alreadyHealthy.push(x.range ? `${x.objectKey} bytes ${x.range.offset}+${x.range.length}` : x.objectKey);
      return;
    }
    // The record first: whatever happens next, the next backups store this chunk again.
    const kept = body && (!x.packed || body.length > 0) ? quarantineKey(input.verifyId, x.objectKey, x.packed ? x.id : undefined) : undefined;
    await deps.recovery.putQuarantine(repository, {
      chunkId: x.id,
      objectKey: x.objectKey,
      ...(kept ? { quarantineKey: kept } : {}),
      reason: x.reason,
      vmId: input.vmId,
      backupId: input.backupId,
      verifyId: input.verifyId,
      quarantinedAt: at,
    });
    if (kept) {
      await deps.repository.store.put(kept, body!);
      // A chunk object goes; a pack stays (its other chunks are fine).
      if (!x.packed) toDelete.push(x.objectKey);
    }
    report.quarantined.push({ chunkId: x.id, objectKey: x.objectKey, ...(x.range ? { range: x.range } : {}), ...(kept ? { quarantineKey: kept } : {}) });
  });
  if (toDelete.length > 0) report.failed = (await deps.admin.delete(toDelete.sort())).failed;
  report.quarantined.sort((a, b) => a.objectKey.localeCompare(b.objectKey) || (a.range?.offset ?? 0) - (b.range?.offset ?? 0));
  report.shared = await shareDamage(input, [...new Set(report.quarantined.map((q) => q.chunkId))], deps);
  return report;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('QuarantineDamage', quarantineInput, async (input) => {
      const { bucket, endpoint } = input.repository;
      return quarantineDamage(input, {
        repository: await c.repository(bucket, endpoint),
        admin: c.admin(bucket, endpoint),
        recovery: c.recovery,
        catalog: c.catalog,
        now: () => new Date(),
      });
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
