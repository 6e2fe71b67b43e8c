/** QuarantineDamage (functions/quarantine.ts) and GC beside quarantine/, on the in-memory store. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { chunkId, chunkIdOfKey, deriveKeys, keys as objectKeys, seal } from '../core/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { quarantineKey } from '../core/quarantine.ts';
import { MemoryRepositoryAdmin } from '../core/repository-admin.ts';
import type { QuarantineRecord } from '../functions/catalog/recovery-catalog.ts';
import { collectGarbage } from '../functions/gc.ts';
import { quarantineDamage } from '../functions/quarantine.ts';

const keys = deriveKeys(randomBytes(32));
const NOW = new Date('2026-11-23T12:00:00Z');

async function storedChunk(store: MemoryObjectStore) {
  const plain = randomBytes(4096);
  const id = chunkId(keys, plain);
  const key = objectKeys.chunk(id);
  await store.put(key, await seal(keys, plain, id));
  return { id, key };
}

function setup() {
  const store = new MemoryObjectStore();
  const admin = new MemoryRepositoryAdmin(store);
  const records: { repository: string; r: QuarantineRecord }[] = [];
  const recovery = { putQuarantine: async (repository: string, r: QuarantineRecord) => void records.push({ repository, r }) };
  return { store, admin, records, deps: { store, admin, keys, recovery, now: () => NOW } };
}
const request = (findings: { objectKey: string; reason: string }[]) =>
  ({ verifyId: 'verify-1', vmId: 'vm-1', backupId: 'b1', repository: { bucket: 'repo' }, findings });

describe('quarantineDamage', () => {
  it('copies a damaged chunk to quarantine/, deletes it from chunks/ and records its id', async () => {
    const { store, records, deps } = setup();
    const { id, key } = await storedChunk(store);
    const body = (await store.get(key))!;
    body[20]! ^= 1;
    await store.put(key, body);
    const r = await quarantineDamage(request([{ objectKey: key, reason: 'failed authentication' }, { objectKey: key, reason: 'again, on disk1' }]), deps);
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
    const r = await quarantineDamage(request([
      { objectKey: missing, reason: 'the chunk is missing from the repository' },
      { objectKey: healthy.key, reason: 'was damaged, a writer replaced it meanwhile' },
      { objectKey: manifest, reason: 'the manifest does not open' },
    ]), deps);
    expect(r.quarantined).toEqual([{ chunkId: 'ab'.repeat(32), objectKey: missing }]);
    expect(r.alreadyHealthy).toEqual([healthy.key]);
    expect(r.notChunks).toEqual([manifest]);
    expect(store.objects.has(healthy.key)).toBe(true);
    expect(records.map((x) => x.r.chunkId)).toEqual(['ab'.repeat(32)]);
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
    const r = await collectGarbage({ gcId: 'gc-q', request: { bucket: 'repo', graceHours: 24 } }, { admin, store, keys, now: () => NOW });
    expect(store.objects.has(quarantineKey('verify-2', key2))).toBe(true);
    expect(r.quarantine).toEqual({ objects: 1, bytes: b.length });
    expect(r.chunks.deleted).toBe(0);
    expect(r.chunks.total).toBe(0);
  });
});
