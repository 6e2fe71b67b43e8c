/**
 * Replication to the DR repository through a DR-site mover, the warm standby replica and
 * failover, on the embedded stack with real movers of two groups (site-a backs up, dr
 * replicates and keeps the replica).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FailoverSummary, ReplicationSummary } from '../functions/replicate.ts';
import type { RestoreSummary } from '../functions/restore.ts';
import type { RunSummary } from '../functions/summarize.ts';
import type { StandbyDisk } from '../core/recovery-jobs.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { keys as objectKeys, decodeManifest } from '../core/format.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { openRepository } from '../local/stack.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let vmDir: string;
let replicaDir: string;
let drBucket: string;

type ReplicateOutput = { replication: ReplicationSummary; standby?: StandbyDisk[]; vmConfig?: { path: string } };
const run = (workflow: string, input: unknown) => runExecution(t.sfn, t.stack.endpoints.stateMachines[workflow]!, input, { pollMs: 200 });
async function backup(): Promise<RunSummary> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-dr' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  return JSON.parse(d.output!) as RunSummary;
}
async function replicate(extra: Record<string, unknown> = {}): Promise<ReplicateOutput> {
  const d = await run('Replicate', { vmId: 'vm-d', moverGroup: 'dr', ...extra });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  return JSON.parse(d.output!) as ReplicateOutput;
}
const disk = (id: string) => join(vmDir, `${id}.raw`);

let full: RunSummary;
beforeAll(async () => {
  t = await startTestStack({ groups: { 'site-a': 1, dr: 1 } });
  const e = t.stack.endpoints;
  drBucket = e.buckets.dr!;
  expect(drBucket).toBeDefined();
  vmDir = join(t.dir, 'vms', 'vm-d');
  replicaDir = join(t.dir, 'dr-site', 'replicas');
  await createVmFolder(vmDir, { name: 'vm-d', disks: [{ id: 'disk0', sizeBytes: 32 * MiB }, { id: 'disk1', sizeBytes: 8 * MiB }] }, seededRng(31));
  await t.stack.catalog.putVm({ vmId: 'vm-d', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-dr', vmIds: ['vm-d'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1, replicateTo: { repositoryId: 'dr', bucket: drBucket } });
  full = await backup();
});
afterAll(async () => {
  await t?.close();
});

describe('Replicate workflow', () => {
  it('copies a full backup to the DR repository through the DR mover; a restore from there is byte-identical', async () => {
    const out = await replicate({ replicaDir });
    const r = out.replication;
    expect(r).toMatchObject({ vmId: 'vm-d', target: drBucket });
    expect(r.chunksCopied).toBe(full.totals.uploadedChunks);
    // What crossed to the DR site is what the full backup stored (chunks, manifests, VM config).
    expect(r.bytesCopied / full.totals.bytesStored).toBeGreaterThan(0.98);
    expect(r.bytesCopied / full.totals.bytesStored).toBeLessThan(1.02);
    const copiers = new Set(t.logs.filter((l) => l.event === 'task.succeeded' && (l.task === 'replicateDisk' || l.task === 'updateStandbyDisk')).map((l) => l.mover));
    expect([...copiers]).toEqual(['dr-mover-1']);

    const restored = await run('Restore', { vmId: 'vm-d', target: join(t.dir, 'from-dr'), moverGroup: 'dr', fromBucket: drBucket });
    expect(restored.status, restored.cause).toBe('SUCCEEDED');
    for (const d of (JSON.parse(restored.output!) as RestoreSummary).disks) expect(await sha256File(d.path), d.diskId).toBe(await sha256File(disk(d.diskId)));

    // The standby replica was created: every chunk written once, equal to the backup.
    expect(out.standby!.map((s) => s.fromBackupId)).toEqual([null, null]);
    for (const s of out.standby!) {
      expect(s.sha256, s.diskId).toBe(await sha256File(disk(s.diskId)));
      expect(await sha256File(s.path)).toBe(s.sha256);
    }
    const vm = JSON.parse(await readFile(out.vmConfig!.path, 'utf8')) as { name: string; disks: { file: string }[] };
    expect(vm.name).toBe('vm-d');
    expect(vm.disks.map((d) => d.file)).toEqual(['disk0.raw', 'disk1.raw']);
  });

  it('copies only what an incremental added, and writes only changed chunks into the replica', async () => {
    await changeDisk(disk('disk0'), 32 * MiB, 0.02, 2, seededRng(32));
    const incr = await backup();
    expect(incr.totals.uploadedChunks).toBeGreaterThan(0);
    const out = await replicate({ replicaDir });
    const r = out.replication;
    expect(r.chunksCopied).toBe(incr.totals.uploadedChunks);
    // Bytes replicated are the bytes the incremental stored: changed chunks plus two manifests.
    expect(r.bytesCopied / incr.totals.bytesStored).toBeGreaterThan(0.9);
    expect(r.bytesCopied / incr.totals.bytesStored).toBeLessThan(1.2);
    expect(r.bytesCopied).toBeLessThan(0.1 * full.totals.bytesStored);

    const [d0, d1] = out.standby!;
    expect(d0!.fromBackupId).not.toBeNull();
    expect(d0!.chunksWritten).toBeGreaterThan(0);
    expect(d0!.chunksWritten).toBeLessThanOrEqual(incr.totals.uploadedChunks);
    expect(d0!.bytesWritten).toBeLessThan(0.1 * 32 * MiB);
    expect(d1!.chunksWritten).toBe(0);
    // The replica equals the latest backup, which equals the disk.
    expect(await sha256File(d0!.path)).toBe(await sha256File(disk('disk0')));
    expect(await sha256File(d1!.path)).toBe(await sha256File(disk('disk1')));
  });

  it('refuses to restore from the DR repository a backup not replicated there', async () => {
    await changeDisk(disk('disk1'), 8 * MiB, 0.05, 1, seededRng(33));
    await backup();
    const d = await run('Restore', { vmId: 'vm-d', target: join(t.dir, 'nope'), moverGroup: 'dr', fromBucket: drBucket });
    expect(d.status).toBe('FAILED');
    expect(d.cause).toContain(`has not been replicated to ${drBucket}`);
  });
});

describe('Failover workflow', () => {
  it('brings the replica to the newest backup complete at the DR site and reports its recovery point', async () => {
    const backups = (await t.stack.catalog.listBackups('vm-d')).filter((b) => b.status === 'committed');
    expect(backups).toHaveLength(3); // the newest is not replicated yet
    const d = await run('Failover', { vmId: 'vm-d', moverGroup: 'dr', replicaDir });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const f = JSON.parse(d.output!) as FailoverSummary;
    expect(f.backupId).toBe(backups[1]!.backupId);
    expect(f.recoveryPoint).toBe(backups[1]!.startedAt);
    expect(f.recoveryPointAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(f.disks.every((x) => x.chunksWritten === 0)).toBe(true); // already current

    // Replicate the newest (no replica update), fail over again: only the changed chunks land.
    await replicate({});
    const again = JSON.parse((await run('Failover', { vmId: 'vm-d', moverGroup: 'dr', replicaDir })).output!) as FailoverSummary;
    expect(again.backupId).toBe(backups[0]!.backupId);
    const d1 = again.disks.find((x) => x.diskId === 'disk1')!;
    expect(d1.chunksWritten).toBeGreaterThan(0);
    expect(d1.chunksWritten).toBeLessThan(8);
    for (const x of again.disks) expect(await sha256File(x.path), x.diskId).toBe(await sha256File(disk(x.diskId)));
    expect(JSON.parse(await readFile(again.vmConfigPath, 'utf8'))).toMatchObject({ name: 'vm-d', restoredFrom: { backupId: backups[0]!.backupId } });
  });
});

describe('ReplicatePolicy workflow', () => {
  it('replicates the newest backup of each VM of the policy that the DR site lacks, and nothing twice', async () => {
    await changeDisk(disk('disk1'), 8 * MiB, 0.05, 1, seededRng(35));
    const incr = await backup();
    const d = await run('ReplicatePolicy', { policyId: 'p-dr', moverGroup: 'dr' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const out = JSON.parse(d.output!) as { replicated: ReplicateOutput[]; skipped: unknown[] };
    expect(out.replicated).toHaveLength(1);
    expect(out.replicated[0]!.replication).toMatchObject({ vmId: 'vm-d', backupId: (await t.stack.catalog.latestCommitted('vm-d'))!.backupId, chunksCopied: incr.totals.uploadedChunks });
    const again = JSON.parse((await run('ReplicatePolicy', { policyId: 'p-dr', moverGroup: 'dr' })).output!) as { replicated: unknown[]; skipped: { vmId: string; reason: string }[] };
    expect(again.replicated).toEqual([]);
    expect(again.skipped[0]!.reason).toContain(`is in ${drBucket} already`);
  });
});

describe('Replicate workflow on damaged data', () => {
  it('refuses to copy a damaged chunk, names it, and copies neither it nor the manifest', async () => {
    await changeDisk(disk('disk0'), 32 * MiB, 0.02, 1, seededRng(34));
    await backup();
    const { store, keys } = await openRepository(t.stack.endpoints);
    const latest = (await t.stack.catalog.latestCommitted('vm-d'))!.backupId;
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(latest, 'disk0')))!, latest, 'disk0');
    // A chunk only this backup has (so the DR repository lacks it), damaged in the source.
    const candidates = [...new Set(m.chunks.filter((c): c is string => c !== null))];
    let key: string | undefined;
    const e = t.stack.endpoints;
    const dr = new S3ObjectStore(s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS }), drBucket);
    for (const id of candidates) {
      if (await dr.head(objectKeys.chunk(id))) continue;
      key = objectKeys.chunk(id);
      break;
    }
    expect(key).toBeDefined();
    const body = (await store.get(key!))!;
    body[body.length - 30]! ^= 2;
    await store.put(key!, body);
    const d = await run('Replicate', { vmId: 'vm-d', moverGroup: 'dr' });
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Mover.Corrupt');
    expect(d.cause).toContain(`chunk ${key} of disk 'disk0' (backup ${latest}) is damaged in the source repository`);
    expect(await dr.head(key!)).toBeUndefined();
    expect(await dr.head(objectKeys.manifest(latest, 'disk0'))).toBeUndefined();
  });
});
