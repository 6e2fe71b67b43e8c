/**
 * A mover's repository index with its listings in local files (repository/index-spill.ts,
 * IndexCache's `dir`): nothing visible is left in the folder, an index stays readable after
 * the objects it read are forgotten, a refresh with nothing new gives the same index, and
 * a folder that cannot hold the listings fails naming it. (IndexCache's behaviour as
 * objects come and go is checked in both forms by test/packs.test.ts.)
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { SpilledListing } from '../repository/index-spill.ts';
import { encodeIndexObject, IndexListing, type PackContents } from '../repository/packs.ts';
import { IndexCache, RepositoryIndex } from '../repository/repository-index.ts';

const keys = deriveKeys(randomBytes(32));
const fakeId = (n: number) => createHash('sha256').update(String(n)).digest('hex');
const packId = (n: number) => n.toString(16).padStart(32, '0');
/** One pack of `count` chunks numbered from `first`. */
const onePack = (p: number, first: number, count: number): PackContents[] => [
  { pack: { id: packId(p), size: count * 100 }, chunks: Array.from({ length: count }, (_, i) => ({ id: fakeId(first + i), offset: i * 100, length: 100 })) },
];
const put = async (store: MemoryObjectStore, indexId: string, packs: PackContents[]) =>
  store.put(objectKeys.index(indexId), await encodeIndexObject(keys, indexId, packs));

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-index-spill-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('SpilledListing', () => {
  it('reads back what it wrote: the same lookups as the listing in memory, ids that share a prefix told apart', async () => {
    const packs = [...onePack(1, 0, 500), ...onePack(2, 500, 300)];
    // A chunk whose id shares its first 8 bytes with chunk 3 (the table keeps 4): found apart by the full id.
    const twin = fakeId(3).slice(0, 16) + fakeId(99_999).slice(16);
    packs[1]!.chunks.push({ id: twin, offset: 29_000, length: 7 });
    const inMemory = IndexListing.of(packs);
    const spilled = await SpilledListing.write(dir, inMemory, 'index object test');
    expect(await readdir(dir)).toEqual([]); // unlinked at once
    expect([spilled.entries, spilled.packs, spilled.plaintext().equals(inMemory.bytes)]).toEqual([801, 2, true]);
    const a = RepositoryIndex.of([inMemory]);
    const b = RepositoryIndex.of([spilled]);
    for (const id of [...Array.from({ length: 800 }, (_, n) => fakeId(n)), twin]) expect(b.get(id), id).toEqual(a.get(id));
    expect(b.get(twin)).toMatchObject({ key: objectKeys.pack(packId(2)), offset: 29_000, length: 7 });
    expect(b.get(fakeId(800))).toBeUndefined();
  });
});

describe('an index over several spilled listings', () => {
  it('reads each into one buffer in turn (a larger one first, then a smaller): the same lookups as in memory', async () => {
    const large = IndexListing.of([...onePack(1, 0, 700), ...onePack(2, 700, 100)]);
    const small = IndexListing.of(onePack(3, 800, 50));
    const spilled = [await SpilledListing.write(dir, large, 'index object large'), await SpilledListing.write(dir, small, 'index object small')];
    const reuse = Buffer.alloc(large.bytes.length);
    expect([spilled[1]!.plaintext(reuse).equals(small.bytes), spilled[0]!.plaintext(Buffer.alloc(8)).equals(large.bytes)]).toEqual([true, true]);
    const a = RepositoryIndex.of([large, small]);
    const b = RepositoryIndex.of(spilled);
    expect([b.size, b.objects]).toEqual([850, 2]);
    for (const n of [0, 699, 700, 799, 800, 849]) expect(b.get(fakeId(n)), `chunk ${n}`).toEqual(a.get(fakeId(n)));
    expect(b.get(fakeId(850))).toBeUndefined();
  });
});

describe('IndexCache with a local folder', () => {
  it('leaves no file in the folder, and gives the same index while nothing changed', async () => {
    const store = new MemoryObjectStore();
    await put(store, 'a'.repeat(32), onePack(1, 0, 100));
    const cache = new IndexCache(store, keys, { dir: join(dir, 'made') });
    const first = await cache.refresh();
    expect(first.get(fakeId(42))).toMatchObject({ key: objectKeys.pack(packId(1)), offset: 4200 });
    expect(await readdir(join(dir, 'made'))).toEqual([]);
    expect(await cache.refresh()).toBe(first);
    await put(store, 'b'.repeat(32), onePack(2, 100, 10));
    const second = await cache.refresh();
    expect(second).not.toBe(first);
    expect([second.size, cache.lastRead]).toEqual([110, 1]);
  });

  it('keeps an index readable after garbage collection replaced the objects it was built from (a backup still running on it)', async () => {
    const store = new MemoryObjectStore();
    await put(store, 'a'.repeat(32), onePack(1, 0, 50));
    const cache = new IndexCache(store, keys, { dir });
    const old = await cache.refresh();
    // The object is merged into another one and deleted; the cache forgets it on its next refresh.
    await put(store, 'c'.repeat(32), [...onePack(1, 0, 50), ...onePack(3, 50, 5)]);
    store.objects.delete(objectKeys.index('a'.repeat(32)));
    const fresh = await cache.refresh();
    expect([fresh.size, fresh.objects]).toEqual([55, 1]);
    expect(old.get(fakeId(7))).toEqual(fresh.get(fakeId(7)));
    expect(old.get(fakeId(52))).toBeUndefined();
  });

  it('fails naming the folder when it cannot hold the listings, and names the next step', async () => {
    const store = new MemoryObjectStore();
    await put(store, 'a'.repeat(32), onePack(1, 0, 5));
    const file = join(dir, 'a-file');
    await writeFile(file, 'not a folder');
    await expect(new IndexCache(store, keys, { dir: join(file, 'index') }).refresh()).rejects.toThrow(
      new RegExp(`cannot keep the repository index in the local folder ${join(file, 'index')} .*ENOTDIR.*LIFEBOAT_WORK_DIR`),
    );
    // A folder it may not write in (root may write anywhere: then the refresh succeeds, and that is checked instead).
    const locked = join(dir, 'locked');
    await new IndexCache(store, keys, { dir: locked }).refresh();
    await chmod(locked, 0o500);
    const refresh = new IndexCache(store, keys, { dir: locked }).refresh();
    if (process.getuid?.() === 0) expect((await refresh).size).toBe(5);
    else await expect(refresh).rejects.toThrow(/cannot keep index object index\/a{32} in the local folder .*EACCES/);
  });
});
