/** Where a backup computes its chunks' keyed ids: on the chunk pool's workers unless every worker is sealing. */
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { ChunkPool } from '../mover/pipeline/chunk-pool.ts';
import { deriveKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const pool = new ChunkPool(1);
afterAll(() => pool.close());

const disk = (data: Buffer) => ({ diskId: 'd', path: '/dev/null', sizeBytes: data.length });

/** Backs up `data` with `repository`: a full backup 'b1', or with `parent` (b1's manifest key) an incremental 'b2' of it. */
const backUp = (repository: Repository, data: Buffer, parent?: string) =>
  backupDisk({
    repository,
    reader: bufferReader(data),
    disk: disk(data),
    backupId: parent ? 'b2' : 'b1',
    chunkSize: CHUNK,
    pool,
    ...(parent ? { parentBackupId: 'b1', parentManifestKey: parent } : {}),
  });

describe('keyed ids of a backup', () => {
  it("hashes an incremental's chunks on the chunk worker when nothing is being sealed: the main thread computes no id, and every chunk is the parent's", async () => {
    const store = new MemoryObjectStore();
    const data = randomBytes(CHUNK * 40);
    const full = await backUp(new Repository(store, keys), data);
    expect(full.stats.uploadedChunks).toBe(40);

    const repository = new Repository(store, keys);
    const onMain = vi.spyOn(repository, 'chunkId');
    const incr = await backUp(repository, data, full.manifestKey);
    expect(incr.stats).toMatchObject({ parentChunks: 40, uploadedChunks: 0, bytesRead: data.length });
    expect(onMain).not.toHaveBeenCalled();
  });

  it('computes the same ids on either thread: a full backup whose chunks are hashed on both stores each chunk once, and an incremental of it finds every one', async () => {
    const store = new MemoryObjectStore();
    // 60 distinct chunks and 20 repeats of them: repeats are found by id wherever it was computed.
    const distinct = randomBytes(CHUNK * 60);
    const data = Buffer.concat([distinct, distinct.subarray(0, CHUNK * 20)]);
    const first = new Repository(store, keys);
    const onMain = vi.spyOn(first, 'chunkId');
    const full = await backUp(first, data);
    expect(full.stats).toMatchObject({ uploadedChunks: 60, dedupedChunks: 20 });
    // While the worker seals, ids are computed here (the full backup's critical path is the sealing).
    expect(onMain.mock.calls.length).toBeGreaterThan(0);
    const incr = await backUp(new Repository(store, keys), data, full.manifestKey);
    expect(incr.stats).toMatchObject({ parentChunks: 80, uploadedChunks: 0 });
  });
});
