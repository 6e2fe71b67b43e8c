/**
 * Replication of one disk of one backup to a DR repository, done by a mover at the DR
 * site. The DR repository has the same key layout and master key, and gets the same
 * sealed bytes under the same keys, so it deduplicates exactly like the source: what the
 * manifest references is copied as repository/replica.ts says (checked before it is
 * copied, never twice), a batch of the manifest at a time, so memory stays bounded
 * whatever the disk's size.
 *
 * The manifest is copied last, so a DR manifest only ever names chunks that are there; the
 * first disk also copies the VM config. Re-running copies nothing twice.
 */
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import { copyVmConfig, ManifestCopy } from '../../repository/replica.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { ReplicatedDisk, ReplicateJob } from '../../contracts/recovery-jobs.ts';

export interface ReplicateDeps {
  source: Repository;
  /** The DR repository: it shares the source's key (functions/replicate ensures it), so index objects are sealed with the source's. */
  target: { store: ObjectStore };
  parallelism: number;
  signal?: AbortSignal;
  /** `chunksDone` of `chunks`: the manifest's entries (zeros included) walked so far, of all of them. */
  onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksCopied: number }) => void;
}

export async function replicateDisk(job: ReplicateJob, disk: { diskId: string }, index: number, d: ReplicateDeps): Promise<ReplicatedDisk> {
  const started = performance.now();
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealedManifest = await d.source.store.get(manifestKey);
  if (!sealedManifest) throw new Corrupt(`manifest ${manifestKey} is missing from the source repository ${job.source.bucket}`);
  const manifest = await d.source.manifestFromSealed(sealedManifest, job.backupId, disk.diskId);
  const { from, to } = manifest.info;
  const o = { source: d.source, target: d.target.store, parallelism: d.parallelism, ...(d.signal ? { signal: d.signal } : {}) };
  const copy = new ManifestCopy(manifest, o);
  for await (const b of manifest.batches()) {
    await copy.batch(b);
    d.onProgress?.({ diskId: disk.diskId, chunksDone: b.firstChunk + b.count - from, chunks: to - from, chunksCopied: copy.counts.chunksCopied });
  }
  const vmConfigBytes = index === 0 ? await copyVmConfig(job.backupId, o) : 0;
  const bytesCopied = vmConfigBytes + (await copy.finish());
  const { chunks, chunksCopied } = copy.counts;
  return { diskId: disk.diskId, chunks, chunksCopied, bytesCopied, seconds: (performance.now() - started) / 1000 };
}
