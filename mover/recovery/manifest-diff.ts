/**
 * What the DR site's replicas share: a disk's manifest read from the DR repository, the
 * chunks that differ between two manifests of it (by id: nothing is read to find them),
 * and a chunk's plaintext fetched and checked against its id. The warm standby
 * (standby.ts) and the replica VMs (replica-vm.ts) write only what these name.
 */
import { chunkId, keys as objectKeys, open, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { decodeManifest } from '../../repository/manifest/reader.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { chunkLocation, readChunk } from '../../repository/packs.ts';

export async function manifestOf(store: ObjectStore, keys: RepositoryKeys, backupId: string, diskId: string): Promise<Manifest | undefined> {
  const sealed = await store.get(objectKeys.manifest(backupId, diskId));
  return sealed ? decodeManifest(keys, sealed, backupId, diskId, store) : undefined;
}

/** A manifest `from` can be diffed against `to` only when both cut the disk the same way. */
export function diffable(from: Manifest | undefined, to: Manifest): from is Manifest {
  return !!from && from.chunkSize === to.chunkSize && from.sizeBytes === to.sizeBytes;
}

/** The bytes of chunk `index` of `m` (the last may be short). */
export const chunkLength = (m: Manifest, index: number) => Math.min(m.chunkSize, m.sizeBytes - index * m.chunkSize);

/** Whether chunk `i` of `to` holds what chunk `i` of `from` holds (same id, or both holes). */
export function sameChunk(from: Manifest, to: Manifest, i: number): boolean {
  return i < from.chunks.length && (from.chunks[i] ?? null) === (to.chunks[i] ?? null) && chunkLength(from, i) === chunkLength(to, i);
}

/**
 * Chunk `id` of `target`'s disk, read from the DR repository, opened and checked against
 * its id; `length` is what the manifest says the chunk holds. Errors name the chunk, its
 * object and the disk offset.
 */
export async function verifiedChunk(store: ObjectStore, keys: RepositoryKeys, target: Manifest, id: string, offset: number, length: number): Promise<Buffer> {
  const at = chunkLocation(target, id);
  const where = `chunk ${id} in ${at.key}${at.pack ? ` bytes ${at.offset}+${at.length}` : ''} (disk '${target.diskId}', offset ${offset})`;
  const body = await readChunk(store, at);
  if (!body) throw new Corrupt(`${where} is missing from the DR repository`);
  let data: Buffer;
  try {
    data = await open(keys, body, id);
  } catch (err) {
    throw new Corrupt(`${where} is damaged in the DR repository: ${(err as Error).message}`, err);
  }
  if (data.length !== length || chunkId(keys, data) !== id) throw new Corrupt(`${where} does not match its id in the DR repository`);
  return data;
}
