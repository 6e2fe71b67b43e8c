/**
 * A repository written by format version 3 (test/fixtures/repo-v3, made once by
 * make-repo-v3.ts) stays readable: its manifests are a head and binary pieces, read as a
 * stream; both backups verify and restore byte-identical.
 */
import { Repository } from '../repository/open.ts';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { verifyManifests } from '../functions/backup/verify.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { chunkId, deriveKeys, open, type RepositoryKeys } from '../repository/format.ts';
import { KeyFileWrapper, loadMasterKey } from '../repository/keyring.ts';
import { ManifestReader } from '../repository/manifest/reader.ts';

interface Expected {
  chunkSize: number;
  backups: { backupId: string; diskId: string; manifestKey: string; sizeBytes: number; sha256: string }[];
  packs: string[];
  indexes: string[];
  manifestObjects: string[];
}

const fixture = fileURLToPath(new URL('./fixtures/repo-v3', import.meta.url));
const dirs: string[] = [];
let expected: Expected;
let store: MemoryObjectStore;
let keys: RepositoryKeys;

beforeAll(async () => {
  expected = JSON.parse(await readFile(join(fixture, 'expected.json'), 'utf8')) as Expected;
  store = new MemoryObjectStore();
  const root = join(fixture, 'objects');
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) store.objects.set(relative(root, join(e.parentPath, e.name)), await readFile(join(e.parentPath, e.name)));
  }
  keys = deriveKeys(await loadMasterKey(store, await KeyFileWrapper.load(join(fixture, 'keyfile'))));
});
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('the version 3 fixture repository', () => {
  it('has streamed manifests: a head naming one piece each, entries in disk order, zeros as null, each chunk opening under its id', async () => {
    expect(expected.manifestObjects).toHaveLength(4);
    const ids: (string | null)[][] = [];
    for (const b of expected.backups) {
      const m = (await ManifestReader.open(store, keys, b.backupId, b.diskId))!;
      expect(m.info).toMatchObject({ version: 3, sizeBytes: b.sizeBytes, chunkSize: expected.chunkSize, from: 0, to: 8 });
      expect(m.pieces().map((p) => p.key)).toEqual([`${b.manifestKey}.pieces/0`]);
      const these: (string | null)[] = [];
      for await (const batch of m.batches()) {
        for (let i = 0; i < batch.count; i++) {
          const id = batch.id(i);
          these.push(id);
          if (id === null) continue;
          const loc = batch.location(i)!;
          expect(expected.packs).toContain(loc.key);
          expect(chunkId(keys, await open(keys, store.objects.get(loc.key)!.subarray(loc.offset, loc.offset + loc.length), id))).toBe(id);
        }
      }
      expect(these[1]).toBeNull();
      expect(these[0]).toBe(these[2]);
      ids.push(these);
    }
    // The incremental changed chunk 5 only.
    expect(ids[1]!.map((id, i) => (id === ids[0]![i] ? '=' : 'x')).join('')).toBe('=====x==');
  });

  it('verifies and restores both backups byte-identical', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-fixture-v3-'));
    dirs.push(dir);
    for (const b of expected.backups) {
      const v = await verifyManifests(b.backupId, [{ diskId: b.diskId, manifestKey: b.manifestKey }], { repository: new Repository(store, keys) });
      expect(v.chunksChecked).toBe(6);
      const target = join(dir, `${b.backupId}.raw`);
      await restoreDisk({ repository: new Repository(store, keys), backupId: b.backupId, diskId: b.diskId, target });
      expect(
        createHash('sha256')
          .update(await readFile(target))
          .digest('hex'),
      ).toBe(b.sha256);
    }
  });
});
