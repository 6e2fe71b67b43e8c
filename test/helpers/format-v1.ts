/** A format-1 backup as movers before format 2 wrote it (one object per chunk), for tests that readers still read it. */
import { chunkId, encodeManifest, objectKeys, seal, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';

/** Stores `data` as chunk objects of `chunkSize` and a version-1 manifest (and a VM config with `vmConfig`). */
export async function writeV1Backup(
  store: ObjectStore,
  keys: RepositoryKeys,
  o: { backupId: string; diskId?: string; data: Buffer; chunkSize: number; vmConfig?: boolean },
): Promise<Manifest> {
  const diskId = o.diskId ?? 'disk0';
  const ids: string[] = [];
  const storedSizes: Record<string, number> = {};
  for (let off = 0; off < o.data.length; off += o.chunkSize) {
    const plain = o.data.subarray(off, off + o.chunkSize);
    const id = chunkId(keys, plain);
    ids.push(id);
    const sealed = await seal(keys, plain, id);
    storedSizes[id] = sealed.length;
    await store.put(objectKeys.chunk(id), sealed);
  }
  const m: Manifest = { version: 1, backupId: o.backupId, diskId, sizeBytes: o.data.length, chunkSize: o.chunkSize, chunks: ids, storedSizes };
  await store.put(objectKeys.manifest(o.backupId, diskId), await encodeManifest(keys, m));
  if (o.vmConfig) await store.put(objectKeys.vmConfig(o.backupId), await seal(keys, Buffer.from('{"name":"vm"}'), `vm-config:${o.backupId}`));
  return m;
}
