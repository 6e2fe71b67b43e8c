/** QuarantineDamage (functions/deep-verify/quarantine.ts) and GC beside quarantine/, on the in-memory store. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { chunkId, chunkIdOfKey, deriveKeys, objectKeys, seal } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { quarantineKey } from '../repository/quarantine.ts';
import { newPackBuffer, sealIntoPack } from '../repository/pack-buffer.ts';
import { PackWriter } from '../repository/pack-writer.ts';
import { MemoryRepositoryAdmin } from '../repository/admin.ts';
import { Repository } from '../repository/open.ts';
import type { QuarantineRecord } from '../functions/catalog/recovery-catalog.ts';
import { collectGarbage } from '../functions/gc/gc.ts';
import { quarantineDamage } from '../functions/deep-verify/quarantine.ts';

const keys = deriveKeys(randomBytes(32));
const NOW = new Date('2026-11-23T12:00:00Z');

async function storedChunk(store: MemoryObjectStore) {
  const plain = randomBytes(4096);
  const id = chunkId(keys, plain);
  const key = objectKeys.chunk(id);
  await store.put(key, await seal(keys, plain, id));
  return { id, key };
}

/** A pack of `n` chunks, as a mover writes it. */
async function storedPack(store: MemoryObjectStore, n: number) {
  const writer = new PackWriter({ store: store, keys: keys, maxChunkBytes: 8192, newBuffer: newPackBuffer });
  for (let i = 0; i < n; i++) {
    const plain = randomBytes(4096);
    const id = chunkId(keys, plain);
    await writer.place(id, (buf) => sealIntoPack(keys, plain, id, {}, buf));
  }
  const [contents] = await writer.finish();
  return { key: objectKeys.pack(contents!.pack.id), chunks: contents!.chunks };
}

function setup() {
  const store = new MemoryObjectStore();
  const admin = new MemoryRepositoryAdmin(store);
  const records: { repository: string; r: QuarantineRecord }[] = [];
  const recovery = {
    putQuarantine: async (repository: string, r: QuarantineRecord) => void records.push({ repository, r }),
    markSharedDamage: async () => false,
  };
  // No other backups: sharing damage is tested end to end (shared-damage.e2e.test.ts).
  const catalog = { backupsWithStatus: async () => [] };
  return { store, admin, records, deps: { repository: new Repository(store, keys), admin, recovery, catalog, now: () => NOW } };
}
const request = (findings: { objectKey: string; reason: string; chunkId?: string; range?: { offset: number; length: number } }[]) => ({
  verifyId: 'verify-1',
  vmId: 'vm-1',
  backupId: 'b1',
  repository: { bucket: 'repo' },
  findings,
});

describe('quarantineDamage', () => {
  it('copies a damaged chunk to quarantine/, deletes it from chunks/ and records its id', async () => {
    const { store, records, deps } = setup();
    const { id, key } = await storedChunk(store);
    const body = (await store.get(key))!;
    body[20]! ^= 1;
    await store.put(key, body);
    const r = await quarantineDamage(
      request([
        { objectKey: key, reason: 'failed authentication' },
        { objectKey: key, reason: 'again, on disk1' },
      ]),
      deps,
    );
    expect(r.quarantined).toEqual([{ chunkId: id, objectKey: key, quarantineKey: quarantineKey('verify-1', key) }]);
    expect(store.objects.has(key)).toBe(false);
    expect(store.objects.get(`quarantine/verify-1/${key}`)).toEqual(body);
    expect(records).toHaveLength(1);
    expect(records[0]!.r).toMatchObject({ chunkId: id, objectKey: key, vmId: 'vm-1', backupId: 'b1', verifyId: 'verify-1', reason: 'failed authentication' });
    expect(records[0]!.repository).toBe('|repo');
  });

  it('records a missing chunk for re-upload without a copy, and leaves manifests and healthy chunks alone', async () => {
    const { store, records, deps } = setup();
    const healthy = await storedChunk(store);
    const missing = objectKeys.chunk('ab'.repeat(32));
    const manifest = objectKeys.manifest('b1', 'disk0');
    const r = await quarantineDamage(
      request([
        { objectKey: missing, reason: 'the chunk is missing from the repository' },
        { objectKey: healthy.key, reason: 'was damaged, a writer replaced it meanwhile' },
        { objectKey: manifest, reason: 'the manifest does not open' },
      ]),
      deps,
    );
    expect(r.quarantined).toEqual([{ chunkId: 'ab'.repeat(32), objectKey: missing }]);
    expect(r.alreadyHealthy).toEqual([healthy.key]);
    expect(r.notChunks).toEqual([manifest]);
    expect(store.objects.has(healthy.key)).toBe(true);
    expect(records.map((x) => x.r.chunkId)).toEqual(['ab'.repeat(32)]);
  });

  it("copies just the damaged chunk's bytes of a pack to quarantine/, records its id and leaves the pack in place", async () => {
    const { store, admin, records, deps } = setup();
    const deletes: string[][] = [];
    const del = admin.delete.bind(admin);
    admin.delete = async (k) => (deletes.push(k), del(k));
    const { key, chunks } = await storedPack(store, 3);
    const bad = chunks[1]!;
    store.objects.get(key)![bad.offset + 20]! ^= 1;
    const pack = Buffer.from(store.objects.get(key)!);
    const range = { offset: bad.offset, length: bad.length };
    const finding = { objectKey: key, chunkId: bad.id, range, reason: 'failed authentication' };
    const r = await quarantineDamage(request([finding, { ...finding, reason: 'again, on disk1' }]), deps);
    const kept = `quarantine/verify-1/${key}/${bad.id}`;
    expect(quarantineKey('verify-1', key, bad.id)).toBe(kept);
    expect(r).toEqual({
      quarantined: [{ chunkId: bad.id, objectKey: key, range, quarantineKey: kept }],
      alreadyHealthy: [],
      failed: [],
      notChunks: [],
      shared: [],
    });
    expect(store.objects.get(kept)).toEqual(pack.subarray(bad.offset, bad.offset + bad.length));
    // The pack stays, byte for byte: its other chunks are fine and other backups use them.
    expect(store.objects.get(key)).toEqual(pack);
    expect(deletes).toEqual([]);
    expect(records).toHaveLength(1);
    expect(records[0]!.r).toMatchObject({
      chunkId: bad.id,
      objectKey: key,
      quarantineKey: kept,
      vmId: 'vm-1',
      backupId: 'b1',
      verifyId: 'verify-1',
      reason: 'failed authentication',
    });
  });

  it('for packs: leaves a chunk that opens alone, records a chunk of a missing pack without a copy, and one without a byte range without reading', async () => {
    const { store, records, deps } = setup();
    const { key, chunks } = await storedPack(store, 2);
    const healthy = chunks[0]!;
    const gone = objectKeys.pack('cd'.repeat(16));
    const r = await quarantineDamage(
      request([
        { objectKey: key, chunkId: healthy.id, range: { offset: healthy.offset, length: healthy.length }, reason: 'read failed' },
        { objectKey: gone, chunkId: 'ab'.repeat(32), range: { offset: 0, length: 100 }, reason: 'the pack is missing from the repository' },
        { objectKey: key, chunkId: 'ef'.repeat(32), reason: 'a finding without its bytes' },
        { objectKey: key, reason: 'a finding that names no chunk' },
      ]),
      deps,
    );
    expect(r.alreadyHealthy).toEqual([`${key} bytes ${healthy.offset}+${healthy.length}`]);
    expect(r.quarantined).toEqual(
      [
        { chunkId: 'ef'.repeat(32), objectKey: key },
        { chunkId: 'ab'.repeat(32), objectKey: gone, range: { offset: 0, length: 100 } },
      ].sort((a, b) => a.objectKey.localeCompare(b.objectKey)),
    );
    expect(r.notChunks).toEqual([key]);
    expect(records.map((x) => x.r.chunkId).sort()).toEqual(['ab'.repeat(32), 'ef'.repeat(32)]);
    expect([...store.objects.keys()].filter((k) => k.startsWith('quarantine/'))).toEqual([]);
    expect(store.objects.has(key)).toBe(true);
  });

  it('reads chunk ids only from chunk keys', () => {
    expect(chunkIdOfKey(objectKeys.chunk('0f'.repeat(32)))).toBe('0f'.repeat(32));
    expect(chunkIdOfKey('manifests/b1/disk0.manifest')).toBeUndefined();
    expect(chunkIdOfKey(`quarantine/v/${objectKeys.chunk('0f'.repeat(32))}`)).toBeUndefined();
  });
});

describe('garbage collection beside quarantine/', () => {
  it('never sweeps quarantined copies and reports them apart from chunks', async () => {
    const { store, admin, deps } = setup();
    // A damaged chunk moved aside, then everything aged past the grace period.
    const old = new Date(NOW.getTime() - 30 * 86_400_000);
    const { key: key2 } = await storedChunk(store);
    const b = (await store.get(key2))!;
    b[30]! ^= 4;
    await store.put(key2, b);
    await quarantineDamage({ ...request([{ objectKey: key2, reason: 'damaged' }]), verifyId: 'verify-2' }, deps);
    for (const k of store.objects.keys()) admin.modified.set(k, old);
    const r = await collectGarbage(
      { gcId: 'gc-q', request: { bucket: 'repo', graceHours: 24 } },
      { admin, repository: new Repository(store, keys), now: () => NOW },
    );
    expect(store.objects.has(quarantineKey('verify-2', key2))).toBe(true);
    expect(r.quarantine).toEqual({ objects: 1, bytes: b.length });
    expect(r.chunks.deleted).toBe(0);
    expect(r.chunks.total).toBe(0);
  });
});
