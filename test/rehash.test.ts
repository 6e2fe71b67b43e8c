/** The restore's final check: re-reading the written disk catches what a bad write leaves. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys, chunkId, type Manifest } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { Repository } from '../repository/open.ts';
import { RestoreMismatch } from '../contracts/recovery-errors.ts';
import { inSample } from '../mover/recovery/deep-verify.ts';
import { rehashDisk } from '../mover/recovery/rehash.ts';
import { readerOf } from './helpers/manifest.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const repository = new Repository(new MemoryObjectStore(), keys);
let dir: string;
let data: Buffer;
let manifest: Manifest;
let packed: Manifest;
const PACK = '5a'.repeat(16);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-rehash-'));
  // chunk 0 data, chunk 1 zeros (a hole), chunk 2 data, chunk 3 a short tail.
  data = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK), randomBytes(CHUNK), randomBytes(1000)]);
  const chunks = [0, 1, 2, 3].map((i) => data.subarray(i * CHUNK, Math.min((i + 1) * CHUNK, data.length)));
  const ids = chunks.map((c, i) => (i === 1 ? null : chunkId(keys, c)));
  // Format 1 (each chunk its own object); the sizes stand in for sealed sizes.
  manifest = {
    version: 1,
    backupId: 'b1',
    diskId: 'disk0',
    sizeBytes: data.length,
    chunkSize: CHUNK,
    chunks: ids,
    storedSizes: Object.fromEntries(ids.filter((id) => id !== null).map((id) => [id, 5000])),
    storedSha256: {},
  };
  // Format 2: the same chunks in one pack, 5000 bytes each.
  packed = {
    ...manifest,
    version: 2,
    storedSha256: undefined,
    packs: [{ id: PACK, size: 20_000 }],
    locations: Object.fromEntries(ids.filter((id) => id !== null).map((id, n) => [id, [0, n * 5000]])),
  };
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function written(name: string, edit?: (b: Buffer) => void) {
  const path = join(dir, name);
  const copy = Buffer.from(data);
  edit?.(copy);
  await writeFile(path, copy);
  return path;
}

describe('rehashDisk', () => {
  it('accepts a faithful copy and returns the SHA-256 of the whole disk', async () => {
    const r = await rehashDisk({ repository, manifest: await readerOf(keys, manifest), path: await written('ok.raw') });
    expect(r).toEqual({ chunksVerified: 4, sha256: createHash('sha256').update(data).digest('hex') });
  });

  it('names the offset of a chunk whose bytes changed', async () => {
    const path = await written('flip.raw', (b) => {
      b[2 * CHUNK + 17]! ^= 1;
    });
    const id = manifest.chunks[2]!;
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, manifest), path })).rejects.toThrow(
      `offset ${2 * CHUNK} does not match chunk ${id} (stored in chunks/${id.slice(0, 2)}/${id};`,
    );
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, manifest), path })).rejects.toBeInstanceOf(RestoreMismatch);
    // Format 2: the pack and the chunk's bytes in it (the second chunk stored: bytes 5000+5000).
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, packed), path })).rejects.toThrow(
      `offset ${2 * CHUNK} does not match chunk ${id} (stored in packs/5a/${PACK} bytes 5000+5000;`,
    );
  });

  it('accepts a faithful copy of a format-2 backup', async () => {
    const r = await rehashDisk({ repository, manifest: await readerOf(keys, packed), path: await written('ok2.raw') });
    expect(r).toEqual({ chunksVerified: 4, sha256: createHash('sha256').update(data).digest('hex') });
  });

  it('finds data where the backup has a hole', async () => {
    const path = await written('hole.raw', (b) => {
      b[CHUNK + 5] = 7;
    });
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, manifest), path })).rejects.toThrow(
      `offset ${CHUNK} holds data where the backup has zeros`,
    );
  });

  it('finds a target of the wrong size', async () => {
    const path = await written('short.raw');
    await truncate(path, data.length - 1);
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, manifest), path })).rejects.toThrow(
      `is ${data.length - 1} bytes, the backup's disk is ${data.length}`,
    );
    const fh = await open(path, 'a');
    await fh.write(Buffer.alloc(2));
    await fh.close();
    await expect(rehashDisk({ repository, manifest: await readerOf(keys, manifest), path })).rejects.toThrow(RestoreMismatch);
  });
});

describe('deep verify sampling', () => {
  it('selects about the asked fraction, reproducibly per verification and differently across them', () => {
    const ids = Array.from({ length: 4000 }, (_, i) => createHash('sha256').update(String(i)).digest('hex'));
    const a = ids.filter((id) => inSample('verify-a', id, 0.25));
    const b = ids.filter((id) => inSample('verify-b', id, 0.25));
    expect(a.length).toBeGreaterThan(900);
    expect(a.length).toBeLessThan(1100);
    expect(ids.filter((id) => inSample('verify-a', id, 0.25))).toEqual(a);
    expect(a.filter((id) => b.includes(id)).length).toBeLessThan(a.length / 2);
    expect(ids.every((id) => inSample('any', id, 1))).toBe(true);
  });
});
