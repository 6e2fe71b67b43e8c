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
 * The manifest is read a batch (a format-3 piece) at a time and copied batch by batch:
 * memory stays bounded whatever the disk's size. A pack is copied with the first batch
 * that references it, checked for that batch's chunks; a later batch finds it present.
 *
 * The manifest is copied last, so a DR manifest only ever names chunks that are there; the
 * first disk also copies the VM config. Re-running copies nothing twice.
 */
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { objectKeys, type PackRef } from '../../repository/format.ts';
import { piecePurpose } from '../../repository/manifest/head.ts';
import type { ManifestBatch } from '../../repository/manifest/reader.ts';
import type { Repository } from '../../repository/open.ts';
import { RecentIds } from '../../repository/manifest/recent.ts';
import { objectCrc32, objectSha256, type ObjectStore } from '../../core/object-store.ts';
import type { PackContents } from '../../repository/packs.ts';
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

/** A distinct chunk of a batch, and where the manifest says it is stored. */
interface Referenced {
  id: string;
  offset: number;
  length: number;
}

/** Format 1: each chunk object the target lacks. */
async function copyChunkObjects(job: ReplicateJob, diskId: string, chunks: Referenced[], d: ReplicateDeps, out: Copied): Promise<void> {
  await mapLimit(chunks, d.parallelism, async ({ id, length }) => {
    d.signal?.throwIfAborted();
    const key = objectKeys.chunk(id);
    // Cheap path first: a chunk the target has (of the recorded size) is not read at all.
    const there = await d.target.store.head(key);
    if (there && there.size === length) return;
    const n = await copyIfMissing(
      key,
      d,
      async (sealed) => {
        let plain: Buffer;
        try {
          plain = await d.source.open(sealed, id);
        } catch (err) {
          throw new Corrupt(
            `chunk ${key} of disk '${diskId}' (backup ${job.backupId}) is damaged in the source repository; not replicated: ${(err as Error).message}`,
            err,
          );
        }
        if (d.source.chunkId(plain) !== id)
          throw new Corrupt(`chunk ${key} of disk '${diskId}' (backup ${job.backupId}) does not match its id in the source repository; not replicated`);
      },
      true,
    );
    if (n > 0) {
      out.chunksCopied++;
      out.bytesCopied += n;
    }
  });
}

/** Format 2 and 3: the packs of a disk, copied as the batches of its manifest reference them, then index objects listing the packs copied. */
class PackCopier {
  readonly out: Copied = { chunksCopied: 0, bytesCopied: 0 };
  private unindexed: PackContents[] = [];
  /** Packs handled lately (copied: true; found at the target: false). Bounded. */
  private readonly handled = new Map<string, boolean>();

  private readonly job: ReplicateJob;
  private readonly diskId: string;
  private readonly d: ReplicateDeps;

  constructor(job: ReplicateJob, diskId: string, d: ReplicateDeps) {
    this.job = job;
    this.diskId = diskId;
    this.d = d;
  }

  /** The packs `chunks` are in, each copied unless the target has it, each chunk of it checked first. */
  async copy(chunks: Map<string, { ref: PackRef; chunks: Referenced[] }>): Promise<void> {
    // Packs are read whole (~8 MiB each): fewer at once than chunks.
    await mapLimit([...chunks.values()], Math.max(1, Math.min(4, Math.ceil(this.d.parallelism / 2))), async ({ ref, chunks: inPack }) => {
      this.d.signal?.throwIfAborted();
      let copied = this.handled.get(ref.id);
      if (copied === undefined) {
        copied = await this.copyPack(ref, inPack);
        this.handled.set(ref.id, copied);
        if (this.handled.size > 4096) this.handled.delete(this.handled.keys().next().value!);
      }
      if (copied) this.out.chunksCopied += inPack.length;
    });
  }

  private async copyPack(ref: PackRef, chunks: Referenced[]): Promise<boolean> {
    const { d, diskId, job } = this;
    const key = objectKeys.pack(ref.id);
    const there = await d.target.store.head(key);
    if (there && there.size === ref.size) return false;
    const body = await d.source.store.get(key);
    const where = `pack ${key} (chunks of disk '${diskId}', backup ${job.backupId})`;
    if (!body) throw new Corrupt(`${where} is missing from the source repository; not replicated`);
    if (body.length !== ref.size)
      throw new Corrupt(`${where} is ${body.length} bytes in the source repository, the manifest records ${ref.size}; not replicated`);
    for (const { id, offset, length } of chunks) {
      const chunk = `chunk ${id} in ${key} bytes ${offset}+${length} (disk '${diskId}', backup ${job.backupId})`;
      let plain: Buffer;
      try {
        plain = await d.source.open(body.subarray(offset, offset + length), id);
      } catch (err) {
        throw new Corrupt(`${chunk} is damaged in the source repository; pack not replicated: ${(err as Error).message}`, err);
      }
      if (d.source.chunkId(plain) !== id) throw new Corrupt(`${chunk} does not match its id in the source repository; pack not replicated`);
    }
    let contents: PackContents;
    try {
      contents = d.source.packTrailer(body, ref.id);
    } catch (err) {
      throw new Corrupt(`${where}: its trailer is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
    }
    const listed = new Map(contents.chunks.map((c) => [c.id, c]));
    for (const { id, offset, length } of chunks) {
      const c = listed.get(id);
      if (!c || c.offset !== offset || c.length !== length) {
        throw new Corrupt(`${where}: its trailer does not list chunk ${id} where the manifest says (bytes ${offset}+${length}); not replicated`);
      }
    }
    await d.target.store.put(key, body, { crc32: objectCrc32(body) });
    this.out.bytesCopied += body.length;
    this.unindexed.push(contents);
    if (this.unindexed.length >= PACKS_PER_INDEX) await this.writeIndex();
    return true;
  }

  /** An index object listing the packs copied since the last one. */
  async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return;
    const listed = this.unindexed;
    this.unindexed = [];
    this.out.bytesCopied += (await this.d.source.on(this.d.target.store).putIndexObject(listed)).bytes;
  }
}

/** A batch's chunks not seen lately, by pack (format 1: under no pack, ''). */
function referencedBy(b: ManifestBatch, recent: RecentIds): Map<string, { ref: PackRef; chunks: Referenced[] }> {
  const byPack = new Map<string, { ref: PackRef; chunks: Referenced[] }>();
  for (let i = 0; i < b.count; i++) {
    const id = b.id(i);
    if (id === null || !recent.fresh(id)) continue;
    const loc = b.location(i)!;
    const packId = loc.pack?.id ?? '';
    let p = byPack.get(packId);
    if (!p) byPack.set(packId, (p = { ref: loc.pack ?? { id: '', size: 0 }, chunks: [] }));
    p.chunks.push({ id, offset: loc.offset, length: loc.length });
  }
  return byPack;
}

export async function replicateDisk(job: ReplicateJob, disk: { diskId: string }, index: number, d: ReplicateDeps): Promise<ReplicatedDisk> {
  const started = performance.now();
  const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
  const sealedManifest = await d.source.store.get(manifestKey);
  if (!sealedManifest) throw new Corrupt(`manifest ${manifestKey} is missing from the source repository ${job.source.bucket}`);
  const manifest = await d.source.manifestFromSealed(sealedManifest, job.backupId, disk.diskId);
  const { from, to, version } = manifest.info;
  const recent = new RecentIds();
  const packs = new PackCopier(job, disk.diskId, d);
  const objects: Copied = { chunksCopied: 0, bytesCopied: 0 };
  let chunks = 0;
  for await (const b of manifest.batches()) {
    const byPack = referencedBy(b, recent);
    for (const p of byPack.values()) chunks += p.chunks.length;
    if (version === 1) await copyChunkObjects(job, disk.diskId, byPack.get('')?.chunks ?? [], d, objects);
    else await packs.copy(byPack);
    const copied = version === 1 ? objects : packs.out;
    d.onProgress?.({ diskId: disk.diskId, chunksDone: b.firstChunk + b.count - from, chunks: to - from, chunksCopied: copied.chunksCopied });
  }
  await packs.writeIndex();
  const copied = version === 1 ? objects : packs.out;
  let bytesCopied = copied.bytesCopied;
  if (index === 0)
    bytesCopied += await copyIfMissing(objectKeys.vmConfig(job.backupId), d, async (sealed) => void (await d.source.openVmConfig(sealed, job.backupId)));
  // Then a format-3 manifest's pieces, and the manifest last: a DR manifest only ever names chunks that are there.
  for (const p of manifest.pieces()) {
    bytesCopied += await copyIfMissing(p.key, d, async (sealed) => void (await d.source.open(sealed, piecePurpose(p.key))));
  }
  bytesCopied += await copyIfMissing(manifestKey, d, async () => {});
  return { diskId: disk.diskId, chunks, chunksCopied: copied.chunksCopied, bytesCopied, seconds: (performance.now() - started) / 1000 };
}
