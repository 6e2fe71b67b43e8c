/**
 * Replication of one disk of one backup to a DR repository, done by a mover at the DR
 * site. The DR repository has the same key layout and master key, and gets the same
 * sealed bytes under the same keys, so it deduplicates exactly like the source.
 *
 * Format 1: every chunk object the manifest references that the target lacks (HEAD) is
 * read from the source, opened and checked against its id (damage is not copied), and
 * written to the target as stored.
 *
 * Format 2: every pack the manifest references that the target lacks (HEAD; the same
 * size is present) is read whole from the source; each chunk of it the manifest
 * references must open and match its id (damage is not copied: the error names the
 * chunk, the pack and the disk), and its trailer must list them where the manifest says.
 * The pack is written to the target as stored; then an index object (a fresh id) lists
 * every chunk of the packs copied, from their trailers, so the DR repository's index is
 * complete. A run that stops between a pack and its index leaves that pack unindexed at
 * the target (a re-run finds it present and copies it no more); its manifest still names
 * it, so restores and verification are unaffected, and the pack describes itself: the DR
 * repository's next garbage collection lists it again from its trailer (functions/gc/gc.ts).
 *
 * The manifest is copied last, so a DR manifest only ever names chunks that are there; the
 * first disk also copies the VM config. Re-running copies nothing twice.
 */
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { chunkId, objectKeys, open, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import { piecePurpose } from '../../repository/manifest/head.ts';
import { decodeManifest, ManifestReader } from '../../repository/manifest/reader.ts';
import { objectCrc32, objectSha256, type ObjectStore } from '../../core/object-store.ts';
import { putIndexObject, readPackTrailer, type PackContents } from '../../repository/packs.ts';
import type { ReplicatedDisk, ReplicateJob } from '../../contracts/recovery-jobs.ts';

export interface ReplicateDeps {
  source: { store: ObjectStore; keys: RepositoryKeys };
  target: { store: ObjectStore };
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksCopied: number }) => void;
}

/** An index object at the target is written after this many packs were copied, and at the end. */
const PACKS_PER_INDEX = 32;

/** Copies `key` unless the target has an object of its size; `knownMissing` skips the target HEAD. */
async function copyIfMissing(key: string, d: ReplicateDeps, check: (sealed: Buffer) => Promise<void>, knownMissing = false): Promise<number> {
  const source = await d.source.store.get(key);
  if (!source) throw new Corrupt(`${key} is missing from the source repository`);
  if (!knownMissing) {
    const there = await d.target.store.head(key);
    if (there && there.size === source.length) return 0;
  }
  await check(source);
  await d.target.store.put(key, source, { sha256: objectSha256(source) }); // kept by the store: Verify compares a format-1 chunk's
  return source.length;
}

interface Copied {
  chunksCopied: number;
  bytesCopied: number;
}

/** Format 1: each chunk object the target lacks. */
async function copyChunkObjects(job: ReplicateJob, diskId: string, manifest: Manifest, ids: string[], d: ReplicateDeps): Promise<Copied> {
  const out: Copied = { chunksCopied: 0, bytesCopied: 0 };
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
          throw new Corrupt(`chunk ${key} of disk '${diskId}' (backup ${job.backupId}) is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
        }
        if (chunkId(d.source.keys, plain) !== id) throw new Corrupt(`chunk ${key} of disk '${diskId}' (backup ${job.backupId}) does not match its id in the source repository; not replicated`);
      }, true);
      if (n > 0) {
        out.chunksCopied++;
        out.bytesCopied += n;
      }
    }
    done++;
    if (done % 64 === 0 || done === ids.length) d.onProgress?.({ diskId, chunksDone: done, chunks: ids.length, chunksCopied: out.chunksCopied });
  });
  return out;
}

/** Format 2: each pack the target lacks, checked, then index objects listing the packs copied. */
async function copyPacks(job: ReplicateJob, diskId: string, manifest: Manifest, ids: string[], d: ReplicateDeps): Promise<Copied> {
  const out: Copied = { chunksCopied: 0, bytesCopied: 0 };
  const packs = manifest.packs!;
  const referenced: string[][] = packs.map(() => []);
  for (const id of ids) referenced[manifest.locations![id]![0]]!.push(id);
  let unindexed: PackContents[] = [];
  const writeIndex = async () => {
    if (unindexed.length === 0) return;
    const listed = unindexed;
    unindexed = [];
    out.bytesCopied += (await putIndexObject(d.target.store, d.source.keys, listed)).bytes;
  };
  let done = 0;
  // Packs are read whole (~8 MiB each): fewer at once than chunks.
  await mapLimit([...packs.keys()], Math.max(1, Math.min(4, Math.ceil(d.parallelism / 2))), async (p) => {
    d.signal?.throwIfAborted();
    const ref = packs[p]!;
    const chunks = referenced[p]!;
    const key = objectKeys.pack(ref.id);
    const there = await d.target.store.head(key);
    if (!there || there.size !== ref.size) {
      const body = await d.source.store.get(key);
      const where = `pack ${key} (chunks of disk '${diskId}', backup ${job.backupId})`;
      if (!body) throw new Corrupt(`${where} is missing from the source repository; not replicated`);
      if (body.length !== ref.size) throw new Corrupt(`${where} is ${body.length} bytes in the source repository, the manifest records ${ref.size}; not replicated`);
      for (const id of chunks) {
        const offset = manifest.locations![id]![1];
        const length = manifest.storedSizes[id]!;
        const chunk = `chunk ${id} in ${key} bytes ${offset}+${length} (disk '${diskId}', backup ${job.backupId})`;
        let plain: Buffer;
        try {
          plain = await open(d.source.keys, body.subarray(offset, offset + length), id);
        } catch (err) {
          throw new Corrupt(`${chunk} is damaged in the source repository; pack not replicated: ${(err as Error).message}`, err);
        }
        if (chunkId(d.source.keys, plain) !== id) throw new Corrupt(`${chunk} does not match its id in the source repository; pack not replicated`);
      }
      let contents: PackContents;
      try {
        contents = readPackTrailer(d.source.keys, body, ref.id);
      } catch (err) {
        throw new Corrupt(`${where}: its trailer is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
      }
      const listed = new Map(contents.chunks.map((c) => [c.id, c]));
      for (const id of chunks) {
        const c = listed.get(id);
        if (!c || c.offset !== manifest.locations![id]![1] || c.length !== manifest.storedSizes[id]) {
          throw new Corrupt(`${where}: its trailer does not list chunk ${id} where the manifest says (bytes ${manifest.locations![id]![1]}+${manifest.storedSizes[id]}); not replicated`);
        }
      }
      await d.target.store.put(key, body, { crc32: objectCrc32(body) });
      out.chunksCopied += chunks.length;
      out.bytesCopied += body.length;
      unindexed.push(contents);
      if (unindexed.length >= PACKS_PER_INDEX) await writeIndex();
    }
    const before = done;
    done += chunks.length;
    if (Math.floor(before / 64) !== Math.floor(done / 64) || done === ids.length) d.onProgress?.({ diskId, chunksDone: done, chunks: ids.length, chunksCopied: out.chunksCopied });
  });
  await writeIndex();
  return out;
}

export async function replicateDisk(job: ReplicateJob, disk: { diskId: string }, index: number, d: ReplicateDeps): Promise<ReplicatedDisk> {
  const started = performance.now();
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealedManifest = await d.source.store.get(manifestKey);
  if (!sealedManifest) throw new Corrupt(`manifest ${manifestKey} is missing from the source repository ${job.source.bucket}`);
  const manifest = await decodeManifest(d.source.keys, sealedManifest, job.backupId, disk.diskId, d.source.store);
  const ids = [...new Set(manifest.chunks.filter((c): c is string => c !== null))];
  const copied = manifest.version === 1 ? await copyChunkObjects(job, disk.diskId, manifest, ids, d) : await copyPacks(job, disk.diskId, manifest, ids, d);
  let bytesCopied = copied.bytesCopied;
  if (index === 0) bytesCopied += await copyIfMissing(objectKeys.vmConfig(job.backupId), d, async (sealed) => void (await open(d.source.keys, sealed, `vm-config:${job.backupId}`)));
  // Then a format-3 manifest's pieces, and the manifest last: a DR manifest only ever names chunks that are there.
  for (const p of (await ManifestReader.fromSealed(d.source.store, d.source.keys, sealedManifest, job.backupId, disk.diskId)).pieces()) {
    bytesCopied += await copyIfMissing(p.key, d, async (sealed) => void (await open(d.source.keys, sealed, piecePurpose(p.key))));
  }
  bytesCopied += await copyIfMissing(manifestKey, d, async () => {});
  return { diskId: disk.diskId, chunks: ids.length, chunksCopied: copied.chunksCopied, bytesCopied, seconds: (performance.now() - started) / 1000 };
}
