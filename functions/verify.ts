/**
 * Verify: every chunk the VM's new manifests reference exists in the repository with
 * the stored size the mover recorded. Reads manifests and HEADs chunks; never downloads
 * chunk data.
 */
import { z } from 'zod';
import { VerifyFailed } from '../core/errors.ts';
import { decodeManifest, keys, type RepositoryKeys } from '../core/format.ts';
import type { DiskResult, VmJob } from '../core/jobs.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { mapLimit } from '../core/concurrency.ts';
import { clients } from './commons/clients.ts';
import { lambdaHandler } from './commons/lambda.ts';
import { diskResult, vmJob } from './commons/schemas.ts';

export interface VerifyInput extends VmJob {
  disks: DiskResult[];
}

export interface VerifyOutput {
  chunksChecked: number;
  bytesChecked: number;
  /** Chunks whose store-side SHA-256 matched the manifest (0 on stores that keep none). */
  checksumsCompared: number;
}

export async function verify(input: VerifyInput, deps: { store: ObjectStore; keys: RepositoryKeys; concurrency?: number }): Promise<VerifyOutput> {
  if (!input.snapshot || input.disks.length !== input.snapshot.disks.length) {
    throw new VerifyFailed(`backup ${input.backupId} of VM '${input.vmId}' has ${input.disks.length} disk results for ${input.snapshot?.disks.length ?? 0} snapshot disks`);
  }
  return verifyManifests(input.backupId, input.disks, deps);
}

/**
 * Every chunk the backup's disk manifests reference is in `store` with the stored size
 * (and, where the store keeps one, the SHA-256) the manifest records. Verify runs it on a
 * new backup; VerifyReplica on the copy in a DR repository.
 */
export async function verifyManifests(backupId: string, disks: { diskId: string; manifestKey: string }[], deps: { store: ObjectStore; keys: RepositoryKeys; concurrency?: number }): Promise<VerifyOutput> {
  let chunksChecked = 0;
  let bytesChecked = 0;
  let checksumsCompared = 0;
  for (const disk of disks) {
    const sealed = await deps.store.get(disk.manifestKey);
    if (!sealed) throw new VerifyFailed(`manifest ${disk.manifestKey} of disk '${disk.diskId}' is missing`);
    const manifest = await decodeManifest(deps.keys, sealed, backupId, disk.diskId);
    const ids = [...new Set(manifest.chunks.filter((c): c is string => c !== null))];
    await mapLimit(ids, deps.concurrency ?? 16, async (id) => {
      const key = keys.chunk(id);
      const info = await deps.store.head(key);
      if (!info) throw new VerifyFailed(`chunk ${key} of disk '${disk.diskId}' (backup ${backupId}) is missing from the repository`);
      const expected = manifest.storedSizes[id];
      if (info.size !== expected) throw new VerifyFailed(`chunk ${key} of disk '${disk.diskId}' is ${info.size} bytes, the manifest expects ${expected}`);
      const digest = manifest.storedSha256?.[id];
      if (digest && info.sha256) {
        checksumsCompared++;
        if (info.sha256 !== digest) throw new VerifyFailed(`chunk ${key} of disk '${disk.diskId}' has SHA-256 ${info.sha256} in the store, the manifest expects ${digest}`);
      }
      chunksChecked++;
      bytesChecked += info.size;
    });
  }
  return { chunksChecked, bytesChecked, checksumsCompared };
}

export const verifyOutput: z.ZodType<VerifyOutput> = z.looseObject({ chunksChecked: z.number(), bytesChecked: z.number(), checksumsCompared: z.number() });
export const verifyInput: z.ZodType<VerifyInput> = z.intersection(vmJob, z.looseObject({ disks: z.array(diskResult) }));

export const handler = lambdaHandler('Verify', verifyInput, async (input) => {
  const c = clients();
  const { bucket, endpoint } = input.repository;
  return verify(input, { store: c.store(bucket, endpoint), keys: await c.repositoryKeys(bucket, endpoint) });
});
