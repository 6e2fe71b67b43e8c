/**
 * Verify: every chunk the VM's new manifests reference exists in the repository with
 * the stored size the mover recorded. Reads manifests and HEADs chunk objects (format 1)
 * or packs (format 2, each once); never downloads chunk data.
 */
import { VerifyFailed } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import { verifyInput, verifyOutput, type VerifyInput, type VerifyOutput } from '../../contracts/backup-steps.ts';
import type { Repository } from '../../repository/open.ts';
import { mapLimit } from '../../core/concurrency.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { RECENT_CHUNKS as RECENT, RecentIds } from '../../repository/manifest/recent.ts';

export async function verify(input: VerifyInput, deps: { repository: Repository; concurrency?: number }): Promise<VerifyOutput> {
  if (!input.snapshot || input.disks.length !== input.snapshot.disks.length) {
    throw new VerifyFailed(
      `backup ${input.backupId} of VM '${input.vmId}' has ${input.disks.length} disk results for ${input.snapshot?.disks.length ?? 0} snapshot disks`,
    );
  }
  return verifyManifests(input.backupId, input.disks, deps);
}

/**
 * Every chunk the backup's disk manifests reference is in `store`: a format-1 manifest's
 * chunk objects with the stored size (and, where the store keeps one, the SHA-256) the
 * manifest records; a format-2 manifest's packs, each HEADed once (also when several disks
 * share it) and of exactly the size the manifest records, which covers every chunk's range
 * (decodeManifest checked that each lies within its pack's recorded size). Verify runs it
 * on a new backup; VerifyReplica on the copy in a DR repository.
 */
export async function verifyManifests(
  backupId: string,
  disks: { diskId: string; manifestKey: string }[],
  deps: { repository: Repository; concurrency?: number },
): Promise<VerifyOutput> {
  let chunksChecked = 0;
  let bytesChecked = 0;
  let checksumsCompared = 0;
  let packsChecked = 0;
  const concurrency = deps.concurrency ?? 16;
  /** Packs HEADed lately (disks and pieces share packs): each one's size in the store, or undefined when missing. Bounded. */
  const packs = new Map<string, Promise<number | undefined>>();
  const headPack = (key: string): Promise<number | undefined> => {
    let size = packs.get(key);
    if (!size) {
      packs.set(
        key,
        (size = deps.repository.store.head(key).then((info) => {
          if (!info) return undefined;
          packsChecked++;
          bytesChecked += info.size;
          return info.size;
        })),
      );
      if (packs.size > RECENT) packs.delete(packs.keys().next().value!);
    }
    return size;
  };
  for (const disk of disks) {
    const sealed = await deps.repository.store.get(disk.manifestKey);
    if (!sealed) throw new VerifyFailed(`manifest ${disk.manifestKey} of disk '${disk.diskId}' is missing`);
    const manifest = await deps.repository.manifestFromSealed(sealed, backupId, disk.diskId);
    // Chunks counted once each (a repeat of a recent one is not counted again); a piece at a time.
    const recent = new RecentIds();
    const fresh = (id: string) => recent.fresh(id);
    for await (const batch of manifest.batches()) {
      if (manifest.info.version !== 1) {
        await mapLimit(batch.packs, concurrency, async (pack) => {
          const key = objectKeys.pack(pack.id);
          const got = await headPack(key);
          if (got === undefined) throw new VerifyFailed(`pack ${key} of disk '${disk.diskId}' (backup ${backupId}) is missing from the repository`);
          if (got !== pack.size)
            throw new VerifyFailed(`pack ${key} of disk '${disk.diskId}' (backup ${backupId}) is ${got} bytes, the manifest expects ${pack.size}`);
        });
        for (let i = 0; i < batch.count; i++) {
          const id = batch.id(i);
          if (id !== null && fresh(id)) chunksChecked++;
        }
        continue;
      }
      const objects: { id: string; length: number; sha256: string | undefined }[] = [];
      for (let i = 0; i < batch.count; i++) {
        const id = batch.id(i);
        if (id !== null && fresh(id)) objects.push({ id, length: batch.location(i)!.length, sha256: batch.sha256?.(i) });
      }
      await mapLimit(objects, concurrency, async ({ id, length, sha256 }) => {
        const key = objectKeys.chunk(id);
        const info = await deps.repository.store.head(key);
        if (!info) throw new VerifyFailed(`chunk ${key} of disk '${disk.diskId}' (backup ${backupId}) is missing from the repository`);
        if (info.size !== length)
          throw new VerifyFailed(`chunk ${key} of disk '${disk.diskId}' (backup ${backupId}) is ${info.size} bytes, the manifest expects ${length}`);
        if (sha256 && info.sha256) {
          checksumsCompared++;
          if (info.sha256 !== sha256)
            throw new VerifyFailed(
              `chunk ${key} of disk '${disk.diskId}' (backup ${backupId}) has SHA-256 ${info.sha256} in the store, the manifest expects ${sha256}`,
            );
        }
        chunksChecked++;
        bytesChecked += info.size;
      });
    }
  }
  return { chunksChecked, bytesChecked, checksumsCompared, packsChecked };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Verify', verifyInput, async (input) => {
      const { bucket, endpoint } = input.repository;
      return verifyOutput.parse(await verify(input, { repository: await c.repository(bucket, endpoint) }));
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
