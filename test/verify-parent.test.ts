/**
 * Verify of a backup with a parent (functions/backup/verify.ts): it HEADs the packs the
 * committed parent's manifests do not name, plus a random sample of the parent's, against
 * the in-memory store, backups written by the real mover pipeline.
 */
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { DiskRef, DiskResult, VmJob } from '../contracts/jobs.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { PARENT_SAMPLE } from '../contracts/backup-steps.ts';
import { verify } from '../functions/backup/verify.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import type { DiskReader } from '../mover/sources/source.ts';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import { decodeManifest } from './helpers/manifest.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const disk: DiskRef = { diskId: 'disk0', path: 'mem', sizeBytes: 40 * CHUNK };
type Job = VmJob & { disks: DiskResult[] };

function memoryDisk(data: Buffer): DiskReader {
  return { sizeBytes: data.length, read: async (buf, offset, length) => data.copy(buf, 0, offset, offset + length), close: async () => {} };
}

let store: MemoryObjectStore;
let heads: string[];

/** One backup of `data` as the mover writes it (packs of two chunks), and Verify's input for it. */
async function backup(backupId: string, data: Buffer, parentBackupId: string | null): Promise<Job> {
  const parentManifestKey = parentBackupId ? objectKeys.manifest(parentBackupId, disk.diskId) : undefined;
  const result = await backupDisk({
    repository: new Repository(store, keys),
    reader: memoryDisk(data),
    disk,
    backupId,
    chunkSize: CHUNK,
    packBytes: 2 * CHUNK,
    parallelism: 1,
    ...(parentManifestKey ? { parentManifestKey, parentBackupId } : {}),
  });
  return {
    backupId,
    vmId: 'vm',
    parentBackupId,
    parentManifests: parentManifestKey ? { [disk.diskId]: parentManifestKey } : {},
    snapshot: { handle: 'h', disks: [disk], config: {} },
    disks: [result],
  } as unknown as Job;
}

const packsOf = async (backupId: string) =>
  new Set(
    (await decodeManifest(keys, store.objects.get(objectKeys.manifest(backupId, disk.diskId))!, backupId, disk.diskId, store)).packs!.map((p) =>
      objectKeys.pack(p.id),
    ),
  );

/** A parent of 40 random chunks, and a child in which 4 of them changed. */
async function parentAndChild() {
  const data = randomBytes(40 * CHUNK);
  const parent = await backup('b0', data, null);
  const changed = Buffer.from(data);
  for (const i of [3, 17, 18, 31]) randomBytes(CHUNK).copy(changed, i * CHUNK);
  const child = await backup('b1', changed, 'b0');
  const [p, c] = [await packsOf('b0'), await packsOf('b1')];
  const fresh = [...c].filter((k) => !p.has(k)).sort();
  const shared = [...c].filter((k) => p.has(k));
  expect(fresh.length).toBeGreaterThan(0);
  expect(shared.length).toBeGreaterThan(PARENT_SAMPLE); // the child reuses most of the parent's packs
  return { parent, child, fresh, shared };
}

beforeEach(() => {
  store = new MemoryObjectStore();
  heads = [];
  const head = store.head.bind(store);
  store.head = async (key) => {
    heads.push(key);
    return head(key);
  };
});

describe('Verify of a backup with a committed parent', () => {
  it('HEADs only the packs the parent does not name when no sample is drawn', async () => {
    const { child, fresh, shared } = await parentAndChild();
    const out = await verify(child, { repository: new Repository(store, keys), random: () => 1 });
    expect(heads.filter((k) => k.startsWith('packs/')).sort()).toEqual(fresh);
    expect(out).toMatchObject({ packsChecked: fresh.length, packsTrusted: shared.length, chunksChecked: 40 });
  });

  it("HEADs a drawn parent's pack too, and fails when a drawn one is missing", async () => {
    const { child, fresh, shared } = await parentAndChild();
    const out = await verify(child, { repository: new Repository(store, keys), random: () => 0 }); // every parent's pack drawn
    expect(heads.filter((k) => k.startsWith('packs/')).sort()).toEqual([...fresh, ...shared].sort());
    expect(out).toMatchObject({ packsChecked: fresh.length + shared.length, packsTrusted: 0 });
    store.objects.delete(shared[0]!);
    await expect(verify(child, { repository: new Repository(store, keys), random: () => 0 })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `pack ${shared[0]} of disk 'disk0' (backup b1) is missing from the repository`,
    });
  });

  it('fails naming the pack when a pack the backup wrote is missing', async () => {
    const { child, fresh } = await parentAndChild();
    store.objects.delete(fresh[0]!);
    await expect(verify(child, { repository: new Repository(store, keys), random: () => 1 })).rejects.toMatchObject({
      name: 'Verify.Failed',
      message: `pack ${fresh[0]} of disk 'disk0' (backup b1) is missing from the repository`,
    });
  });

  it("HEADs every pack when the parent's manifest is gone (pruned): a parent vouches only while it names its packs", async () => {
    const { child, fresh, shared } = await parentAndChild();
    store.objects.delete(objectKeys.manifest('b0', 'disk0'));
    const out = await verify(child, { repository: new Repository(store, keys), random: () => 1 });
    expect(heads.filter((k) => k.startsWith('packs/')).sort()).toEqual([...fresh, ...shared].sort());
    expect(out.packsTrusted).toBe(0);
  });

  it("HEADs every pack of a first backup, and draws about PARENT_SAMPLE of the parent's packs at random", async () => {
    const { parent, child, shared } = await parentAndChild();
    heads = [];
    expect((await verify(parent, { repository: new Repository(store, keys) })).packsTrusted).toBe(0);
    expect(heads.filter((k) => k.startsWith('packs/')).sort()).toEqual([...(await packsOf('b0'))].sort());
    // A seeded draw: the expected number of parent's packs HEADed is PARENT_SAMPLE × (shared / parent's packs).
    let seed = 7;
    const random = () => (seed = (seed * 48271) % 2147483647) / 2147483647;
    let drawn = 0;
    for (let i = 0; i < 20; i++) drawn += shared.length - (await verify(child, { repository: new Repository(store, keys), random })).packsTrusted;
    const expected = (20 * PARENT_SAMPLE * shared.length) / (await packsOf('b0')).size;
    expect(drawn).toBeGreaterThan(expected / 3);
    expect(drawn).toBeLessThan(expected * 3);
  });
});
