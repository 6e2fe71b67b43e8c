/**
 * Failback's delta writer (mover/recovery/failback.ts) on real files: a production disk at
 * backup B is brought to the DR site's backup D by writing only the chunks whose ids
 * differ; a production disk that no longer matches B is found out by hashing and still
 * made equal to D; `trust` mode writes the manifests' difference without reading.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { deriveKeys } from '../repository/format.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { applyDiskDelta } from '../mover/recovery/failback.ts';
import { Repository } from '../repository/open.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
/** The production repository (holds B) and the DR repository (holds D): two stores, one key, as replication makes them. */
const production = new MemoryObjectStore();
const dr = new MemoryObjectStore();
let dir: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function backup(store: MemoryObjectStore, backupId: string, data: Buffer, chunkSize = CHUNK) {
  const reader = bufferReader(data);
  await backupDisk({ repository: new Repository(store, keys), reader, disk: { diskId: 'vda', path: 'mem', sizeBytes: data.length }, backupId, chunkSize });
}
const side = (store: MemoryObjectStore, backupId: string) => ({
  repository: new Repository(store, keys),
  backupId,
  what: store === dr ? 'DR repository' : 'production repository',
});

/** Three chunks changed at the DR site (one into a hole, one to zeros) on a 16-chunk disk. */
function drChanges(b: Buffer): Buffer {
  const d = Buffer.from(b);
  randomBytes(100).copy(d, 2 * CHUNK + 7);
  randomBytes(100).copy(d, 9 * CHUNK); // into the hole
  d.fill(0, 14 * CHUNK, 15 * CHUNK); // data becomes zeros
  return d;
}

let base: Buffer;
let target: Buffer;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-failback-'));
  base = Buffer.concat([randomBytes(8 * CHUNK), Buffer.alloc(4 * CHUNK), randomBytes(4 * CHUNK)]);
  target = drChanges(base);
  await backup(production, 'B', base);
  await backup(dr, 'B', base); // the replicated copy the DR VM was started from
  await backup(dr, 'D', target);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('applyDiskDelta', () => {
  it('writes only the chunks whose ids differ between B and D, sending only their stored bytes, and the disk ends equal to D', async () => {
    const path = join(dir, 'prod.raw');
    await writeFile(path, base);
    const r = await applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'D') });
    expect(r).toMatchObject({
      chunks: 16,
      chunksChanged: 3,
      bytesChanged: 3 * CHUNK,
      chunksDrifted: 0,
      chunksWritten: 3,
      bytesWritten: 3 * CHUNK,
      sha256: sha(target),
    });
    // Sent: the random chunk (incompressible) and the former hole with 100 random bytes (compresses to little); the zeroed chunk costs nothing.
    expect(r.bytesSent).toBeGreaterThan(CHUNK);
    expect(r.bytesSent).toBeLessThan(CHUNK + 2048);
    expect(sha(await readFile(path))).toBe(sha(target));
  });

  it('finds a production disk that no longer matches B by hashing its chunks, and still makes it equal to D (full compare-and-write)', async () => {
    const path = join(dir, 'drifted.raw');
    const drifted = Buffer.from(base);
    randomBytes(10).copy(drifted, 5 * CHUNK); // changed at production after the failover
    randomBytes(10).copy(drifted, 2 * CHUNK + 50000); // and one the DR site changed too
    await writeFile(path, drifted);
    const r = await applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'D') });
    expect(r).toMatchObject({ chunksChanged: 3, chunksDrifted: 2, chunksWritten: 4, sha256: sha(target) });
    expect(sha(await readFile(path))).toBe(sha(target));
  });

  it("in trust mode reads nothing of the disk and writes the manifests' difference only", async () => {
    const path = join(dir, 'trust.raw');
    await writeFile(path, base);
    // A stray byte in an unchanged chunk is not seen: trust mode is for a disk this failback just made equal to the base.
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([1]), 0, 1, 0);
    await fh.close();
    const r = await applyDiskDelta({ path, diskId: 'vda', mode: 'trust', from: side(dr, 'B'), to: side(dr, 'D') });
    expect(r).toMatchObject({ chunksChanged: 3, chunksWritten: 3, chunksDrifted: 0, sha256: null });
    const after = await readFile(path);
    expect(after[0]).toBe(1);
    expect(sha(after.subarray(CHUNK))).toBe(sha(target.subarray(CHUNK)));
  });

  it('refuses, naming the disk and what to do, a resized disk, a chunk size that differs, and a missing manifest', async () => {
    const path = join(dir, 'bad.raw');
    await writeFile(path, base.subarray(0, 8 * CHUNK));
    await expect(applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'D') })).rejects.toThrow(
      `the production disk 'vda' at ${path} is ${8 * CHUNK} bytes, the DR VM's disk ${16 * CHUNK}: resize it to ${16 * CHUNK} bytes first`,
    );
    await backup(dr, 'D-big-chunks', target, 2 * CHUNK);
    await expect(applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'D-big-chunks') })).rejects.toThrow(
      /has 65536-byte chunks and backup D-big-chunks 131072-byte chunks, so their chunk ids cannot be compared/,
    );
    await expect(applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'nope') })).rejects.toThrow(
      "the manifest of disk 'vda' of backup nope is missing from the DR repository",
    );
  });

  it('names the chunk, the disk and the offset when a chunk in the DR repository is damaged, and writes nothing wrong', async () => {
    const path = join(dir, 'damaged.raw');
    await writeFile(path, base);
    const packs = [...dr.objects.keys()].filter((k) => k.startsWith('packs/'));
    const saved = new Map(packs.map((k) => [k, Buffer.from(dr.objects.get(k)!)]));
    for (const k of packs) dr.objects.get(k)!.fill(7, 40, 60);
    try {
      await expect(applyDiskDelta({ path, diskId: 'vda', mode: 'hash', from: side(production, 'B'), to: side(dr, 'D') })).rejects.toThrow(
        /^chunk [0-9a-f]+ in packs\/\S+ \(disk 'vda', offset 131072\) in the DR repository is damaged/,
      );
    } finally {
      for (const [k, v] of saved) dr.objects.set(k, v);
    }
    expect(sha(await readFile(path))).toBe(sha(base));
  });
});
