/**
 * Manifests read whole, for tests only: the product reads every manifest as a stream
 * (repository/manifest/reader.ts `ManifestReader`), a piece at a time.
 */
import type { ObjectStore } from '../../core/object-store.ts';
import { Corrupt } from '../../contracts/errors.ts';
import { encodeManifest, MANIFEST_VERSION, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import type { ChunkLocation } from '../../repository/packs.ts';
import { ManifestReader } from '../../repository/manifest/reader.ts';

const noStore: ObjectStore = {
  put: () => Promise.reject(new Error('no store')),
  get: () => Promise.reject(new Corrupt('a version-3 manifest read whole needs the store its pieces are in')),
  head: () => Promise.reject(new Error('no store')),
  list: () => {
    throw new Error('no store');
  },
};

/**
 * A manifest of any version read whole into memory, in the shape of version 2 (`chunks`,
 * `storedSizes`, `packs`, `locations`). A version-3 manifest needs `store`, where its pieces are.
 */
export async function decodeManifest(
  keys: RepositoryKeys,
  sealed: Uint8Array,
  backupId: string,
  diskId: string,
  store: ObjectStore = noStore,
): Promise<Manifest> {
  const r = await ManifestReader.fromSealed(store, keys, sealed, backupId, diskId);
  const { info } = r;
  if (r.document) return r.document; // versions 1 and 2: one document, already read
  const m: Manifest = {
    version: 3,
    backupId,
    diskId,
    sizeBytes: info.sizeBytes,
    chunkSize: info.chunkSize,
    chunks: new Array<string | null>(Math.ceil(info.sizeBytes / info.chunkSize)).fill(null),
    storedSizes: {},
    packs: [],
    locations: {},
  };
  const packIndex = new Map<string, number>();
  for await (const b of r.batches()) {
    for (let i = 0; i < b.count; i++) {
      const id = b.id(i);
      m.chunks[b.firstChunk + i] = id;
      const loc = b.location(i);
      if (id === null || !loc?.pack || m.storedSizes[id] !== undefined) continue;
      let p = packIndex.get(loc.pack.id);
      if (p === undefined) {
        packIndex.set(loc.pack.id, (p = m.packs!.length));
        m.packs!.push(loc.pack);
      }
      m.storedSizes[id] = loc.length;
      m.locations![id] = [p, loc.offset];
    }
  }
  return m;
}

/** The reader of an in-memory version-1 or -2 manifest (sealed, as a store would hand it over). */
export async function readerOf(keys: RepositoryKeys, m: Manifest): Promise<ManifestReader> {
  return ManifestReader.fromSealed(noStore, keys, await encodeManifest(keys, m), m.backupId, m.diskId);
}

/**
 * A format-2 manifest for `chunks` (disk order, null for zeros), asking `locate` where each
 * referenced chunk is; packs are listed in the order first referenced.
 */
export function packedManifest(
  base: Pick<Manifest, 'backupId' | 'diskId' | 'sizeBytes' | 'chunkSize'>,
  chunks: (string | null)[],
  locate: (id: string) => ChunkLocation,
): Manifest {
  const m: Manifest = { version: MANIFEST_VERSION, ...base, chunks, storedSizes: {}, packs: [], locations: {} };
  const packIndex = new Map<string, number>();
  for (const id of chunks) {
    if (id === null || m.storedSizes[id] !== undefined) continue;
    const at = locate(id);
    if (!at.pack) throw new Corrupt(`chunk ${id} of disk '${base.diskId}' is not in a pack (${at.key})`);
    let p = packIndex.get(at.pack.id);
    if (p === undefined) {
      packIndex.set(at.pack.id, (p = m.packs!.length));
      m.packs!.push({ id: at.pack.id, size: at.pack.size });
    }
    m.storedSizes[id] = at.length;
    m.locations![id] = [p, at.offset];
  }
  return m;
}
