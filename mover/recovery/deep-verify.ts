/**
 * Deep verification of one disk of one backup: read back all (or a sample) of the
 * chunks its manifest references, authenticate and decrypt them, decompress, and
 * recompute their keyed ids. Format 2 reads each run of neighbouring chunks of a pack
 * with one range GET (format 1: one GET per chunk object).
 *
 * A chunk whose copy at its manifest's location is missing or damaged is looked up in
 * the repository's index (loaded only then): when another copy opens and matches its id
 * (a later backup stored the chunk again after a quarantine), readers use that copy, so
 * the chunk is healed, not damaged. Damage is returned as findings naming the backup,
 * disk, offsets, object key, chunk id and (for a pack) the byte range — never thrown —
 * so the workflow can record it.
 *
 * The manifest is read a batch (a format-3 piece) at a time, and memory stays bounded
 * whatever the disk's size: a chunk is read once however often the disk repeats it close
 * by (`RecentIds`; "distinct" counts are counted that way, as Verify does), and a damaged
 * chunk gathers the offsets of all its repeats.
 */
import { createHash } from 'node:crypto';
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import type { ManifestReader, RepositoryIndex } from '../../repository/types.ts';
import type { Repository } from '../../repository/open.ts';
import { RecentIds } from '../../repository/manifest/recent.ts';
import { planReads, type ChunkLocation } from '../../repository/packs.ts';
import type { DamageFinding, DeepVerifiedDisk, DeepVerifyJob } from '../../contracts/recovery-jobs.ts';

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
  repository: Repository;
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; chunksChecked: number; chunksSelected: number; damaged: number; chunkSize: number }) => void;
}

export async function deepVerifyDisk(job: DeepVerifyJob, disk: { diskId: string; sizeBytes: number }, d: DeepVerifyDeps): Promise<DeepVerifiedDisk> {
  const started = performance.now();
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const manifestFinding = (reason: string): DamageFinding => ({ backupId: job.backupId, diskId: disk.diskId, offsets: [], objectKey: manifestKey, reason });
  const sealed = await d.repository.store.get(manifestKey);
  const done = (m: Partial<DeepVerifiedDisk>): DeepVerifiedDisk => ({
    diskId: disk.diskId,
    chunksTotal: 0,
    chunksChecked: 0,
    bytesRead: sealed?.length ?? 0,
    damaged: [],
    seconds: (performance.now() - started) / 1000,
    ...m,
  });
  if (!sealed) return done({ damaged: [manifestFinding('the manifest is missing from the repository')] });
  let manifest: ManifestReader;
  try {
    manifest = await d.repository.manifestFromSealed(sealed, job.backupId, disk.diskId);
  } catch (err) {
    return done({ damaged: [manifestFinding(`the manifest does not open: ${(err as Error).message}`)] });
  }
  const { chunkSize, sizeBytes } = manifest.info;

  /** Damage found, by chunk id: a repeat of a damaged chunk anywhere on the disk adds its offset. */
  const damaged = new Map<string, DamageFinding>();
  const recent = new RecentIds();
  let chunksTotal = 0;
  let chunksSelected = 0;
  let chunksChecked = 0;
  let chunksFromOtherCopies = 0;
  let bytesRead = sealed.length;
  let index: Promise<RepositoryIndex> | undefined;
  const progress = () => d.onProgress?.({ diskId: disk.diskId, chunksChecked, chunksSelected, damaged: damaged.size, chunkSize });

  /** Why `body` is not chunk `id` (first at disk offset `offset`, stored in `stored` bytes), or undefined when it is. */
  const problemOf = async (id: string, body: Buffer, offset: number, stored: number): Promise<string | undefined> => {
    try {
      const plain = await d.repository.open(body, id);
      const expectedLength = Math.min(chunkSize, sizeBytes - offset);
      if (plain.length !== expectedLength) return `the chunk opens to ${plain.length} bytes, the disk needs ${expectedLength}`;
      if (d.repository.chunkId(plain) !== id) return 'the chunk opens but its content does not match its id';
      return undefined;
    } catch (err) {
      const size = stored !== body.length ? ` (${body.length} bytes stored, the manifest recorded ${stored})` : '';
      return `${(err as Error).message}${size}`;
    }
  };

  /** True when a copy of `id` other than the one at `here` opens and matches its id. */
  const intactElsewhere = async (id: string, here: ChunkLocation, offset: number): Promise<boolean> => {
    for (const alt of (await (index ??= d.repository.loadIndex())).otherCopies(id, here)) {
      let copy: Buffer | undefined;
      try {
        copy = await d.repository.readChunk(alt);
      } catch (err) {
        if (err instanceof Corrupt) continue; // a pack shorter than its index says: not this copy
        throw err;
      }
      if (!copy) continue;
      bytesRead += copy.length;
      if ((await problemOf(id, copy, offset, alt.length)) === undefined) return true;
    }
    return false;
  };

  for await (const batch of manifest.batches()) {
    // This batch's chunks to read (first seen lately, in the sample): where each is, and its offsets in the batch.
    const todo = new Map<string, { loc: ChunkLocation; offsets: number[] }>();
    for (let i = 0; i < batch.count; i++) {
      const id = batch.id(i);
      if (id === null) continue;
      const offset = (batch.firstChunk + i) * chunkSize;
      const found = damaged.get(id) ?? todo.get(id);
      if (found) found.offsets.push(offset);
      else if (recent.fresh(id)) {
        chunksTotal++;
        if (inSample(job.verifyId, id, job.sample)) todo.set(id, { loc: batch.location(i)!, offsets: [offset] });
      }
    }
    chunksSelected += todo.size;

    const check = async (id: string, body: Buffer | undefined, missing: string) => {
      const { loc: here, offsets } = todo.get(id)!;
      const problem = body ? await problemOf(id, body, offsets[0]!, here.length) : missing;
      chunksChecked++;
      if (problem !== undefined) {
        if (await intactElsewhere(id, here, offsets[0]!)) chunksFromOtherCopies++;
        else
          damaged.set(id, {
            backupId: job.backupId,
            diskId: disk.diskId,
            offsets,
            objectKey: here.key,
            chunkId: id,
            ...(here.pack ? { range: { offset: here.offset, length: here.length } } : {}),
            reason: problem,
          });
      }
      if (chunksChecked % 64 === 0) progress();
    };

    // One GET per run: a run of neighbouring chunks of a pack (up to 4 MiB), or one chunk object.
    const runs = planReads((id) => todo.get(id)!.loc, todo.keys());
    await mapLimit(runs, Math.max(1, Math.ceil(d.parallelism / 2)), async (run) => {
      d.signal?.throwIfAborted();
      const body = await d.repository.store.get(run.key, run.packed ? { range: { offset: run.offset, length: run.length } } : {});
      if (body) bytesRead += body.length;
      if (!run.packed) return check(run.chunks[0]!.id, body, 'the chunk is missing from the repository');
      const where = (c: { at: number; length: number }) => `bytes ${run.offset + c.at}+${c.length} of ${run.key}`;
      await mapLimit(run.chunks, 4, (c) => {
        if (!body) return check(c.id, undefined, `the pack is missing from the repository (the chunk is ${where(c)})`);
        if (body.length < c.at + c.length) return check(c.id, undefined, `the pack ends at byte ${run.offset + body.length}, before the chunk (${where(c)})`);
        return check(c.id, body.subarray(c.at, c.at + c.length), '');
      });
    });
  }
  progress();
  const findings = [...damaged.values()].sort((a, b) => (a.offsets[0] ?? 0) - (b.offsets[0] ?? 0));
  return done({ chunksTotal, chunksChecked, bytesRead, damaged: findings, chunksFromOtherCopies });
}
