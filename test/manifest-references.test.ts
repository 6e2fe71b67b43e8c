/**
 * What the repository answers about a manifest whatever its version, so no caller branches
 * on it: the objects it references (Verify, replication), whether it can be an incremental's
 * base (the mover), and whether JoinSegments can join it by its pieces.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Corrupt } from '../contracts/errors.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { segmentPieces } from '../repository/join.ts';
import { Repository } from '../repository/open.ts';
import { referencedObjects } from '../repository/referenced.ts';
import { RecentIds } from '../repository/manifest/recent.ts';
import { writeV1Backup } from './helpers/format-v1.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

/** 6 chunks: the first repeated at 2, a zero chunk at 3. */
function disk(): Buffer {
  const a = randomBytes(CHUNK);
  return Buffer.concat([a, randomBytes(CHUNK), a, Buffer.alloc(CHUNK), randomBytes(CHUNK), randomBytes(CHUNK)]);
}

async function v3(store: MemoryObjectStore, data: Buffer): Promise<void> {
  const reader = bufferReader(data);
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
    backupId: 'b3',
    chunkSize: CHUNK,
    parallelism: 2,
    packBytes: 2 * CHUNK,
  });
}

async function allReferences(repository: Repository, backupId: string) {
  const m = (await repository.openManifest(backupId, 'disk0'))!;
  const recent = new RecentIds();
  const out = { chunks: 0, objects: [] as ReturnType<typeof referencedObjects>['objects'] };
  for await (const b of m.batches()) {
    const r = referencedObjects(b, (id) => recent.fresh(id));
    out.chunks += r.chunks;
    out.objects.push(...r.objects);
  }
  return out;
}

describe('the objects a manifest references', () => {
  it('format 1: each distinct chunk as its own object, at its stored size', async () => {
    const store = new MemoryObjectStore();
    const m = await writeV1Backup(store, keys, { backupId: 'b1', data: disk(), chunkSize: CHUNK });
    const refs = await allReferences(new Repository(store, keys), 'b1');
    expect(refs.chunks).toBe(5); // 6 chunks, one repeated (this writer stored the zero chunk like any other)
    expect(refs.objects.map((o) => o.id).sort()).toEqual([...new Set(m.chunks)].sort());
    for (const o of refs.objects) {
      expect(o.kind).toBe('chunk');
      expect(o.key).toBe(objectKeys.chunk(o.id));
      expect(store.objects.get(o.key)!.length).toBe(o.size);
      expect(o.chunks).toEqual([{ id: o.id, offset: 0, length: o.size }]);
    }
  });

  it('format 3: the packs, each once, with the chunks in them at the offsets their trailers list', async () => {
    const store = new MemoryObjectStore();
    await v3(store, disk());
    const repository = new Repository(store, keys);
    const refs = await allReferences(repository, 'b3');
    expect(refs.chunks).toBe(4); // 6 chunks: one repeat, one zero
    expect(new Set(refs.objects.map((o) => o.key)).size).toBe(refs.objects.length);
    for (const o of refs.objects) {
      expect(o.kind).toBe('pack');
      expect(o.key).toBe(objectKeys.pack(o.id));
      const body = store.objects.get(o.key)!;
      expect(body.length).toBe(o.size);
      const listed = repository.packTrailer(body, o.id).chunks;
      for (const c of o.chunks) expect(listed).toContainEqual(expect.objectContaining(c));
    }
  });
});

describe('an incremental backup base', () => {
  it('is a format-3 parent of the same chunk size: its chunks by number, zeros as null', async () => {
    const store = new MemoryObjectStore();
    const data = disk();
    await v3(store, data);
    const base = await new Repository(store, keys).openParent('b3', 'disk0', { chunkSize: CHUNK, from: 0 });
    if (!base || 'unusable' in base) throw new Error(`expected a base, got ${JSON.stringify(base)}`);
    expect(base.sizeBytes).toBe(data.length);
    await base.cursor.ensure(5, 0);
    const chunks = [0, 1, 2, 3, 4, 5].map((i) => base.cursor.get(i));
    expect(chunks[3]).toBeNull();
    expect(chunks[0]!.id).toBe(chunks[2]!.id);
    for (const c of [0, 1, 4, 5]) expect(store.objects.has(objectKeys.pack(chunks[c]!.stored.pack.id))).toBe(true);
    await base.cursor.close();
  });

  it('is not a format-1 parent (its chunks are not in packs), nor one of another chunk size; a missing one is undefined', async () => {
    const store = new MemoryObjectStore();
    await writeV1Backup(store, keys, { backupId: 'b1', data: disk(), chunkSize: CHUNK });
    await v3(store, disk());
    const repository = new Repository(store, keys);
    expect(await repository.openParent('b1', 'disk0', { chunkSize: CHUNK, from: 0 })).toEqual({
      unusable: 'the parent backup has another chunk size or format',
    });
    expect(await repository.openParent('b3', 'disk0', { chunkSize: 2 * CHUNK, from: 0 })).toEqual({
      unusable: 'the parent backup has another chunk size or format',
    });
    expect(await repository.openParent('gone', 'disk0', { chunkSize: CHUNK, from: 0 })).toBeUndefined();
  });
});

describe('joining segments', () => {
  it('takes a format-3 manifest by its pieces and refuses an older one, naming it', async () => {
    const store = new MemoryObjectStore();
    await writeV1Backup(store, keys, { backupId: 'b1', data: disk(), chunkSize: CHUNK });
    await v3(store, disk());
    const repository = new Repository(store, keys);
    const pieces = segmentPieces((await repository.openManifest('b3', 'disk0'))!);
    expect(pieces.map((p) => [p.firstChunk, p.count])).toEqual([[0, 6]]);
    const old = (await repository.openManifest('b1', 'disk0'))!;
    expect(() => segmentPieces(old)).toThrow(Corrupt);
    expect(() => segmentPieces(old)).toThrow('segment manifest disk0 of backup b1 has format 1, written by an older mover; run the backup again');
  });
});
