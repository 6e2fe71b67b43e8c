/**
 * What the DR site's replicas share: a chunk of a disk fetched from the DR repository and
 * checked against its id, and whether two backups' manifests hold the same chunk at an
 * index (by id: nothing is read to find out). The warm standby (standby.ts) and the replica
 * VMs (replica-vm.ts) write only the chunks these say changed; both read the manifests a
 * piece at a time (ManifestReader, ManifestCursor).
 */
import { Corrupt } from '../../contracts/errors.ts';
import type { ManifestCursor, ManifestInfo } from '../../repository/types.ts';
import type { ChunkLocation } from '../../repository/packs.ts';
import type { Repository } from '../../repository/open.ts';

/** A manifest `from` can be diffed against `to` chunk by chunk only when both cut a disk of the same size the same way. */
export function diffable(from: ManifestInfo | undefined, to: ManifestInfo): from is ManifestInfo {
  return !!from && from.chunkSize === to.chunkSize && from.sizeBytes === to.sizeBytes;
}

/** Whether chunk `i` of the target (id `want`, or null for zeros) is what `from` holds there. */
export async function sameAs(from: ManifestCursor, i: number, want: string | null): Promise<boolean> {
  return ((await from.at(i))?.id ?? null) === want;
}

/**
 * Chunk `id` of disk `diskId`, read from the DR repository at `at`, opened and checked
 * against its id and `length`. Errors name the chunk, its object and the disk offset.
 */
export async function checkedChunk(
  repository: Pick<Repository, 'readChunk' | 'open' | 'chunkId'>,
  at: ChunkLocation,
  id: string,
  diskId: string,
  offset: number,
  length: number,
): Promise<Buffer> {
  const where = `chunk ${id} in ${at.key}${at.pack ? ` bytes ${at.offset}+${at.length}` : ''} (disk '${diskId}', offset ${offset})`;
  const body = await repository.readChunk(at);
  if (!body) throw new Corrupt(`${where} is missing from the DR repository`);
  let data: Buffer;
  try {
    data = await repository.open(body, id);
  } catch (err) {
    throw new Corrupt(`${where} is damaged in the DR repository: ${(err as Error).message}`, err);
  }
  if (data.length !== length || repository.chunkId(data) !== id) throw new Corrupt(`${where} does not match its id in the DR repository`);
  return data;
}
