/**
 * Replication of one disk of one backup to a DR repository, done by a mover at the DR
 * site: every chunk the manifest references that the target lacks (HEAD) is read from
 * the source, opened and checked against its id (damage is not copied), and written to
 * the target as stored — same sealed bytes, same key, so the DR repository deduplicates
 * exactly like the source. The manifest is copied last; the first disk also copies the
 * VM config. Re-running copies nothing twice.
 */
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../core/errors.ts';
import { chunkId, decodeManifest, keys as objectKeys, objectSha256, open, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { ReplicatedDisk, ReplicateJob } from '../../core/recovery-jobs.ts';

export interface ReplicateDeps {
  source: { store: ObjectStore; keys: RepositoryKeys };
  target: { store: ObjectStore };
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksCopied: number }) => void;
}

/** Copies `key` unless the target has an object of its size; `knownMissing` skips the target HEAD. */
async function copyIfMissing(key: string, d: ReplicateDeps, check: (sealed: Buffer) => Promise<void>, knownMissing = false): Promise<number> {
  const source = await d.source.store.get(key);
  if (!source) throw new Corrupt(`${key} is missing from the source repository`);
  if (!knownMissing) {
    const there = await d.target.store.head(key);
    if (there && there.size === source.length) return 0;
  }
  await check(source);
  await d.target.store.put(key, source, objectSha256(source));
  return source.length;
}

export async function replicateDisk(job: ReplicateJob, disk: { diskId: string }, index: number, d: ReplicateDeps): Promise<ReplicatedDisk> {
  const started = performance.now();
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealedManifest = await d.source.store.get(manifestKey);
  if (!sealedManifest) throw new Corrupt(`manifest ${manifestKey} is missing from the source repository ${job.source.bucket}`);
  const manifest = await decodeManifest(d.source.keys, sealedManifest, job.backupId, disk.diskId);
  const ids = [...new Set(manifest.chunks.filter((c): c is string => c !== null))];
  let chunksCopied = 0;
  let bytesCopied = 0;
  let done = 0;
  await mapLimit(ids, d.parallelism, async (id) => {
    d.signal?.throwIfAborted();
    const key = objectKeys.chunk(id);
    // Cheap path first: a chunk the target has (of the recorded size) is not read at all.
    const there = await d.target.store.head(key);
    if (!there || there.size !== manifest.storedSizes[id]) {
      const n = await copyIfMissing(key, d, async (sealed) => {
        let plain: Buffer;
        try {
          plain = await open(d.source.keys, sealed, id);
        } catch (err) {
          throw new Corrupt(`chunk ${key} of disk '${disk.diskId}' (backup ${job.backupId}) is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
        }
        if (chunkId(d.source.keys, plain) !== id) throw new Corrupt(`chunk ${key} of disk '${disk.diskId}' (backup ${job.backupId}) does not match its id in the source repository; not replicated`);
      }, true);
      if (n > 0) {
        chunksCopied++;
        bytesCopied += n;
      }
    }
    done++;
    if (done % 64 === 0 || done === ids.length) d.onProgress?.({ diskId: disk.diskId, chunksDone: done, chunks: ids.length, chunksCopied });
  });
  if (index === 0) bytesCopied += await copyIfMissing(objectKeys.vmConfig(job.backupId), d, async (sealed) => void (await open(d.source.keys, sealed, `vm-config:${job.backupId}`)));
  // The manifest last: a DR manifest only ever names chunks that are there.
  bytesCopied += await copyIfMissing(manifestKey, d, async () => {});
  return { diskId: disk.diskId, chunks: ids.length, chunksCopied, bytesCopied, seconds: (performance.now() - started) / 1000 };
}
