/**
 * Damage belongs to a chunk, and so to every backup that holds it, end to end on the
 * embedded stack (a real mover, the embedded S3, dynalite, the synthesized Backup,
 * DeepVerify and Restore state machines): two backups share a chunk; a byte of that
 * chunk's pack flips in the embedded S3's own files; a deep verification of one backup
 * marks the other damaged too, so restoring it is refused up front (nothing written) with
 * an error naming the backup, the chunk and the next steps, and a plain restore names the
 * damage instead of restoring something else silently. After the next backup stored the
 * chunk again and a full deep verification healed the verified backup, both restore
 * byte-identical.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation } from '../repository/packs.ts';
import type { QuarantineReport } from '../functions/deep-verify/quarantine.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { DeepVerifySummary, RestoreSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let vmDir: string;

const run = (name: string, input: unknown, execution?: string) =>
  runExecution(t.sfn, t.stack.endpoints.stateMachines[name]!, input, { pollMs: 200, ...(execution ? { name: execution } : {}) });
const backup = async () => {
  const b = await run('Backup', { policyId: 'p-s' });
  expect(b.status, b.cause).toBe('SUCCEEDED');
  return (await t.stack.catalog.latestCommitted('vm-s'))!;
};
const status = async (backupId: string) => (await t.stack.catalog.getBackup('vm-s', backupId))?.status;
/** A restore that must be refused by PlanRestore: its error, and nothing at the target. */
const refused = async (input: Record<string, unknown>, target: string) => {
  const r = await run('Restore', { vmId: 'vm-s', target, moverGroup: 'site-a', ...input });
  expect(r.status).toBe('FAILED');
  expect(existsSync(target), 'nothing was written').toBe(false);
  return { error: r.error, cause: r.cause ?? '' };
};
const restoresIdentical = async (backupId: string, target: string) => {
  const r = await run('Restore', { vmId: 'vm-s', backupId, target, moverGroup: 'site-a' });
  expect(r.status, r.cause).toBe('SUCCEEDED');
  const s = JSON.parse(r.output!) as RestoreSummary;
  expect(s.backupId).toBe(backupId);
  for (const d of s.disks) expect(await sha256File(d.path), d.diskId).toBe(await sha256File(join(vmDir, `${d.diskId}.raw`)));
};

beforeAll(async () => {
  t = await startTestStack({ groups: { 'site-a': 1 } });
  vmDir = join(t.dir, 'vms', 'vm-s');
  await createVmFolder(vmDir, { name: 'vm-s', disks: [{ id: 'disk0', sizeBytes: 16 * MiB }] }, seededRng(23));
  await t.stack.catalog.putVm({ vmId: 'vm-s', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-s', vmIds: ['vm-s'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
});
afterAll(async () => {
  await t?.close();
});

it('marks every backup sharing a damaged chunk, refuses to restore them up front naming backup and chunk, and restores both once healed', async () => {
  const e = t.stack.endpoints;
  const { store, keys } = await stackRepositoryKeys(e);
  const b0 = await backup();
  const b1 = await backup(); // the unchanged VM: b1's manifest lists b0's chunks, in b0's packs
  const m0 = await decodeManifest(keys, (await store.get(objectKeys.manifest(b0.backupId, 'disk0')))!, b0.backupId, 'disk0', store);
  const m1 = await decodeManifest(keys, (await store.get(objectKeys.manifest(b1.backupId, 'disk0')))!, b1.backupId, 'disk0', store);
  const index = m0.chunks.findIndex((c) => c !== null);
  const id = m0.chunks[index]!;
  expect(m1.chunks[index]).toBe(id);
  const at = chunkLocation(m0, id);
  expect(chunkLocation(m1, id)).toEqual(at);

  // One byte of the chunk flips in the embedded S3's file of the pack (no request: as a disk would do it).
  const file = join(e.dataDir, 's3', e.bucket, `${at.key}._S3rver_object`);
  const pack = await readFile(file);
  pack[at.offset + Math.floor(at.length / 2)]! ^= 0x10;
  await writeFile(file, pack);

  // Deep verification of b1 finds the chunk; b0, which shares it, is marked damaged as well.
  const v = await run('DeepVerify', { vmId: 'vm-s', backupId: b1.backupId, moverGroup: 'site-a' }, 'verify-shared-1');
  expect(v.status, v.cause).toBe('SUCCEEDED');
  const s = JSON.parse(v.output!) as DeepVerifySummary & { quarantine: QuarantineReport };
  expect(s).toMatchObject({ backupId: b1.backupId, damaged: true });
  expect(s.findings.map((f) => f.chunkId)).toEqual([id]);
  expect(s.quarantine.shared).toEqual([{ vmId: 'vm-s', backupId: b0.backupId, chunks: [id] }]);
  expect(await status(b1.backupId)).toBe('damaged');
  expect(await status(b0.backupId)).toBe('damaged');
  const damage0 = (
    (await t.stack.catalog.getBackup('vm-s', b0.backupId)) as unknown as {
      damage: { verifyId: string; foundIn: unknown; findings: { chunkId: string; offsets: number[]; objectKey: string }[] };
    }
  ).damage;
  expect(damage0).toMatchObject({ verifyId: 'verify-shared-1', foundIn: { vmId: 'vm-s', backupId: b1.backupId } });
  expect(damage0.findings).toEqual([
    expect.objectContaining({ backupId: b0.backupId, diskId: 'disk0', chunkId: id, objectKey: at.key, offsets: [index * MiB] }),
  ]);

  // Restoring b0 is refused before any mover writes: the backup, the chunk, who found it and what to do.
  const r0 = await refused({ backupId: b0.backupId }, join(t.dir, 'restore-b0-refused'));
  expect(r0.error).toBe('Recovery.RequestInvalid');
  expect(r0.cause).toContain(
    `backup '${b0.backupId}' of VM 'vm-s' is damaged: chunk ${id} (disk 'disk0', offset ${index * MiB}, stored in ${at.key} bytes ${at.offset}+${at.length})`,
  );
  expect(r0.cause).toContain(`deep verification verify-shared-1 of backup '${b1.backupId}' (VM 'vm-s'), which shares the chunk`);
  expect(r0.cause).toMatch(/nothing was restored.*deep-verify backup .* in full; no older committed backup of this VM exists/);
  // b1 names b0 as no way out (damaged too), and a plain restore restores nothing older silently: it names the damage.
  expect((await refused({ backupId: b1.backupId }, join(t.dir, 'restore-b1-refused'))).cause).toContain(
    `backup '${b1.backupId}' of VM 'vm-s' is damaged: chunk ${id}`,
  );
  const plain = await refused({}, join(t.dir, 'restore-plain-refused'));
  expect(plain.cause).toMatch(new RegExp(`VM 'vm-s' has no committed backup to restore: backup '${b1.backupId}' of VM 'vm-s' is damaged: chunk ${id}`));

  // The next backup stores the chunk again; a full verification of b1 heals it, and b0 with it.
  const b2 = await backup();
  expect(b2.parentBackupId, 'a backup damaged only through a shared chunk still serves as parent').toBe(b0.backupId);
  expect(b2.disks!.reduce((n, d) => n + d.stats.uploadedChunks, 0)).toBe(1);
  const h = await run('DeepVerify', { vmId: 'vm-s', backupId: b1.backupId, moverGroup: 'site-a' }, 'verify-shared-2');
  expect(h.status, h.cause).toBe('SUCCEEDED');
  expect(JSON.parse(h.output!) as DeepVerifySummary).toMatchObject({
    damaged: false,
    healed: { previousVerifyId: 'verify-shared-1', chunks: [id], otherBackups: [{ vmId: 'vm-s', backupId: b0.backupId }] },
  });
  expect(await status(b0.backupId)).toBe('committed');
  expect(await status(b1.backupId)).toBe('committed');
  await restoresIdentical(b0.backupId, join(t.dir, 'restore-b0'));
  await restoresIdentical(b1.backupId, join(t.dir, 'restore-b1'));
});
