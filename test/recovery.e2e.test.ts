/**
 * Restore and deep verification end to end: the embedded stack running the synthesized
 * Restore and DeepVerify state machines, real mover processes of two groups, s3rver.
 */
import { execFile } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation } from '../repository/packs.ts';
import type { RecoveryCatalog } from '../functions/catalog/recovery-catalog.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { readLocalEvents } from '../local/events.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { stackRecoveryCatalog, startTestStack, type TestStack } from './helpers/stack.ts';
import type { DeepVerifySummary, RestoreSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let vmDir: string;
let backupId: string;
let recovery: RecoveryCatalog;

const arn = (name: string) => {
  const a = t.stack.endpoints.stateMachines[name];
  if (!a) throw new Error(`no ${name} state machine; have ${Object.keys(t.stack.endpoints.stateMachines).join(', ')}`);
  return a;
};
const restore = (input: unknown, name?: string) => runExecution(t.sfn, arn('Restore'), input, { pollMs: 200, ...(name ? { name } : {}) });
const deepVerify = (input: unknown, name?: string) => runExecution(t.sfn, arn('DeepVerify'), input, { pollMs: 200, ...(name ? { name } : {}) });

beforeAll(async () => {
  // site-a backs up (it serves esx-01); the restores go through site-b, to prove the routing.
  t = await startTestStack({ groups: { 'site-a': 1, 'site-b': 1 } });
  const e = t.stack.endpoints;
  recovery = stackRecoveryCatalog(e);
  vmDir = join(t.dir, 'vms', 'vm-r');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-r',
      disks: [
        { id: 'disk0', sizeBytes: 24 * MiB },
        { id: 'disk1', sizeBytes: 8 * MiB },
      ],
    },
    seededRng(5),
  );
  await t.stack.catalog.putVm({ vmId: 'vm-r', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-r', vmIds: ['vm-r'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
  const b = await runExecution(t.sfn, e.backupStateMachineArn, { policyId: 'p-r' });
  expect(b.status).toBe('SUCCEEDED');
  backupId = (await t.stack.catalog.latestCommitted('vm-r'))!.backupId;
});
afterAll(async () => {
  await t?.close();
});

describe('Restore workflow', () => {
  it('restores every disk and the VM config through the named mover group, byte-identical and re-hashed', async () => {
    const target = join(t.dir, 'restored-vm');
    const d = await restore({ vmId: 'vm-r', target, moverGroup: 'site-b' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as RestoreSummary;
    expect(s).toMatchObject({ vmId: 'vm-r', backupId, target, verified: true, bytesRestored: 32 * MiB, vmConfigPath: join(target, 'vm.json') });
    for (const disk of s.disks) {
      const source = await sha256File(join(vmDir, `${disk.diskId}.raw`));
      expect(disk.sha256, disk.diskId).toBe(source); // what the mover re-hashed after writing
      expect(await sha256File(disk.path), disk.diskId).toBe(source); // what is on disk now
      expect(disk.chunksVerified).toBe(disk.sizeBytes / MiB);
    }
    const vm = JSON.parse(await readFile(join(target, 'vm.json'), 'utf8')) as {
      name: string;
      disks: { id: string; file: string }[];
      restoredFrom: { backupId: string };
    };
    expect(vm.name).toBe('vm-r');
    expect(vm.disks.map((x) => x.file)).toEqual(['disk0.raw', 'disk1.raw']);
    expect(vm.restoredFrom.backupId).toBe(backupId);
    // Only site-b's mover did restore work, and it reported progress.
    const restorers = new Set(t.logs.filter((l) => l.event === 'task.succeeded' && String(l.task).startsWith('restore')).map((l) => l.mover));
    expect([...restorers]).toEqual(['site-b-mover-1']);
    expect(t.logs.some((l) => l.event === 'restore.progress' && l.restoreId === s.restoreId && l.phase === 'write')).toBe(true);
    expect(await recovery.getRecord('RESTORE', s.restoreId)).toMatchObject({ status: 'succeeded', summary: { backupId } });
  });

  it('restores a single disk to a file path', async () => {
    const target = join(t.dir, 'one', 'disk1.img');
    const d = await restore({ vmId: 'vm-r', backupId, diskId: 'disk1', target, moverGroup: 'site-a' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as RestoreSummary;
    expect(s.disks.map((x) => x.diskId)).toEqual(['disk1']);
    expect(s.vmConfigPath).toBeNull();
    expect(await sha256File(target)).toBe(await sha256File(join(vmDir, 'disk1.raw')));
    expect(await stat(join(t.dir, 'one', 'vm.json')).catch(() => undefined)).toBeUndefined();
  });

  it('fails with a cause naming a disk the backup does not have', async () => {
    const d = await restore({ vmId: 'vm-r', diskId: 'disk9', target: join(t.dir, 'x.img'), moverGroup: 'site-a' });
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Recovery.RequestInvalid');
    expect(d.cause).toContain("no disk 'disk9'");
    expect(d.cause).toContain("'disk0', 'disk1'");
  });

  it('fails a restore routed to a mover group the deployment does not have, and records it', async () => {
    const d = await restore({ vmId: 'vm-r', target: join(t.dir, 'nowhere'), moverGroup: 'no-such-group' }, 'restore-bad-group');
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Lifeboat.UnknownMoverGroup');
    expect(d.cause).toContain('site-a');
    expect(await recovery.getRecord('RESTORE', 'restore-bad-group')).toMatchObject({ status: 'failed', error: { Error: 'Lifeboat.UnknownMoverGroup' } });
  });

  it('rejects an input with an unknown field, naming it', async () => {
    const d = await restore({ vmId: 'vm-r', target: join(t.dir, 'y'), moverGroup: 'site-a', disk: 'disk0' });
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Function.BadInput');
    expect(d.cause).toContain('disk');
  });
});

describe('Restore workflow after the policy is gone', () => {
  it('asks for the repository, then restores from the one named', async () => {
    const policy = (await t.stack.catalog.getPolicy('p-r'))!;
    await t.stack.catalog.deletePolicy('p-r');
    try {
      const target = join(t.dir, 'orphan', 'disk1.img');
      const refused = await restore({ vmId: 'vm-r', diskId: 'disk1', target, moverGroup: 'site-a' });
      expect(refused.status).toBe('FAILED');
      expect(refused.cause).toContain("policy 'p-r', which is gone");
      expect(refused.cause).toContain('fromBucket');
      const d = await restore({ vmId: 'vm-r', diskId: 'disk1', target, moverGroup: 'site-a', fromBucket: t.stack.endpoints.bucket });
      expect(d.status, d.cause).toBe('SUCCEEDED');
      expect(await sha256File(target)).toBe(await sha256File(join(vmDir, 'disk1.raw')));
    } finally {
      await t.stack.catalog.putPolicy(policy);
    }
  });
});

describe('lifeboat restore (command line)', () => {
  const cli = async (args: string[]) => {
    const file = join(t.dir, 'endpoints.json');
    await writeFile(file, JSON.stringify(t.stack.endpoints));
    return promisify(execFile)(process.execPath, ['cli/lifeboat.ts', ...args, '--endpoints', file]).then(
      (r) => ({ code: 0, ...r }),
      (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
    );
  };

  it('restores a disk and prints its path and SHA-256', async () => {
    const target = join(t.dir, 'cli', 'disk0.img');
    const r = await cli(['restore', '--vm', 'vm-r', '--disk', 'disk0', '--target', target, '--group', 'site-b']);
    expect(r.code, r.stderr).toBe(0);
    const source = await sha256File(join(vmDir, 'disk0.raw'));
    expect(r.stdout).toContain(`restored backup ${backupId} of VM vm-r`);
    expect(r.stdout).toContain(`${target}  24.0 MiB  sha256 ${source}`);
    expect(await sha256File(target)).toBe(source);
  });

  it("exits 1 with the workflow's cause when the request is wrong", async () => {
    const r = await cli(['restore', '--vm', 'vm-r', '--disk', 'disk9', '--target', join(t.dir, 'cli', 'x.img'), '--group', 'site-a']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Restore FAILED: Recovery.RequestInvalid: backup '");
    expect(r.stderr).toContain("no disk 'disk9'");
  });
});

describe('Deep verify workflow', () => {
  it('reads back every chunk of an intact backup and finds nothing', async () => {
    const d = await deepVerify({ vmId: 'vm-r', moverGroup: 'site-a' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as DeepVerifySummary;
    expect(s).toMatchObject({ backupId, damaged: false, findings: [], sample: 1 });
    expect(s.chunksTotal).toBeGreaterThan(10);
    expect(s.chunksChecked).toBe(s.chunksTotal);
  });

  it('records a verification that could not run, and fails with its cause', async () => {
    const d = await deepVerify({ vmId: 'vm-r', moverGroup: 'no-such-group' }, 'verify-bad-group');
    expect(d.status).toBe('FAILED');
    expect(d.error).toBe('Lifeboat.UnknownMoverGroup');
    expect(await recovery.getRecord('DEEPVERIFY', 'verify-bad-group')).toMatchObject({
      status: 'failed',
      error: { Error: 'Lifeboat.UnknownMoverGroup' },
      job: { backupId },
    });
  });

  it('reads back only a sample when asked', async () => {
    const d = await deepVerify({ vmId: 'vm-r', moverGroup: 'site-a', sample: 0.3 }, 'verify-sample-fixed-name');
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as DeepVerifySummary;
    expect(s.chunksChecked).toBeGreaterThan(0);
    expect(s.chunksChecked).toBeLessThan(s.chunksTotal);
  });

  it('verifies the newest backup of every VM of a policy, each on the group serving its host', async () => {
    const d = await runExecution(t.sfn, arn('DeepVerifyPolicy'), { policyId: 'p-r', sample: 1 }, { pollMs: 200 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const out = JSON.parse(d.output!) as { verified: DeepVerifySummary[]; skipped: unknown[] };
    expect(out.skipped).toEqual([]);
    expect(out.verified).toHaveLength(1);
    expect(out.verified[0]).toMatchObject({ vmId: 'vm-r', backupId, damaged: false });
    expect(out.verified[0]!.chunksChecked).toBe(out.verified[0]!.chunksTotal);
    const verifiers = t.logs.filter((l) => l.event === 'task.succeeded' && l.task === 'deepVerifyDisk').map((l) => l.mover);
    expect(verifiers.at(-1)).toBe('site-a-mover-1');
  });

  it('finds a bit flipped in one stored chunk, names it, marks the backup damaged and emits an event', async () => {
    const { store, keys } = await stackRepositoryKeys(t.stack.endpoints);
    const manifest = await decodeManifest(keys, (await store.get(objectKeys.manifest(backupId, 'disk0')))!, backupId, 'disk0', store);
    const index = manifest.chunks.findIndex((c, i) => c !== null && i > 0);
    expect(index).toBeGreaterThan(0);
    const id = manifest.chunks[index]!;
    // The chunk's bytes inside its pack (format 2).
    const at = chunkLocation(manifest, id);
    const key = at.key;
    expect(key).toMatch(/^packs\//);
    const body = (await store.get(key))!;
    body[at.offset + Math.floor(at.length / 2)]! ^= 0x10;
    await store.put(key, body);

    const d = await deepVerify({ vmId: 'vm-r', backupId, moverGroup: 'site-b' });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const s = JSON.parse(d.output!) as DeepVerifySummary;
    expect(s.damaged).toBe(true);
    const f = s.findings.find((x) => x.diskId === 'disk0');
    expect(f).toMatchObject({ backupId, diskId: 'disk0', objectKey: key, chunkId: id, range: { offset: at.offset, length: at.length } });
    expect(f!.offsets).toContain(index * MiB);
    expect(f!.reason).toContain('failed authentication');
    // Only that chunk is damaged (it may back the same data on both disks).
    expect(new Set(s.findings.map((x) => `${x.objectKey} ${x.chunkId}`))).toEqual(new Set([`${key} ${id}`]));

    const b = await t.stack.catalog.getBackup('vm-r', backupId);
    expect(b?.status).toBe('damaged');
    expect((b as unknown as { damage: { findings: { objectKey: string }[] } }).damage.findings[0]!.objectKey).toBe(key);
    const events = (await readLocalEvents(t.stack.endpoints.dataDir)).filter((e) => e.detailType === 'Lifeboat Backup Damaged');
    expect(events).toHaveLength(1);
    expect(events[0]!.detail).toMatchObject({
      vmId: 'vm-r',
      backupId,
      findings: expect.arrayContaining([expect.objectContaining({ objectKey: key, diskId: 'disk0' })]),
    });
    expect((events[0]!.detail as { message: string }).message).toContain(`${key} bytes ${at.offset}+${at.length} (chunk ${id}, disk 'disk0'`);

    // A damaged backup is no longer offered for restore, nor used as a parent.
    const r = await restore({ vmId: 'vm-r', backupId, target: join(t.dir, 'from-damaged'), moverGroup: 'site-a' });
    expect(r.status).toBe('FAILED');
    expect(r.cause).toContain('damaged');
    expect(await t.stack.catalog.latestCommitted('vm-r')).toBeUndefined();
  });
});
