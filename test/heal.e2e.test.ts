/**
 * Damaged chunks heal, end to end on the embedded stack (real movers, s3rver, dynalite,
 * the synthesized Backup, DeepVerify, Restore and Gc state machines): a bit flipped in a
 * chunk stored in a pack is found by a deep verification, its bytes are set aside under
 * quarantine/ (the pack stays: its other chunks are fine), the chunk is stored again in a
 * new pack by the next backup of the unchanged VM (although the parent manifest and the
 * repository's index both list the damaged copy), and a second deep verification finds
 * the first backup intact through that new copy and marks it healthy.
 *
 * The mover's heal filter (backup-disk.ts `healChunks`, applied to the parent manifest and
 * to the index) is what makes the next backup store the chunk: without either half the
 * chunk is taken from the parent manifest or from the index — both point at the damaged
 * bytes, which are never deleted — so nothing is uploaded (`uploaded` is 0, not 1; checked
 * by removing each half in turn) and the second verification would find the damage again.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { locationKey } from '../contracts/endpoints.ts';
import { chunkId, objectKeys, open } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation, readChunk, type ChunkLocation } from '../repository/packs.ts';
import { quarantineKey } from '../repository/quarantine.ts';
import type { GcReport } from '../contracts/gc-report.ts';
import type { QuarantineReport } from '../functions/deep-verify/quarantine.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { stackRecoveryCatalog, startTestStack, type TestStack } from './helpers/stack.ts';
import type { DeepVerifySummary, RestoreSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let vmDir: string;
let recovery: RecoveryCatalog;

const run = (name: string, input: unknown, execution?: string) => {
  const arn = t.stack.endpoints.stateMachines[name];
  if (!arn) throw new Error(`no ${name} state machine`);
  return runExecution(t.sfn, arn, input, { pollMs: 200, ...(execution ? { name: execution } : {}) });
};
const backup = async () => {
  const b = await run('Backup', { policyId: 'p-h' });
  expect(b.status, b.cause).toBe('SUCCEEDED');
  return (await t.stack.catalog.latestCommitted('vm-h'))!;
};

beforeAll(async () => {
  t = await startTestStack({ groups: { 'site-a': 1 } });
  const e = t.stack.endpoints;
  recovery = stackRecoveryCatalog(e);
  vmDir = join(t.dir, 'vms', 'vm-h');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-h',
      disks: [
        { id: 'disk0', sizeBytes: 16 * MiB },
        { id: 'disk1', sizeBytes: 4 * MiB },
      ],
    },
    seededRng(11),
  );
  await t.stack.catalog.putVm({ vmId: 'vm-h', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-h', vmIds: ['vm-h'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
});
afterAll(async () => {
  await t?.close();
});

it('quarantines a damaged chunk, re-uploads it with the next backup and heals every backup that references it', async () => {
  const e = t.stack.endpoints;
  const { store, keys } = await stackRepositoryKeys(e);
  const b0 = await backup();
  const b1 = await backup(); // unchanged VM: its manifests list the same chunks as b0's
  expect(b1.parentBackupId).toBe(b0.backupId);

  // A bit flips in one chunk of disk0, inside its pack (same size: the existence check cannot tell).
  const manifest = await decodeManifest(keys, (await store.get(objectKeys.manifest(b1.backupId, 'disk0')))!, b1.backupId, 'disk0', store);
  expect(manifest.version).toBe(3);
  const index = manifest.chunks.findIndex((c, i) => c !== null && i > 1);
  const id = manifest.chunks[index]!;
  const at = chunkLocation(manifest, id);
  const key = at.key;
  const range = { offset: at.offset, length: at.length };
  expect(key).toMatch(/^packs\//);
  const pack = (await store.get(key))!;
  pack[at.offset + Math.floor(at.length / 3)]! ^= 0x04;
  await store.put(key, pack);
  const damagedBytes = Buffer.from(pack.subarray(at.offset, at.offset + at.length));
  const opensAsChunk = async (loc: ChunkLocation) => {
    try {
      return chunkId(keys, await open(keys, (await readChunk(store, loc))!, id)) === id;
    } catch {
      return false;
    }
  };
  expect(await opensAsChunk(at)).toBe(false);

  // DeepVerify finds and names it (chunk, pack, bytes); the backup is damaged; the bytes are set aside and the chunk recorded.
  const v1 = await run('DeepVerify', { vmId: 'vm-h', backupId: b1.backupId, moverGroup: 'site-a' }, 'verify-heal-1');
  expect(v1.status, v1.cause).toBe('SUCCEEDED');
  const s1 = JSON.parse(v1.output!) as DeepVerifySummary & { quarantine: QuarantineReport };
  expect(s1.damaged).toBe(true);
  const f = s1.findings.find((x) => x.diskId === 'disk0')!;
  expect(f).toMatchObject({ backupId: b1.backupId, diskId: 'disk0', objectKey: key, chunkId: id, range });
  expect(f.offsets).toContain(index * MiB);
  expect(new Set(s1.findings.map((x) => `${x.objectKey} ${x.chunkId}`))).toEqual(new Set([`${key} ${id}`]));
  expect((await t.stack.catalog.getBackup('vm-h', b1.backupId))?.status).toBe('damaged');
  const kept = quarantineKey('verify-heal-1', key, id);
  expect(kept).toBe(`quarantine/verify-heal-1/${key}/${id}`);
  expect(s1.quarantine.quarantined).toEqual([{ chunkId: id, objectKey: key, range, quarantineKey: kept }]);
  expect(await store.get(key)).toEqual(pack); // the pack stays: its other chunks are fine
  expect(await store.get(kept)).toEqual(damagedBytes);
  expect(await recovery.quarantinedChunks(locationKey({ bucket: e.bucket }), 100)).toEqual([id]);

  // The next backup of the unchanged VM: its parent (b0, still committed) and the index list the chunk, yet it is stored again.
  const b2 = await backup();
  expect(b2.parentBackupId).toBe(b0.backupId);
  const uploaded = b2.disks!.reduce((n, d) => n + d.stats.uploadedChunks, 0);
  expect(uploaded).toBe(1);
  const m2 = await decodeManifest(keys, (await store.get(objectKeys.manifest(b2.backupId, 'disk0')))!, b2.backupId, 'disk0', store);
  const again = chunkLocation(m2, id);
  expect(again.key).not.toBe(key); // a new pack
  expect(await opensAsChunk(again)).toBe(true);
  // b1's manifest still points at the damaged bytes: it heals through the new copy the index lists.
  expect(await opensAsChunk(at)).toBe(false);

  // A full deep verification of the damaged backup now finds it intact: healthy again, quarantine cleared.
  const v2 = await run('DeepVerify', { vmId: 'vm-h', backupId: b1.backupId, moverGroup: 'site-a' }, 'verify-heal-2');
  expect(v2.status, v2.cause).toBe('SUCCEEDED');
  const s2 = JSON.parse(v2.output!) as DeepVerifySummary;
  expect(s2).toMatchObject({ backupId: b1.backupId, damaged: false, findings: [], healed: { previousVerifyId: 'verify-heal-1', chunks: [id] } });
  const after = (await t.stack.catalog.getBackup('vm-h', b1.backupId)) as unknown as { status: string; damage?: unknown; healed?: { verifyId: string } };
  expect(after.status).toBe('committed');
  expect(after.damage).toBeUndefined();
  expect(after.healed?.verifyId).toBe('verify-heal-2');
  expect(await recovery.quarantinedChunks(locationKey({ bucket: e.bucket }), 100)).toEqual([]);
  expect(await recovery.getRecord('DEEPVERIFY', 'verify-heal-2')).toMatchObject({ status: 'healed' });

  // The healed backup restores byte-identical.
  const target = join(t.dir, 'restored-b1');
  const r = await run('Restore', { vmId: 'vm-h', backupId: b1.backupId, target, moverGroup: 'site-a' });
  expect(r.status, r.cause).toBe('SUCCEEDED');
  for (const d of (JSON.parse(r.output!) as RestoreSummary).disks)
    expect(await sha256File(d.path), d.diskId).toBe(await sha256File(join(vmDir, `${d.diskId}.raw`)));

  // GC never sweeps quarantine/: the quarantined bytes stay, counted apart.
  const g = await run('Gc', { bucket: e.bucket, graceHours: 0 });
  expect(g.status, g.cause).toBe('SUCCEEDED');
  const report = JSON.parse(g.output!) as GcReport | { report: GcReport };
  const gc = 'report' in report ? report.report : report;
  expect(gc.quarantine).toEqual({ objects: 1, bytes: at.length });
  expect(gc.chunks.deleted).toBe(0);
  expect(await store.head(kept)).toBeDefined();
  expect(await store.head(key)).toEqual(expect.objectContaining({ size: pack.length })); // b0 and b1 still reference the damaged pack
});
