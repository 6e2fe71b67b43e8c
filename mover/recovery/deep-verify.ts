/**
 * Deep verification of one disk of one backup: read back all (or a sample) of the
 * chunks its manifest references, authenticate and decrypt them, decompress, and
 * recompute their keyed ids. Damage is returned as findings naming the backup, disk,
 * offsets and object key — never thrown — so the workflow can record it.
 */
import { createHash } from 'node:crypto';
import { mapLimit } from '../../core/concurrency.ts';
import { chunkId, decodeManifest, keys as objectKeys, open, type Manifest, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { DamageFinding, DeepVerifiedDisk, DeepVerifyJob } from '../../core/recovery-jobs.ts';

/**
 * Whether chunk `id` is in the sample of verification `verifyId`: a keyed coin flip, so
 * one verification's sample is reproducible and successive verifications cover different chunks.
 */
export function inSample(verifyId: string, id: string, fraction: number): boolean {
  if (fraction >= 1) return true;
  const h = createHash('sha256').update(verifyId).update('\0').update(id).digest();
  return h.readUInt32BE(0) < fraction * 0x1_0000_0000;
}

export interface DeepVerifyDeps {
  store: ObjectStore;
  keys: RepositoryKeys;
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; chunksChecked: number; chunksSelected: number; damaged: number }) => void;
}

export async function deepVerifyDisk(job: DeepVerifyJob, disk: { diskId: string; sizeBytes: number }, d: DeepVerifyDeps): Promise<DeepVerifiedDisk> {
  const started = performance.now();
  const finding = (objectKey: string, offsets: number[], reason: string): DamageFinding => ({ backupId: job.backupId, diskId: disk.diskId, offsets, objectKey, reason });
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealed = await d.store.get(manifestKey);
  const done = (m: Partial<DeepVerifiedDisk>): DeepVerifiedDisk => ({ diskId: disk.diskId, chunksTotal: 0, chunksChecked: 0, bytesRead: sealed?.length ?? 0, damaged: [], seconds: (performance.now() - started) / 1000, ...m });
  if (!sealed) return done({ damaged: [finding(manifestKey, [], 'the manifest is missing from the repository')] });
  let manifest: Manifest;
  try {
    manifest = await decodeManifest(d.keys, sealed, job.backupId, disk.diskId);
  } catch (err) {
    return done({ damaged: [finding(manifestKey, [], `the manifest does not open: ${(err as Error).message}`)] });
  }

  const offsets = new Map<string, number[]>();
  manifest.chunks.forEach((id, i) => {
    if (id === null) return;
    let list = offsets.get(id);
    if (!list) offsets.set(id, (list = []));
    list.push(i * manifest.chunkSize);
  });
  const selected = [...offsets.keys()].filter((id) => inSample(job.verifyId, id, job.sample));
  const damaged: DamageFinding[] = [];
  let chunksChecked = 0;
  let bytesRead = sealed.length;
  await mapLimit(selected, d.parallelism, async (id) => {
    d.signal?.throwIfAborted();
    const key = objectKeys.chunk(id);
    const at = offsets.get(id)!;
    const body = await d.store.get(key);
    chunksChecked++;
    if (!body) {
      damaged.push(finding(key, at, 'the chunk is missing from the repository'));
    } else {
      bytesRead += body.length;
      try {
        const plain = await open(d.keys, body, id);
        const firstOffset = at[0]!;
        const expectedLength = Math.min(manifest.chunkSize, manifest.sizeBytes - firstOffset);
        if (plain.length !== expectedLength) damaged.push(finding(key, at, `the chunk opens to ${plain.length} bytes, the disk needs ${expectedLength}`));
        else if (chunkId(d.keys, plain) !== id) damaged.push(finding(key, at, 'the chunk opens but its content does not match its id'));
      } catch (err) {
        const stored = manifest.storedSizes[id];
        const size = stored !== undefined && stored !== body.length ? ` (${body.length} bytes stored, the manifest recorded ${stored})` : '';
        damaged.push(finding(key, at, `${(err as Error).message}${size}`));
      }
    }
    if (chunksChecked % 64 === 0 || chunksChecked === selected.length) d.onProgress?.({ diskId: disk.diskId, chunksChecked, chunksSelected: selected.length, damaged: damaged.length });
  });
  damaged.sort((a, b) => (a.offsets[0] ?? 0) - (b.offsets[0] ?? 0));
  return done({ chunksTotal: offsets.size, chunksChecked, bytesRead, damaged });
}
