/** A repository written by format version 1 (test/fixtures/repo-v1) stays readable. */
import { Repository } from '../repository/open.ts';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { KeyFileWrapper, loadMasterKey } from '../repository/keyring.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';

const fixture = fileURLToPath(new URL('./fixtures/repo-v1', import.meta.url));
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

it('restores the version 1 fixture repository byte-identical', async () => {
  const expected = JSON.parse(await readFile(join(fixture, 'expected.json'), 'utf8')) as {
    backupId: string;
    diskId: string;
    sizeBytes: number;
    sha256: string;
  };
  const store = new MemoryObjectStore();
  const root = join(fixture, 'objects');
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) store.objects.set(relative(root, join(e.parentPath, e.name)), await readFile(join(e.parentPath, e.name)));
  }
  const keys = deriveKeys(await loadMasterKey(store, await KeyFileWrapper.load(join(fixture, 'keyfile'))));
  const manifest = await decodeManifest(
    keys,
    (await store.get(objectKeys.manifest(expected.backupId, expected.diskId)))!,
    expected.backupId,
    expected.diskId,
    store,
  );
  expect(manifest.chunks.length).toBe(5);
  expect(manifest.chunks[1]).toBeNull(); // the zero chunk
  expect(manifest.chunks[0]).toBe(manifest.chunks[2]); // the repeated chunk is stored once

  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-fixture-'));
  dirs.push(dir);
  const target = join(dir, 'disk0.raw');
  await restoreDisk({ repository: new Repository(store, keys), backupId: expected.backupId, diskId: expected.diskId, target });
  const restored = await readFile(target);
  expect(restored.length).toBe(expected.sizeBytes);
  expect(createHash('sha256').update(restored).digest('hex')).toBe(expected.sha256);
});
