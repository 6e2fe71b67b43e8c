/** Deep verification of a disk (mover/recovery/deep-verify.ts) and RecordDeepVerify's healing, on in-memory repositories. */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { GetOptions, ObjectStore, PutChecksum } from '../core/object-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import type { DeepVerifyJob } from '../contracts/recovery-jobs.ts';
import type { BackupDamage, RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { recordDeepVerify } from '../functions/deep-verify/deep-verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { deepVerifyDisk } from '../mover/recovery/deep-verify.ts';
import { writeV1Backup } from './helpers/format-v1.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const job = (backupId: string, verifyId = 'v1'): DeepVerifyJob => ({
  verifyId,
  vmId: 'vm',
  backupId,
  moverGroup: 'g',
  repository: { bucket: 'repo' },
  sample: 1,
  disks: [],
});

/** The memory store, counting requests. */
class Counting implements ObjectStore {
  gets: { key: string; range?: { offset: number; length: number } }[] = [];
  lists: string[] = [];
  readonly inner: MemoryObjectStore;
  constructor(inner: MemoryObjectStore) {
    this.inner = inner;
  }
  put(key: string, body: Uint8Array, checksum?: PutChecksum) {
    return this.inner.put(key, body, checksum);
  }
  head(key: string) {
    return this.inner.head(key);
  }
  get(key: string, opts: GetOptions = {}) {
    this.gets.push({ key, ...(opts.range ? { range: opts.range } : {}) });
    return this.inner.get(key, opts);
  }
  list(prefix: string) {
    this.lists.push(prefix);
    return this.inner.list(prefix);
  }
}

async function backup(store: MemoryObjectStore, backupId: string, data: Buffer, healChunks?: Set<string>) {
  const reader = bufferReader(data);
  const r = await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
    backupId,
    chunkSize: CHUNK,
    parallelism: 2,
    ...(healChunks ? { healChunks } : {}),
  });
  return { r, m: await decodeManifest(keys, (await store.get(objectKeys.manifest(backupId, 'disk0')))!, backupId, 'disk0', store) };
}
const verify = (store: ObjectStore, backupId: string, sizeBytes: number, verifyId?: string) =>
  deepVerifyDisk(job(backupId, verifyId), { diskId: 'disk0', sizeBytes }, { repository: new Repository(store, keys), parallelism: 4 });

describe('deepVerifyDisk, format 2', () => {
  it('reads an intact backup with one range GET per run of chunks and never loads the index', async () => {
    const mem = new MemoryObjectStore();
    // 72 chunks, one repeated, one all-zero: 70 distinct chunks (~4.4 MiB) in one 8 MiB pack, read in runs of at most 4 MiB.
    const a = randomBytes(CHUNK);
    const data = Buffer.concat([a, Buffer.alloc(CHUNK), a, ...Array.from({ length: 69 }, () => randomBytes(CHUNK))]);
    const { m } = await backup(mem, 'b1', data);
    expect(m.packs).toHaveLength(1);
    const store = new Counting(mem);
    const out = await verify(store, 'b1', data.length);
    expect(out).toMatchObject({ chunksTotal: 70, chunksChecked: 70, damaged: [], chunksFromOtherCopies: 0 });
    const packGets = store.gets.filter((g) => g.key.startsWith('packs/'));
    expect(packGets.every((g) => g.range !== undefined)).toBe(true);
    expect(packGets.length).toBe(2); // not 70 GETs: two runs of at most 4 MiB
    expect(store.gets).toHaveLength(2 + packGets.length); // and the manifest and its piece
    expect(store.lists).toEqual([]);
    expect(out.bytesRead).toBe(packGets.reduce((n, g) => n + g.range!.length, 0) + mem.objects.get(objectKeys.manifest('b1', 'disk0'))!.length);
  });

  it('names a damaged chunk in a pack by its id, the pack, its bytes and its disk offsets; healed once a later backup stored it again', async () => {
    const mem = new MemoryObjectStore();
    const a = randomBytes(CHUNK);
    const data = Buffer.concat([randomBytes(CHUNK), a, randomBytes(CHUNK), a]);
    const { m } = await backup(mem, 'b1', data);
    const id = m.chunks[1]!;
    const at = chunkLocation(m, id);
    mem.objects.get(at.key)![at.offset + 100]! ^= 8;

    const store = new Counting(mem);
    const first = await verify(store, 'b1', data.length);
    expect(first.damaged).toEqual([
      {
        backupId: 'b1',
        diskId: 'disk0',
        offsets: [CHUNK, 3 * CHUNK],
        objectKey: at.key,
        chunkId: id,
        range: { offset: at.offset, length: at.length },
        reason: expect.stringContaining('failed authentication'),
      },
    ]);
    expect(first.chunksFromOtherCopies).toBe(0);
    expect(store.lists).toEqual(['index/', 'index/']); // loaded once damage was found (a LIST, then one confirming it)

    // The chunk quarantined: the next backup stores it again in a new pack (healChunks), readers fall back to it.
    const { r, m: m2 } = await backup(mem, 'b2', data, new Set([id]));
    expect(r.stats.uploadedChunks).toBe(1);
    expect(chunkLocation(m2, id).key).not.toBe(at.key);
    const healed = await verify(mem, 'b1', data.length, 'v2');
    expect(healed).toMatchObject({ chunksChecked: 3, damaged: [], chunksFromOtherCopies: 1 });
    // The damaged pack is still there and b1's manifest still points into it.
    expect(mem.objects.has(at.key)).toBe(true);
  });

  it('without another intact copy the damage stays: a chunk stored again without the heal filter reuses the damaged copy', async () => {
    const mem = new MemoryObjectStore();
    const data = randomBytes(3 * CHUNK);
    const { m } = await backup(mem, 'b1', data);
    const id = m.chunks[2]!;
    const at = chunkLocation(m, id);
    mem.objects.get(at.key)![at.offset + 20]! ^= 1;
    const { r } = await backup(mem, 'b2', data); // no healChunks: deduplicated against the index, i.e. the damaged copy
    expect(r.stats.uploadedChunks).toBe(0);
    const out = await verify(mem, 'b1', data.length);
    expect(out.damaged.map((f) => f.chunkId)).toEqual([id]);
  });

  it('reports a missing pack for every chunk it held, with the bytes each was in', async () => {
    const mem = new MemoryObjectStore();
    const data = randomBytes(2 * CHUNK);
    const { m } = await backup(mem, 'b1', data);
    const key = objectKeys.pack(m.packs![0]!.id);
    mem.objects.delete(key);
    const out = await verify(mem, 'b1', data.length);
    expect(out.damaged.map((f) => [f.chunkId, f.objectKey, f.offsets])).toEqual([
      [m.chunks[0], key, [0]],
      [m.chunks[1], key, [CHUNK]],
    ]);
    expect(out.damaged[0]!.reason).toBe(
      `the pack is missing from the repository (the chunk is bytes ${chunkLocation(m, m.chunks[0]!).offset}+${chunkLocation(m, m.chunks[0]!).length} of ${key})`,
    );
  });
});

describe('deepVerifyDisk, format 1', () => {
  const backupV1 = (store: MemoryObjectStore, data: Buffer) => writeV1Backup(store, keys, { backupId: 'b1', data, chunkSize: CHUNK });

  it('reads each chunk object with one whole GET and names a damaged or missing one by its key and id', async () => {
    const mem = new MemoryObjectStore();
    const data = randomBytes(3 * CHUNK);
    const m = await backupV1(mem, data);
    const store = new Counting(mem);
    expect(await verify(store, 'b1', data.length)).toMatchObject({ chunksChecked: 3, damaged: [] });
    expect(store.gets.filter((g) => g.key.startsWith('chunks/')).map((g) => g.range)).toEqual([undefined, undefined, undefined]);
    mem.objects.get(objectKeys.chunk(m.chunks[0]!))![30]! ^= 1;
    mem.objects.delete(objectKeys.chunk(m.chunks[2]!));
    const out = await verify(mem, 'b1', data.length);
    expect(out.damaged).toEqual([
      {
        backupId: 'b1',
        diskId: 'disk0',
        offsets: [0],
        objectKey: objectKeys.chunk(m.chunks[0]!),
        chunkId: m.chunks[0],
        reason: expect.stringContaining('failed authentication'),
      },
      {
        backupId: 'b1',
        diskId: 'disk0',
        offsets: [2 * CHUNK],
        objectKey: objectKeys.chunk(m.chunks[2]!),
        chunkId: m.chunks[2],
        reason: 'the chunk is missing from the repository',
      },
    ]);
  });
});

describe('recordDeepVerify', () => {
  it("clears the quarantine of the chunks a healed backup's findings named: by chunkId, or by the key of a format-1 finding", async () => {
    const packed = 'a1'.repeat(32);
    const old = 'b2'.repeat(32);
    const cleared: string[][] = [];
    const damage: BackupDamage = {
      verifyId: 'v-old',
      foundAt: '2026-11-01T00:00:00Z',
      findings: [
        {
          backupId: 'b1',
          diskId: 'disk0',
          offsets: [0],
          objectKey: objectKeys.pack('cc'.repeat(16)),
          chunkId: packed,
          range: { offset: 0, length: 10 },
          reason: 'x',
        },
        { backupId: 'b1', diskId: 'disk0', offsets: [0], objectKey: objectKeys.chunk(old), reason: 'y' },
        { backupId: 'b1', diskId: 'disk0', offsets: [], objectKey: objectKeys.manifest('b1', 'disk0'), reason: 'z' },
      ],
    };
    const markedVerified: string[] = [];
    const recovery = {
      markVerified: async (_vm: string, backupId: string) => void markedVerified.push(backupId),
      markHealthy: async () => damage,
      clearQuarantine: async (_repository: string, ids: string[]) => void cleared.push(ids),
      putRecord: async () => {},
    } as unknown as RecoveryCatalog;
    const verified = [{ diskId: 'disk0', chunksTotal: 2, chunksChecked: 2, bytesRead: 1, damaged: [], chunksFromOtherCopies: 1, seconds: 0 }];
    const s = await recordDeepVerify(
      { ...job('b1', 'v-new'), disks: [{ diskId: 'disk0', sizeBytes: 1 }], verified },
      { recovery, catalog: { backupsWithStatus: async () => [] }, now: () => new Date() },
    );
    expect(s.healed).toEqual({ previousVerifyId: 'v-old', chunks: [packed, old] });
    expect(cleared).toEqual([[packed, old]]);
    expect(markedVerified).toEqual(['b1']); // an intact verification is recorded on the backup (its 'verified')
  });
});
