/** The mover's backup and restore pipelines over the in-memory store. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chunkId, deriveKeys, keys as objectKeys } from '../core/format.ts';
import type { DiskRef } from '../core/jobs.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ObjectInfo } from '../core/object-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Counts the requests that reach the store. */
class CountingStore extends MemoryObjectStore {
  puts = 0;
  heads = 0;
  override async put(key: string, body: Uint8Array, sha256?: string) {
    this.puts++;
    return super.put(key, body, sha256);
  }
  override async head(key: string): Promise<ObjectInfo | undefined> {
    this.heads++;
    return super.head(key);
  }
}

const reader = (data: Buffer): DiskReader => ({ sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} });
const disk = (diskId: string, data: Buffer): DiskRef => ({ diskId, path: 'mem', sizeBytes: data.length });

describe('backup pipeline', () => {
  it('skips chunks the parent backup already stored without any request, and uploads only changed chunks', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 8 + 1000); // a partial last chunk too
    const full = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(full.stats.uploadedChunks).toBe(9);

    randomBytes(100).copy(data, CHUNK * 3 + 10); // change one chunk
    store.puts = 0;
    store.heads = 0;
    const incr = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b2', chunkSize: CHUNK, parentBackupId: 'b1', parentManifestKey: full.manifestKey });
    expect(incr.stats).toMatchObject({ parentChunks: 8, uploadedChunks: 1, bytesNew: CHUNK });
    expect(store.heads).toBe(1); // only the changed chunk is looked up
    expect(store.puts).toBe(2); // the changed chunk and the manifest
  });

  it('stores identical data from different disks once', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 4);
    await backupDisk({ store, keys, reader: reader(data), disk: disk('vm1-d0', data), backupId: 'b1', chunkSize: CHUNK });
    const second = await backupDisk({ store, keys, reader: reader(data), disk: disk('vm2-d0', data), backupId: 'b2', chunkSize: CHUNK });
    expect(second.stats).toMatchObject({ uploadedChunks: 0, dedupedChunks: 4 });
  });

  it('does not store all-zero chunks, and restores them as holes', async () => {
    const store = new CountingStore();
    const data = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK * 16), randomBytes(CHUNK)]);
    const r = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats).toMatchObject({ zeroChunks: 16, uploadedChunks: 2 });
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-'));
    dirs.push(dir);
    const target = join(dir, 'd.raw');
    await restoreDisk({ store, keys, backupId: 'b1', diskId: 'd', target });
    expect((await readFile(target)).equals(data)).toBe(true);
    expect((await stat(target)).blocks * 512).toBeLessThan(data.length); // sparse: zero runs were not written
  });

  it('fails a restore naming the disk, offset and object key when a stored chunk is damaged', async () => {
    const store = new CountingStore();
    const data = randomBytes(CHUNK * 3);
    const r = await backupDisk({ store, keys, reader: reader(data), disk: disk('d', data), backupId: 'b1', chunkSize: CHUNK });
    expect(r.stats.uploadedChunks).toBe(3);
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-'));
    dirs.push(dir);
    // Damage the second chunk of the disk.
    const key = objectKeys.chunk(chunkId(keys, data.subarray(CHUNK, 2 * CHUNK)));
    store.objects.get(key)![40]! ^= 0x10;
    await expect(restoreDisk({ store, keys, backupId: 'b1', diskId: 'd', target: join(dir, 'd.raw') }))
      .rejects.toMatchObject({ name: 'Mover.Corrupt', message: expect.stringMatching(new RegExp(`disk 'd' offset ${CHUNK}: chunk ${key}`)) });
  });
});
