/** Verify against the in-memory store: what it catches, from manifests and HEADs alone, in both repository formats. */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { chunkId, deriveKeys, encodeManifest, objectKeys, seal, type Manifest } from '../repository/format.ts';
import { objectSha256 } from '../core/object-store.ts';
import type { DiskRef, DiskResult, VmJob } from '../contracts/jobs.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { verify } from '../functions/backup/verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

type Job = VmJob & { disks: DiskResult[] };
const jobOf = (disks: DiskRef[], results: DiskResult[]): Job =>
  ({ backupId: 'b1', vmId: 'vm', snapshot: { handle: 'h', disks, config: {} }, disks: results }) as unknown as Job;

function memoryDisk(data: Buffer): DiskReader {
  return { sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} };
}

/** 3 random chunks, a zero chunk, a text chunk: 4 stored chunks. */
const diskData = () => Buffer.concat([randomBytes(CHUNK * 3), Buffer.alloc(CHUNK), Buffer.from('x'.repeat(CHUNK))]);

/**
 * A format-1 backup of one disk, written by hand as format-1 movers did: one object per
 * chunk under `chunks/`, a version-1 manifest with stored sizes and SHA-256s.
 */
async function backedUpV1(store: MemoryObjectStore): Promise<Job> {
  const data = diskData();
  const chunks: (string | null)[] = [];
  const storedSizes: Record<string, number> = {};
  const storedSha256: Record<string, string> = {};
  for (let at = 0; at < data.length; at += CHUNK) {
    const plain = data.subarray(at, at + CHUNK);
    if (plain.every((b) => b === 0)) {
      chunks.push(null);
      continue;
    }
    const id = chunkId(keys, plain);
    const sealed = await seal(keys, plain, id);
    await store.put(objectKeys.chunk(id), sealed);
    chunks.push(id);
    storedSizes[id] = sealed.length;
    storedSha256[id] = objectSha256(sealed);
  }
  const m: Manifest = { version: 1, backupId: 'b1', diskId: 'disk0', sizeBytes: data.length, chunkSize: CHUNK, chunks, storedSizes, storedSha256 };
  const manifestKey = objectKeys.manifest('b1', 'disk0');
  await store.put(manifestKey, await encodeManifest(keys, m));
  const disk: DiskRef = { diskId: 'disk0', path: 'mem', sizeBytes: data.length };
  return jobOf([disk], [{ diskId: 'disk0', sizeBytes: data.length, manifestKey } as DiskResult]);
}

/**
 * A format-2 backup of two disks by the real mover, with small packs: disk1 holds disk0's
 * data again (found in the repository's index, so both manifests name the same packs) and
 * chunks of its own.
 */
async function backedUpV2(store: MemoryObjectStore): Promise<Job> {
  const d0 = diskData();
  const d1 = Buffer.concat([d0, randomBytes(CHUNK * 2)]);
  const disks: DiskRef[] = [
    { diskId: 'disk0', path: 'mem', sizeBytes: d0.length },
    { diskId: 'disk1', path: 'mem', sizeBytes: d1.length },
  ];
  const results: DiskResult[] = [];
  for (const [disk, data] of [
    [disks[0]!, d0],
    [disks[1]!, d1],
  ] as const) {
    results.push(
      await backupDisk({
        repository: new Repository(store, keys),
        reader: memoryDisk(data),
        disk,
        backupId: 'b1',
        chunkSize: CHUNK,
        packBytes: 2 * CHUNK,
        parallelism: 1,
      }),
    ); // one chunk at a time: packs of two chunks, however the worker is scheduled
  }
  return jobOf(disks, results);
}

const manifestOf = async (diskId: string) => decodeManifest(keys, store.objects.get(objectKeys.manifest('b1', diskId))!, 'b1', diskId, store);
const packKeys = (store: MemoryObjectStore) => [...store.objects.keys()].filter((k) => k.startsWith('packs/'));

/** Counts HEAD requests by key. */
function countHeads(store: MemoryObjectStore): Map<string, number> {
  const heads = new Map<string, number>();
  const head = store.head.bind(store);
  store.head = async (key) => {
    heads.set(key, (heads.get(key) ?? 0) + 1);
    return head(key);
  };
  return heads;
}

let store: MemoryObjectStore;
beforeEach(() => {
  store = new MemoryObjectStore();
});

describe('Verify of a format-1 backup (a chunk object each)', () => {
  it('passes a complete backup and compares store checksums where the store keeps them', async () => {
    const job = await backedUpV1(store);
    const out = await verify(job, { repository: new Repository(store, keys) });
    expect(out).toMatchObject({ chunksChecked: 4, checksumsCompared: 4, packsChecked: 0 }); // the zero chunk is not stored
    const chunkBytes = [...store.objects].filter(([k]) => k.startsWith('chunks/')).reduce((n, [, b]) => n + b.length, 0);
    expect(out.bytesChecked).toBe(chunkBytes);
  });

  it('checks sizes only on a store without checksums (like s3rver)', async () => {
    const job = await backedUpV1(store);
    store.keepChecksums = false;
    expect(await verify(job, { repository: new Repository(store, keys) })).toMatchObject({ chunksChecked: 4, checksumsCompared: 0 });
  });

  it('fails naming the object key, disk and backup when a referenced chunk is missing', async () => {
    const job = await backedUpV1(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    store.objects.delete(victim);
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `chunk ${victim} of disk 'disk0' (backup b1) is missing from the repository`,
    });
  });

  it('fails when a chunk was replaced by one of another size', async () => {
    const job = await backedUpV1(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    const expected = store.objects.get(victim)!.length;
    store.objects.set(victim, Buffer.alloc(10));
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `chunk ${victim} of disk 'disk0' (backup b1) is 10 bytes, the manifest expects ${expected}`,
    });
  });

  it('fails when a chunk of the same size has other content than was uploaded', async () => {
    const job = await backedUpV1(store);
    const victim = [...store.objects.keys()].find((k) => k.startsWith('chunks/'))!;
    store.objects.get(victim)![20]! ^= 1;
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: expect.stringMatching(new RegExp(`^chunk ${victim} .* has SHA-256 `)),
    });
  });
});

describe('Verify of a format-2 backup (chunks in packs)', () => {
  it('passes a backup the mover wrote, HEADing each pack once however many chunks and disks share it', async () => {
    const job = await backedUpV2(store);
    const packs = packKeys(store);
    expect(packs.length).toBeGreaterThan(2);
    const heads = countHeads(store);
    const out = await verify(job, { repository: new Repository(store, keys) });
    expect([...heads.keys()].sort()).toEqual(packs.sort());
    expect([...heads.values()].every((n) => n === 1)).toBe(true);
    // disk0: 4 distinct chunks; disk1: the same 4 and 2 of its own.
    expect(out).toEqual({
      chunksChecked: 10,
      packsChecked: packs.length,
      bytesChecked: packs.reduce((n, k) => n + store.objects.get(k)!.length, 0),
      checksumsCompared: 0,
      packsTrusted: 0, // no parent
    });
  });

  it('fails naming the pack, the disk and the backup when a pack is missing', async () => {
    const job = await backedUpV2(store);
    // A pack only disk1 names (every pack disk0 names is named by disk1 too).
    const [p0, p1] = await Promise.all(['disk0', 'disk1'].map(async (d) => (await manifestOf(d)).packs!.map((p) => objectKeys.pack(p.id))));
    const victim = p1!.find((k) => !p0!.includes(k))!;
    expect(victim).toBeDefined();
    store.objects.delete(victim);
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `pack ${victim} of disk 'disk1' (backup b1) is missing from the repository`,
    });
  });

  it('fails when a pack is not the size the manifest records', async () => {
    const job = await backedUpV2(store);
    const victim = packKeys(store)[0]!;
    const body = store.objects.get(victim)!;
    store.objects.set(victim, body.subarray(0, body.length - 1));
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: expect.stringMatching(
        new RegExp(`^pack ${victim} of disk 'disk[01]' \\(backup b1\\) is ${body.length - 1} bytes, the manifest expects ${body.length}$`),
      ),
    });
  });

  it('fails when a manifest is missing', async () => {
    const job = await backedUpV2(store);
    store.objects.delete(objectKeys.manifest('b1', 'disk1'));
    await expect(verify(job, { repository: new Repository(store, keys) })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `manifest ${objectKeys.manifest('b1', 'disk1')} of disk 'disk1' is missing`,
    });
  });
});
