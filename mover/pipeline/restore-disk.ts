/**
 * Restore one disk from its manifest into a file: parallel download, open (decrypt,
 * decompress), check the keyed id, write at offset. All-zero chunks stay holes.
 */
import { open as openFile, truncate } from 'node:fs/promises';
import { mapLimit } from '../../core/concurrency.ts';
import { Corrupt } from '../../core/errors.ts';
import { chunkId, decodeManifest, keys, open, type RepositoryKeys } from '../../core/format.ts';
import type { ObjectStore } from '../../core/object-store.ts';

export interface RestoreDiskOptions {
  store: ObjectStore;
  keys: RepositoryKeys;
  backupId: string;
  diskId: string;
  target: string;
  parallelism?: number;
  onProgress?: (bytesDone: number, sizeBytes: number) => void;
}

export async function restoreDisk(o: RestoreDiskOptions): Promise<{ sizeBytes: number; bytesDownloaded: number }> {
  const manifestKey = keys.manifest(o.backupId, o.diskId);
  const sealed = await o.store.get(manifestKey);
  if (!sealed) throw new Corrupt(`manifest ${manifestKey} of disk '${o.diskId}' is missing from the repository`);
  const m = await decodeManifest(o.keys, sealed, o.backupId, o.diskId);
  const fh = await openFile(o.target, 'w');
  let bytesDownloaded = 0;
  let done = 0;
  try {
    await mapLimit(m.chunks, o.parallelism ?? 8, async (id, index) => {
      const offset = index * m.chunkSize;
      const length = Math.min(m.chunkSize, m.sizeBytes - offset);
      if (id !== null) {
        const key = keys.chunk(id);
        const body = await o.store.get(key);
        if (!body) throw new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} is missing from the repository`);
        bytesDownloaded += body.length;
        let plain: Buffer;
        try {
          plain = await open(o.keys, body, id);
        } catch (err) {
          throw new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} is damaged: ${(err as Error).message}`, err);
        }
        if (plain.length !== length || chunkId(o.keys, plain) !== id) throw new Corrupt(`disk '${o.diskId}' offset ${offset}: chunk ${key} does not match its id`);
        await fh.write(plain, 0, length, offset);
      }
      done += length;
      o.onProgress?.(done, m.sizeBytes);
    });
  } finally {
    await fh.close();
  }
  await truncate(o.target, m.sizeBytes);
  return { sizeBytes: m.sizeBytes, bytesDownloaded };
}
