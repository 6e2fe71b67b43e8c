/**
 * Copying what a manifest references into another repository that shares the key (a DR
 * copy), as stored: the same sealed bytes under the same keys, so the copy deduplicates
 * exactly like the source. Whatever the manifest's version:
 *
 * - an object the target has at the size the manifest records is not read at all;
 * - a chunk stored as its own object (format 1) must open and match its id first;
 * - a pack (formats 2 and 3) is read whole; each chunk of it the manifest references must
 *   open and match its id, and its trailer must list them where the manifest says (damage
 *   is not copied: the error names the chunk, the pack and the disk). Index objects (fresh
 *   ids) then list every chunk of the packs copied, from their trailers, so the copy's
 *   index is complete. A run that stops between a pack and its index leaves that pack
 *   unindexed (a re-run finds it present and copies it no more); its manifest still names
 *   it, and the pack describes itself: the copy's next garbage collection lists it again.
 *
 * The manifest is copied a batch at a time (memory bounded whatever the disk's size), and
 * its own objects last (`finish`), so a copied manifest only ever names chunks that are there.
 */
import { mapLimit } from '../core/concurrency.ts';
import { Corrupt } from '../contracts/errors.ts';
import { objectCrc32, objectSha256, type ObjectStore } from '../core/object-store.ts';
import { objectKeys } from './format.ts';
import { piecePurpose } from './manifest/head.ts';
import type { ManifestBatch, ManifestReader } from './manifest/reader.ts';
import { RecentIds } from './manifest/recent.ts';
import type { Repository } from './open.ts';
import type { PackContents } from './packs.ts';
import { referencedObjects, type ReferencedObject } from './referenced.ts';

/** An index object at the target is written after this many packs were copied, and at the end. */
const PACKS_PER_INDEX = 32;
/** Objects remembered as handled (copied, or found at the target) by one copier: bounded. */
const HANDLED_OBJECTS = 4096;

export interface CopyOptions {
  source: Repository;
  /** The other repository's store: it shares the source's key, so index objects are sealed with the source's. */
  target: ObjectStore;
  parallelism: number;
  signal?: AbortSignal;
}

/** Copies `key` unless the target has an object of its size (`knownMissing` skips that HEAD); `check` vets the bytes first. Bytes copied. */
async function copyIfMissing(key: string, o: CopyOptions, check: (sealed: Buffer) => Promise<void>, knownMissing = false): Promise<number> {
  const source = await o.source.store.get(key);
  if (!source) throw new Corrupt(`${key} is missing from the source repository`);
  if (!knownMissing) {
    const there = await o.target.head(key);
    if (there && there.size === source.length) return 0;
  }
  await check(source);
  await o.target.put(key, source, { sha256: objectSha256(source) }); // kept by the store: Verify compares a format-1 chunk's
  return source.length;
}

/** Copies a backup's VM configuration unless the target has it; checks it opens first. Bytes copied. */
export function copyVmConfig(backupId: string, o: CopyOptions): Promise<number> {
  return copyIfMissing(objectKeys.vmConfig(backupId), o, async (sealed) => void (await o.source.openVmConfig(sealed, backupId)));
}

/** One manifest's copy: its batches' objects (`batch`), then the manifest's own objects (`finish`). */
export class ManifestCopy {
  /** Distinct chunks walked (a repeat of a recent one counted once), chunks whose object was copied, and bytes copied. */
  readonly counts = { chunks: 0, chunksCopied: 0, bytesCopied: 0 };
  private readonly recent = new RecentIds();
  private unindexed: PackContents[] = [];
  private readonly handled = new Map<string, boolean>();
  private readonly manifest: ManifestReader;
  private readonly o: CopyOptions;
  /** The disk in messages: "disk 'd', backup b", and "disk 'd' (backup b)". */
  private readonly disk: string;
  private readonly diskOf: string;

  constructor(manifest: ManifestReader, o: CopyOptions) {
    this.manifest = manifest;
    this.o = o;
    const { diskId, backupId } = manifest.info;
    this.disk = `disk '${diskId}', backup ${backupId}`;
    this.diskOf = `disk '${diskId}' (backup ${backupId})`;
  }

  /** Copies the objects `b`'s chunks are in that the target lacks, each checked first. */
  async batch(b: ManifestBatch): Promise<void> {
    const refs = referencedObjects(b, (id) => this.recent.fresh(id));
    this.counts.chunks += refs.chunks;
    const chunks = refs.objects.filter((r) => r.kind === 'chunk');
    const packs = refs.objects.filter((r) => r.kind === 'pack');
    await mapLimit(chunks, this.o.parallelism, (r) => this.handle(r));
    // Packs are read whole (~8 MiB each): fewer at once than chunks.
    await mapLimit(packs, Math.max(1, Math.min(4, Math.ceil(this.o.parallelism / 2))), (r) => this.handle(r));
  }

  /** The last index object, then the manifest's pieces and the manifest itself. Bytes copied. */
  async finish(): Promise<number> {
    await this.writeIndex();
    const { backupId, diskId } = this.manifest.info;
    for (const p of this.manifest.pieces()) {
      this.counts.bytesCopied += await copyIfMissing(p.key, this.o, async (sealed) => void (await this.o.source.open(sealed, piecePurpose(p.key))));
    }
    this.counts.bytesCopied += await copyIfMissing(objectKeys.manifest(backupId, diskId), this.o, async () => {});
    return this.counts.bytesCopied;
  }

  private async handle(r: ReferencedObject): Promise<void> {
    this.o.signal?.throwIfAborted();
    let copied = this.handled.get(r.key);
    if (copied === undefined) {
      copied = r.kind === 'pack' ? await this.copyPack(r) : await this.copyChunk(r);
      this.handled.set(r.key, copied);
      if (this.handled.size > HANDLED_OBJECTS) this.handled.delete(this.handled.keys().next().value!);
    }
    if (copied) this.counts.chunksCopied += r.chunks.length;
  }

  /** A chunk's own object (format 1), unless the target has it at the recorded size. */
  private async copyChunk(r: ReferencedObject): Promise<boolean> {
    const there = await this.o.target.head(r.key);
    if (there && there.size === r.size) return false;
    const check = async (sealed: Buffer) => {
      let plain: Buffer;
      try {
        plain = await this.o.source.open(sealed, r.id);
      } catch (err) {
        throw new Corrupt(`chunk ${r.key} of ${this.diskOf} is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
      }
      if (this.o.source.chunkId(plain) !== r.id)
        throw new Corrupt(`chunk ${r.key} of ${this.diskOf} does not match its id in the source repository; not replicated`);
    };
    const n = await copyIfMissing(r.key, this.o, check, true);
    this.counts.bytesCopied += n;
    return n > 0;
  }

  /** A pack, unless the target has it at the recorded size: each referenced chunk and the trailer checked first. */
  private async copyPack(r: ReferencedObject): Promise<boolean> {
    const { o } = this;
    const there = await o.target.head(r.key);
    if (there && there.size === r.size) return false;
    const body = await o.source.store.get(r.key);
    const where = `pack ${r.key} (chunks of ${this.disk})`;
    if (!body) throw new Corrupt(`${where} is missing from the source repository; not replicated`);
    if (body.length !== r.size) throw new Corrupt(`${where} is ${body.length} bytes in the source repository, the manifest records ${r.size}; not replicated`);
    for (const { id, offset, length } of r.chunks) {
      const chunk = `chunk ${id} in ${r.key} bytes ${offset}+${length} (${this.disk})`;
      let plain: Buffer;
      try {
        plain = await o.source.open(body.subarray(offset, offset + length), id);
      } catch (err) {
        throw new Corrupt(`${chunk} is damaged in the source repository; pack not replicated: ${(err as Error).message}`, err);
      }
      if (o.source.chunkId(plain) !== id) throw new Corrupt(`${chunk} does not match its id in the source repository; pack not replicated`);
    }
    let contents: PackContents;
    try {
      contents = o.source.packTrailer(body, r.id);
    } catch (err) {
      throw new Corrupt(`${where}: its trailer is damaged in the source repository; not replicated: ${(err as Error).message}`, err);
    }
    const listed = new Map(contents.chunks.map((c) => [c.id, c]));
    for (const { id, offset, length } of r.chunks) {
      const c = listed.get(id);
      if (!c || c.offset !== offset || c.length !== length) {
        throw new Corrupt(`${where}: its trailer does not list chunk ${id} where the manifest says (bytes ${offset}+${length}); not replicated`);
      }
    }
    await o.target.put(r.key, body, { crc32: objectCrc32(body) });
    this.counts.bytesCopied += body.length;
    this.unindexed.push(contents);
    if (this.unindexed.length >= PACKS_PER_INDEX) await this.writeIndex();
    return true;
  }

  /** An index object listing the packs copied since the last one. */
  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return;
    const listed = this.unindexed;
    this.unindexed = [];
    this.counts.bytesCopied += (await this.o.source.on(this.o.target).putIndexObject(listed)).bytes;
  }
}
