/**
 * A repository written by format version 2 (test/fixtures/repo-v2, made once by
 * make-repo-v2.ts) stays readable: its packs, index objects and manifests keep their
 * structure, and both backups restore byte-identical.
 */
import { Repository } from '../repository/open.ts';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chunkId, deriveKeys, objectKeys, open, packIdOfKey, type Manifest, type RepositoryKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { KeyFileWrapper, loadMasterKey } from '../repository/keyring.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { chunkLocation, decodeIndexObject, planReads, type PackContents } from '../repository/packs.ts';
import { readPackTrailer } from '../repository/pack-trailer.ts';
import { RepositoryIndex } from '../repository/repository-index.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';

interface Expected {
  chunkSize: number;
  backups: { backupId: string; diskId: string; manifestKey: string; sizeBytes: number; sha256: string }[];
  packs: string[];
  indexes: string[];
}

const fixture = fileURLToPath(new URL('./fixtures/repo-v2', import.meta.url));
const dirs: string[] = [];
let expected: Expected;
let store: MemoryObjectStore;
let keys: RepositoryKeys;
let full: Manifest;
let incr: Manifest;
/** Each pack's trailer, by pack id. */
const trailers = new Map<string, PackContents>();

beforeAll(async () => {
  expected = JSON.parse(await readFile(join(fixture, 'expected.json'), 'utf8')) as Expected;
  store = new MemoryObjectStore();
  const root = join(fixture, 'objects');
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) store.objects.set(relative(root, join(e.parentPath, e.name)), await readFile(join(e.parentPath, e.name)));
  }
  keys = deriveKeys(await loadMasterKey(store, await KeyFileWrapper.load(join(fixture, 'keyfile'))));
  const manifest = async (i: number) => {
    const b = expected.backups[i]!;
    return decodeManifest(keys, (await store.get(objectKeys.manifest(b.backupId, b.diskId)))!, b.backupId, b.diskId, store);
  };
  [full, incr] = [await manifest(0), await manifest(1)];
  for (const key of expected.packs) trailers.set(packIdOfKey(key)!, readPackTrailer(keys, store.objects.get(key)!, packIdOfKey(key)!));
});
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('the version 2 fixture repository', () => {
  it('holds what make-repo-v2 wrote: 4 packs, 2 index objects, 2 manifests and the key', () => {
    expect([...store.objects.keys()].sort()).toEqual(
      [...expected.packs, ...expected.indexes, ...expected.backups.map((b) => b.manifestKey), objectKeys.masterKey()].sort(),
    );
    expect(expected.packs).toHaveLength(4);
    expect(expected.indexes).toHaveLength(2);
  });

  it('has format-2 manifests: chunks in packs at [pack, offset], zeros as null, a repeated chunk stored once', () => {
    for (const m of [full, incr]) {
      expect(m.version).toBe(2);
      expect(m.chunkSize).toBe(expected.chunkSize);
      expect(m.chunks).toHaveLength(8);
      expect(m.chunks[1]).toBeNull();
      expect(m.chunks[0]).toBe(m.chunks[2]);
      expect(m.storedSha256).toBeUndefined();
      expect(Object.keys(m.locations!).sort()).toEqual(Object.keys(m.storedSizes).sort());
      expect(Object.keys(m.storedSizes)).toHaveLength(6);
      // Every pack a manifest names exists, at the size the manifest records (what Verify checks with HEAD).
      for (const p of m.packs!) expect(store.objects.get(objectKeys.pack(p.id))?.length).toBe(p.size);
    }
    expect(full.packs).toHaveLength(3);
  });

  it("keeps the incremental's unchanged chunks where the full backup stored them, and its changed chunk in one new pack", () => {
    const fullPacks = new Set(full.packs!.map((p) => p.id));
    for (const [i, id] of incr.chunks.entries()) {
      if (id === null) continue;
      if (i === 5) {
        expect(id).not.toBe(full.chunks[5]);
        expect(fullPacks.has(chunkLocation(incr, id).pack!.id)).toBe(false);
      } else {
        expect(id).toBe(full.chunks[i]);
        expect(chunkLocation(incr, id)).toEqual(chunkLocation(full, id));
      }
    }
    expect(incr.packs!.filter((p) => !fullPacks.has(p.id))).toHaveLength(1);
  });

  it("has packs whose trailers list exactly the chunks at the manifests' locations, each opening under its id", async () => {
    const listed = new Map<string, { pack: string; offset: number; length: number }>();
    for (const [packId, t] of trailers) {
      expect(t.pack.size).toBe(store.objects.get(objectKeys.pack(packId))!.length);
      for (const c of t.chunks) listed.set(c.id, { pack: packId, offset: c.offset, length: c.length });
    }
    // Every chunk is in exactly one pack (stored once), and nothing else is.
    expect([...trailers.values()].reduce((n, t) => n + t.chunks.length, 0)).toBe(listed.size);
    expect([...listed.keys()].sort()).toEqual([...new Set([...Object.keys(full.storedSizes), ...Object.keys(incr.storedSizes)])].sort());
    for (const m of [full, incr]) {
      for (const id of Object.keys(m.storedSizes)) {
        const loc = chunkLocation(m, id);
        expect(listed.get(id)).toEqual({ pack: loc.pack!.id, offset: loc.offset, length: loc.length });
        const plain = await open(keys, store.objects.get(loc.key)!.subarray(loc.offset, loc.offset + loc.length), id);
        expect(chunkId(keys, plain)).toBe(id);
      }
    }
  });

  it('has index objects that list every pack once, as its trailer does; the repository index finds every chunk', async () => {
    const indexed: PackContents[][] = [];
    for (const key of expected.indexes) indexed.push(await decodeIndexObject(keys, store.objects.get(key)!, key.slice('index/'.length)));
    // One index object per backup: the full backup's three packs, the incremental's one.
    expect(indexed.map((i) => i.length).sort()).toEqual([1, 3]);
    const all = indexed.flat();
    expect(all.map((p) => p.pack.id).sort()).toEqual([...trailers.keys()].sort());
    for (const p of all) expect(p).toEqual(trailers.get(p.pack.id));

    const index = await RepositoryIndex.load(store, keys);
    expect(index.objects).toBe(2);
    for (const m of [full, incr]) for (const id of Object.keys(m.storedSizes)) expect(index.all(id)).toEqual([chunkLocation(m, id)]);
  });

  it('plans the restore as range reads of whole runs of its packs', () => {
    for (const m of [full, incr]) {
      const runs = planReads(m, Object.keys(m.storedSizes));
      expect(runs.every((r) => r.packed)).toBe(true);
      expect(runs.length).toBe(m.packs!.length); // neighbouring chunks of a pack: one GET
    }
  });

  it('restores both backups byte-identical', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-fixture-v2-'));
    dirs.push(dir);
    for (const b of expected.backups) {
      const target = join(dir, `${b.backupId}.raw`);
      await restoreDisk({ repository: new Repository(store, keys), backupId: b.backupId, diskId: b.diskId, target });
      const restored = await readFile(target);
      expect(restored.length).toBe(b.sizeBytes);
      expect(createHash('sha256').update(restored).digest('hex'), b.backupId).toBe(b.sha256);
    }
  });
});
