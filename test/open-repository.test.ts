import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { openRepository } from '../repository/open.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('openRepository (one opener for movers, functions and the embedded stack)', () => {
  it('creates a repository with a key file, opens it again with the same keys, and names the key file that does not open it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-open-'));
    dirs.push(dir);
    const store = new MemoryObjectStore();
    const keyFile = join(dir, 'repository.keyfile');
    await expect(openRepository({ store, bucket: 'b', keys: { keyFile } })).rejects.toThrow(/key file .* does not exist/);
    const created = await openRepository({ store, bucket: 'b', keys: { keyFile }, create: true });
    const again = await openRepository({ store, bucket: 'b', keys: { keyFile } });
    const probe = Buffer.from('the same keys give the same chunk ids');
    expect(again.chunkId(probe)).toBe(created.chunkId(probe));
    // A manifest written through one handle reads through the other.
    const w = created.manifestWriter({ backupId: 'b1', manifestId: 'd', sizeBytes: 3 * 4096, chunkSize: 4096 });
    for (let i = 0; i < 3; i++) await w.add(null);
    await w.finish();
    expect((await again.openManifest('b1', 'd'))?.info).toMatchObject({ version: 3, to: 3 });
    await writeFile(keyFile, 'ab'.repeat(32) + '\n');
    await expect(openRepository({ store, bucket: 'b', keys: { keyFile } })).rejects.toThrow(new RegExp(`does not unwrap with key file ${keyFile}`));
  });
});
