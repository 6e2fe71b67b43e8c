/**
 * Replication to a DR repository on its own S3-compatible endpoint (a second s3rver of
 * the embedded stack), started by the Backup workflow itself after each run, through a
 * DR-site mover; the warm standby replica and failover. Real movers of two groups:
 * site-a backs up, dr replicates and keeps the replica. The configuration names it all:
 * the DR repository's endpoint, its replicating group and its standby folder.
 */
import { DescribeExecutionCommand, ListExecutionsCommand, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation } from '../repository/packs.ts';
import { RepositoryIndex } from '../repository/repository-index.ts';
import type { StandbyDisk } from '../contracts/recovery-jobs.ts';
import { Catalog } from '../functions/catalog/catalog.ts';
import type { FailoverSummary, ReplicationSummary } from '../functions/replicate/replicate.ts';
import type { GcReport } from '../contracts/gc-report.ts';
import type { VerifyOutput } from '../contracts/backup-steps.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { repositoryStore } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary, RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const example = loadConfig();
const policy = (id: string, vmId: string, replicateTo?: string) => ({
  id,
  vms: { ids: [vmId] },
  schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' },
  retention: { keepLast: 10 },
  repository: 'primary',
  rpoHours: 26,
  ...(replicateTo ? { replicateTo } : {}),
});
/** The example configuration (its DR repository is on another endpoint, replicated by group "dr", with a standby folder) plus the test's policy. */
const config: LifeboatConfig = { ...example, policies: [...example.policies, policy('p-dr', 'vm-d', 'dr')] };

let t: TestStack;
let vmDir: string;
let drBucket: string;
let standbyDir: string;

type ReplicateOutput = { replication: ReplicationSummary; verified: VerifyOutput; standby?: StandbyDisk[]; vmConfig?: { path: string } };
type PolicyReplication = {
  policyId: string;
  runId?: string;
  replicated: ReplicateOutput[];
  skipped: { vmId: string; reason: string }[];
  drRecoveryPointAgeHours: number | null;
};
/** What the Backup workflow outputs: the run's summary and, when it started one, its replication. */
type BackupOutput = RunSummary & { replication?: { started: boolean; executionArn?: string; alreadyStarted?: boolean } };

const run = (workflow: string, input: unknown) => runExecution(t.sfn, t.stack.endpoints.stateMachines[workflow]!, input, { pollMs: 200 });
const disk = (id: string) => join(vmDir, `${id}.raw`);

async function backup(policyId: string): Promise<BackupOutput> {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  return JSON.parse(d.output!) as BackupOutput;
}

/** The ReplicatePolicy execution a Backup run started by itself: found by listing, named after the run, waited for. */
async function replicationOf(runId: string) {
  const arn = t.stack.endpoints.stateMachines.ReplicatePolicy!;
  const name = `replicate-${createHash('sha1').update(runId).digest('hex')}`;
  for (let i = 0; i < 100; i++) {
    const { executions } = await t.sfn.send(new ListExecutionsCommand({ stateMachineArn: arn }));
    const found = executions?.find((x) => x.name === name);
    if (found) return waitForExecution(t.sfn, found.executionArn!, { pollMs: 200 });
    await sleep(100);
  }
  throw new Error(`no ReplicatePolicy execution ${name} was started for run ${runId}`);
}

/** A backup of p-dr and the replication it started, which must succeed. */
async function backupAndReplicate(): Promise<{ run: BackupOutput; out: PolicyReplication }> {
  const b = await backup('p-dr');
  expect(b.replication).toMatchObject({ started: true });
  const r = await replicationOf(b.runId);
  expect(r.status, r.cause).toBe('SUCCEEDED');
  expect(b.replication!.executionArn).toBe(r.executionArn);
  const out = JSON.parse(r.output!) as PolicyReplication;
  return { run: b, out };
}

let full: { run: BackupOutput; out: PolicyReplication };
beforeAll(async () => {
  t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config });
  const e = t.stack.endpoints;
  drBucket = e.buckets.dr!;
  standbyDir = join(e.dataDir, 'sites', 'site-dr', config.repositories[1]!.replication!.standbyPath!);
  vmDir = join(t.dir, 'vms', 'vm-d');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-d',
      disks: [
        { id: 'disk0', sizeBytes: 32 * MiB },
        { id: 'disk1', sizeBytes: 8 * MiB },
      ],
    },
    seededRng(31),
  );
  await t.stack.catalog.putVm({ vmId: 'vm-d', host: 'esx-01', source: vmDir });
  full = await backupAndReplicate();
});
afterAll(async () => {
  await t?.close();
});

describe('a DR repository on its own S3 endpoint', () => {
  it("is served by a second s3rver with its own port and data folder, not by the stack's own", () => {
    const e = t.stack.endpoints;
    const dr = e.repositories.dr!;
    expect(dr.bucket).toBe('lifeboat-dr');
    expect(dr.endpoint?.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(dr.endpoint!.url).not.toBe(e.s3);
    expect(e.repositories.primary).toEqual({ bucket: e.bucket });
    expect(existsSync(join(e.dataDir, 's3-dr', 'lifeboat-dr'))).toBe(true);
    expect(existsSync(join(e.dataDir, 's3', 'lifeboat-dr'))).toBe(false);
  });
});

describe('replication after a backup', () => {
  it('starts by itself when the run commits, copies the full backup through the DR mover, and a restore from the DR repository is byte-identical', async () => {
    const { run: b, out } = full;
    expect(out).toMatchObject({ policyId: 'p-dr', runId: b.runId, skipped: [] });
    expect(out.replicated).toHaveLength(1);
    // The DR recovery point just copied is minutes old (ReportReplication's DrRecoveryPointAgeHours).
    expect(out.drRecoveryPointAgeHours).toBeGreaterThanOrEqual(0);
    expect(out.drRecoveryPointAgeHours).toBeLessThan(0.25);
    const r = out.replicated[0]!.replication;
    expect(r).toMatchObject({ vmId: 'vm-d', backupId: b.vms[0]!.backupId, target: drBucket });
    expect(r.chunksCopied).toBe(b.totals.uploadedChunks);
    // Checked through the DR endpoint before it was recorded: every chunk of every manifest is there.
    expect(out.replicated[0]!.verified.chunksChecked).toBe(r.chunks);
    // What crossed to the DR site is what the full backup stored (packs, their index objects, manifests, VM config).
    expect(r.bytesCopied / b.totals.bytesStored).toBeGreaterThan(0.98);
    expect(r.bytesCopied / b.totals.bytesStored).toBeLessThan(1.02);
    const copiers = new Set(
      t.logs.filter((l) => l.event === 'task.succeeded' && (l.task === 'replicateDisk' || l.task === 'updateStandbyDisk')).map((l) => l.mover),
    );
    expect([...copiers]).toEqual(['dr-mover-1']);
    // The DR endpoint holds the copy: every pack of the manifest, read through its own endpoint.
    const dr = repositoryStore(t.stack.endpoints, 'dr');
    const { keys } = await stackRepositoryKeys(t.stack.endpoints);
    const m = await decodeManifest(keys, (await dr.get(objectKeys.manifest(r.backupId, 'disk0')))!, r.backupId, 'disk0', dr);
    expect(m.version).toBe(3);
    for (const p of m.packs!) expect((await dr.head(objectKeys.pack(p.id)))?.size, p.id).toBe(p.size);
    // The DR repository's own index lists every chunk, where its manifest says.
    const drIndex = await RepositoryIndex.load(dr, keys);
    for (const id of new Set(m.chunks.filter((c): c is string => c !== null))) {
      const at = chunkLocation(m, id);
      expect(
        drIndex.all(id).map((l) => [l.key, l.offset, l.length]),
        id,
      ).toContainEqual([at.key, at.offset, at.length]);
    }

    const restored = await run('Restore', { vmId: 'vm-d', target: join(t.dir, 'from-dr'), moverGroup: 'dr', fromBucket: drBucket });
    expect(restored.status, restored.cause).toBe('SUCCEEDED');
    const summary = JSON.parse(restored.output!) as RestoreSummary;
    expect(summary.disks.map((d) => d.diskId).sort()).toEqual(['disk0', 'disk1']);
    for (const d of summary.disks) expect(await sha256File(d.path), d.diskId).toBe(await sha256File(disk(d.diskId)));
  });

  it('creates the standby replica in the configured folder: every disk equal to the backup', async () => {
    const s = full.out.replicated[0]!;
    expect(s.standby!.map((x) => x.fromBackupId)).toEqual([null, null]);
    for (const x of s.standby!) {
      expect(x.path).toBe(join(standbyDir, 'vm-d', `${x.diskId}.raw`));
      expect(x.sha256, x.diskId).toBe(await sha256File(disk(x.diskId)));
      expect(await sha256File(x.path)).toBe(x.sha256);
    }
    const vm = JSON.parse(await readFile(s.vmConfig!.path, 'utf8')) as { name: string; disks: { file: string }[] };
    expect(vm.name).toBe('vm-d');
  });

  it('after an incremental copies only what it stored, and the replica equals the latest backup', async () => {
    await changeDisk(disk('disk0'), 32 * MiB, 0.02, 2, seededRng(32));
    const { run: incr, out } = await backupAndReplicate();
    expect(incr.totals.uploadedChunks).toBeGreaterThan(0);
    const { replication: r, standby } = out.replicated[0]!;
    expect(r.backupId).toBe(incr.vms[0]!.backupId);
    expect(r.chunksCopied).toBe(incr.totals.uploadedChunks);
    // Bytes replicated are the bytes the incremental stored: the packs of changed chunks, their index objects, two manifests and the VM config.
    process.stdout.write(
      `replication after an incremental: ${r.bytesCopied} bytes copied for ${incr.totals.bytesStored} bytes stored (full: ${full.run.totals.bytesStored})\n`,
    );
    expect(r.bytesCopied / incr.totals.bytesStored).toBeGreaterThan(0.9);
    expect(r.bytesCopied / incr.totals.bytesStored).toBeLessThan(1.2);
    expect(r.bytesCopied).toBeLessThan(0.1 * full.run.totals.bytesStored);

    const [d0, d1] = standby!;
    expect(d0!.fromBackupId).toBe(full.run.vms[0]!.backupId);
    expect(d0!.chunksWritten).toBeGreaterThan(0);
    expect(d0!.chunksWritten).toBeLessThanOrEqual(incr.totals.uploadedChunks);
    expect(d0!.bytesWritten).toBeLessThan(0.1 * 32 * MiB);
    expect(d1!.chunksWritten).toBe(0);
    expect(await sha256File(d0!.path)).toBe(await sha256File(disk('disk0')));
    expect(await sha256File(d1!.path)).toBe(await sha256File(disk('disk1')));
  });

  it('a run that commits nothing starts no replication', async () => {
    await t.stack.catalog.putPolicy({
      policyId: 'p-dr-gone',
      vmIds: ['vm-gone'],
      bucket: t.stack.endpoints.bucket,
      chunkSize: MiB,
      slotLimit: 1,
      replicateTo: { repositoryId: 'dr', ...t.stack.endpoints.repositories.dr!, moverGroup: 'dr' },
    });
    await t.stack.catalog.putVm({ vmId: 'vm-gone', host: 'esx-01', source: join(t.dir, 'vms', 'no-such-vm') });
    const b = await backup('p-dr-gone');
    expect(b).toMatchObject({ committed: 0, failed: 1 });
    expect(b.replication).toBeUndefined();
  });
});

describe('Failover workflow', () => {
  it('brings the replica to the newest backup complete at the DR site (group and folder from the configuration) and reports its recovery point', async () => {
    const newest = (await t.stack.catalog.latestCommitted('vm-d'))!;
    const d = await run('Failover', { vmId: 'vm-d' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const f = JSON.parse(d.output!) as FailoverSummary;
    expect(f.backupId).toBe(newest.backupId);
    expect(f.recoveryPoint).toBe(newest.startedAt);
    expect(f.recoveryPointAgeSeconds).toBeGreaterThanOrEqual(0);
    expect(f.disks.every((x) => x.chunksWritten === 0)).toBe(true); // the replication after the run kept it current
    for (const x of f.disks) expect(await sha256File(x.path), x.diskId).toBe(await sha256File(disk(x.diskId)));
    expect(JSON.parse(await readFile(f.vmConfigPath, 'utf8'))).toMatchObject({ name: 'vm-d', restoredFrom: { backupId: newest.backupId } });
  });
});

describe('one replication of a VM into the DR repository at a time', () => {
  it("waits while another holds the VM's replica lease, then runs and gives the lease back", async () => {
    const scope = `replica:${drBucket}/vm-d`;
    expect(await t.stack.catalog.takeSlot(scope, 0, 'another-replication', Date.now(), Date.now() + 600_000)).toBe(true);
    const { executionArn } = await t.sfn.send(
      new StartExecutionCommand({ stateMachineArn: t.stack.endpoints.stateMachines.Replicate!, input: JSON.stringify({ vmId: 'vm-d' }) }),
    );
    await sleep(3000);
    expect((await t.sfn.send(new DescribeExecutionCommand({ executionArn }))).status).toBe('RUNNING');
    await t.stack.catalog.releaseSlot(Catalog.slotKey(scope, 0), 'another-replication');
    const d = await waitForExecution(t.sfn, executionArn!, { pollMs: 200 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect((JSON.parse(d.output!) as ReplicateOutput).replication.chunksCopied).toBe(0); // the run's replication copied it already
    // Given back: another holder takes it at once.
    expect(await t.stack.catalog.takeSlot(scope, 0, 'probe', Date.now(), Date.now() + 1000)).toBe(true);
    await t.stack.catalog.releaseSlot(Catalog.slotKey(scope, 0), 'probe');
  });

  it('never takes the standby replica back to an older backup', async () => {
    const older = full.run.vms[0]!.backupId;
    const d = await run('Replicate', { vmId: 'vm-d', backupId: older });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const out = JSON.parse(d.output!) as ReplicateOutput;
    expect(out.replication.backupId).toBe(older);
    expect(out.standby).toBeUndefined(); // a newer backup is replicated: the replica keeps it
    for (const id of ['disk0', 'disk1']) expect(await sha256File(join(standbyDir, 'vm-d', `${id}.raw`)), id).toBe(await sha256File(disk(id)));
  });
});

describe('garbage collection of the DR repository', () => {
  it("marks and sweeps through the DR repository's own endpoint: every replicated pack is referenced there", async () => {
    const d = await run('Gc', { bucket: drBucket, endpoint: t.stack.endpoints.repositories.dr!.endpoint, graceHours: 0, dryRun: true });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const report = JSON.parse(d.output!) as GcReport;
    expect(report.bucket).toBe(drBucket);
    expect(report.manifests).toBeGreaterThanOrEqual(4); // two backups of two disks
    expect(report.packs.total).toBeGreaterThan(0);
    expect(report.packs.referenced).toBe(report.packs.total);
    expect(report.chunks.referenced).toBe(report.chunks.total);
  });
});

describe('ReplicatePolicy workflow started by hand', () => {
  it('replicates nothing twice', async () => {
    const d = await run('ReplicatePolicy', { policyId: 'p-dr' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const again = JSON.parse(d.output!) as PolicyReplication;
    expect(again.replicated).toEqual([]);
    expect(again.skipped[0]!.reason).toContain(`is in ${drBucket} already`);
    // Nothing new to copy, yet the DR recovery point is reported: the newest copy's age.
    expect(again.drRecoveryPointAgeHours).toBeGreaterThanOrEqual(0);
    expect(again.drRecoveryPointAgeHours).toBeLessThan(0.5);
  });
});

describe('a policy whose DR repository names no replicating group', () => {
  let vm2: string;
  beforeAll(async () => {
    vm2 = join(t.dir, 'vms', 'vm-m');
    await createVmFolder(vm2, { name: 'vm-m', disks: [{ id: 'disk0', sizeBytes: 8 * MiB }] }, seededRng(36));
    await t.stack.catalog.putVm({ vmId: 'vm-m', host: 'esx-01', source: vm2 });
    // Written by hand (the configuration would refuse it): the DR repository without a mover group.
    await t.stack.catalog.putPolicy({
      policyId: 'p-manual',
      vmIds: ['vm-m'],
      bucket: t.stack.endpoints.bucket,
      chunkSize: MiB,
      slotLimit: 1,
      replicateTo: { repositoryId: 'dr', ...t.stack.endpoints.repositories.dr! },
    });
  });

  it('the replication the run starts fails, saying which setting is missing; nothing is copied', async () => {
    const b = await backup('p-manual');
    expect(b.committed).toBe(1);
    const r = await replicationOf(b.runId);
    expect(r.status).toBe('FAILED');
    expect(r.cause).toContain('names no mover group that replicates into it');
    const restore = await run('Restore', { vmId: 'vm-m', target: join(t.dir, 'nope'), moverGroup: 'dr', fromBucket: drBucket });
    expect(restore.status).toBe('FAILED');
    expect(restore.cause).toContain(`has not been replicated to ${drBucket}`);
  });

  it('a replication started by hand refuses to copy a pack holding a damaged chunk, names the chunk, and copies neither the pack nor the manifest', async () => {
    const { store, keys } = await stackRepositoryKeys(t.stack.endpoints);
    const latest = (await t.stack.catalog.latestCommitted('vm-m'))!.backupId;
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(latest, 'disk0')))!, latest, 'disk0', store);
    const dr = repositoryStore(t.stack.endpoints, 'dr');
    // A chunk in a pack the DR repository lacks; a bit flips in its bytes.
    let id: string | undefined;
    for (const c of new Set(m.chunks.filter((x): x is string => x !== null))) {
      if (await dr.head(chunkLocation(m, c).key)) continue;
      id = c;
      break;
    }
    expect(id).toBeDefined();
    const at = chunkLocation(m, id!);
    const body = (await store.get(at.key))!;
    body[at.offset + at.length - 30]! ^= 2;
    await store.put(at.key, body);
    const d = await run('Replicate', { vmId: 'vm-m', moverGroup: 'dr' });
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Mover.Corrupt');
    expect(d.cause).toContain(`chunk ${id} in ${at.key} bytes ${at.offset}+${at.length} (disk 'disk0', backup ${latest}) is damaged in the source repository`);
    expect(await dr.head(at.key)).toBeUndefined();
    expect(await dr.head(objectKeys.manifest(latest, 'disk0'))).toBeUndefined();
  });
});
