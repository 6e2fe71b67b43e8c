/**
 * Garbage collection on the embedded stack, raced against a running backup that reuses
 * old unreferenced packs (found in the repository's index): the sweep waits for the
 * backup, spares what it reused, deletes the rest (out of the index first), and every
 * backup still restores byte-identical. Also: index consolidation, a manifest that does
 * not open, and a failed collection's lease given back by the workflow.
 */
import { copyFile, readdir, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GC_LEASE_MS } from '../core/gc-timing.ts';
import { catalogGcLease } from '../functions/gc/gc-lease.ts';
import type { GcReport } from '../contracts/gc-report.ts';
import { runExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { objectKeys } from '../repository/format.ts';
import { decodeIndexObject, encodeIndexObject, newIndexId } from '../repository/packs.ts';
import { RepositoryIndex } from '../repository/repository-index.ts';
import { REPOSITORY_BUCKET, openRepository } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { DeepVerifySummary, RestoreSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let g1: string;
let g2: string;

const run = (workflow: string, input: unknown) => runExecution(t.sfn, t.stack.endpoints.stateMachines[workflow]!, input, { pollMs: 200 });
const backup = async (policyId: string) => {
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
};
/** The files s3rver keeps the repository's packs in (`packs/<xx>/<id>`). */
async function packFiles(): Promise<string[]> {
  const dir = join(t.stack.endpoints.dataDir, 's3', REPOSITORY_BUCKET, 'packs');
  const out: string[] = [];
  for (const p of await readdir(dir)) for (const f of await readdir(join(dir, p))) if (f.endsWith('._S3rver_object')) out.push(join(dir, p, f));
  return out;
}
async function indexObjects(): Promise<string[]> {
  const { store } = await openRepository(t.stack.endpoints);
  const out: string[] = [];
  for await (const o of store.list('index/')) out.push(o.key);
  return out;
}

beforeAll(async () => {
  // One chunk at a time: the second VM's backup is still running when collection starts.
  t = await startTestStack({ movers: 1, moverEnv: { LIFEBOAT_MOVER_PARALLELISM: '1' } });
  const e = t.stack.endpoints;
  g1 = join(t.dir, 'vms', 'g1');
  g2 = join(t.dir, 'vms', 'g2');
  await createVmFolder(g1, { name: 'g1', disks: [{ id: 'disk0', sizeBytes: 16 * MiB }] }, seededRng(21));
  await createVmFolder(
    g2,
    {
      name: 'g2',
      disks: [
        { id: 'disk0', sizeBytes: 16 * MiB },
        { id: 'disk1', sizeBytes: 48 * MiB },
      ],
    },
    seededRng(22),
  );
  await copyFile(join(g1, 'disk0.raw'), join(g2, 'disk0.raw')); // g2's first disk is g1's first version
  for (const [vmId, source] of [
    ['g1', g1],
    ['g2', g2],
  ] as const)
    await t.stack.catalog.putVm({ vmId, host: 'esx-01', source });
  await t.stack.catalog.putPolicy({ policyId: 'p-g1', vmIds: ['g1'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1, retention: { keepLast: 1 } });
  await t.stack.catalog.putPolicy({ policyId: 'p-g2', vmIds: ['g2'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1, retention: { keepLast: 1 } });

  // Three versions of g1, each rewriting the whole disk, pruned to the last: the packs of v1 and v2 are garbage.
  await backup('p-g1');
  for (let v = 2; v <= 3; v++) {
    await changeDisk(join(g1, 'disk0.raw'), 16 * MiB, 1, 1, seededRng(v));
    await backup('p-g1');
  }
  const pruned = await run('Prune', { policyId: 'p-g1' });
  expect(pruned.status, pruned.cause).toBe('SUCCEEDED');
  expect((await t.stack.catalog.listBackups('g1')).length).toBe(1);
  // Three days pass: every stored pack is older than the grace period.
  const past = new Date(Date.now() - 3 * 86_400_000);
  for (const f of await packFiles()) await utimes(f, past, past);
}, 240_000);
afterAll(async () => {
  await t?.close();
});

it('reports what it would free on a dry run, deleting nothing', async () => {
  const before = (await packFiles()).length;
  const indexBefore = await indexObjects();
  const d = await run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 1, dryRun: true });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const r = JSON.parse(d.output!) as GcReport;
  expect(r.packs.deleted).toBeGreaterThan(0);
  expect(r.bytesFreed).toBeGreaterThan(0);
  expect(r.packs.total).toBe(before);
  expect(r.chunks.total).toBe(0); // a format-2 repository has no chunk objects
  expect(r.index.objects).toBe(indexBefore.length);
  expect(r.index.rewritten + r.index.dropped).toBeGreaterThan(0);
  expect((await packFiles()).length).toBe(before);
  expect(await indexObjects()).toEqual(indexBefore);
});

it('waits for a running backup that reuses garbage, spares what it reused, frees the rest; everything restores', async () => {
  const dry = JSON.parse((await run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 1, dryRun: true })).output!) as GcReport;
  expect((await packFiles()).length).toBe(dry.packs.total);

  const g2Backup = runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-g2' }, { pollMs: 200 });
  for (let i = 0; i < 500 && !t.logs.some((l) => l.event === 'dispatch.progress' && l.vmId === 'g2'); i++) await sleep(20);
  const gc = run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 1, deferSeconds: 1 });
  const [b, g] = await Promise.all([g2Backup, gc]);
  expect(b.status, b.cause).toBe('SUCCEEDED');
  expect(g.status, g.cause).toBe('SUCCEEDED');
  const r = JSON.parse(g.output!) as GcReport;
  expect(r.deferrals, 'the sweep waited for the running backup').toBeGreaterThanOrEqual(1);
  expect(r.lateReferences).toEqual([]);
  // g2 reused the packs only g1's pruned first version had (its disk0 is that version): those stay; v2's are freed.
  expect(r.packs.deleted).toBeGreaterThan(0);
  expect(r.packs.deleted).toBeLessThan(dry.packs.deleted);
  expect(r.bytesFreed).toBeGreaterThan(0);
  const after = (await packFiles()).length;
  expect(after).toBe(r.packs.total - r.packs.deleted);
  // The index lists only packs that exist: a backup deduplicating against it finds no deleted pack.
  const { store, keys } = await stackRepositoryKeys(t.stack.endpoints);
  const index = await RepositoryIndex.load(store, keys);
  expect(index.objects).toBeGreaterThan(0);
  const listed = new Set<string>();
  for (const k of await indexObjects())
    for (const p of await decodeIndexObject(keys, (await store.get(k))!, k.slice('index/'.length))) listed.add(objectKeys.pack(p.pack.id));
  for (const k of listed) expect(await store.head(k), k).toBeDefined();
  expect(listed.size).toBe(after);

  for (const [vmId, dir, disks] of [
    ['g1', g1, ['disk0']],
    ['g2', g2, ['disk0', 'disk1']],
  ] as const) {
    const restored = await run('Restore', { vmId, target: join(t.dir, 'restored', vmId), moverGroup: 'site-a' });
    expect(restored.status, restored.cause).toBe('SUCCEEDED');
    const s = JSON.parse(restored.output!) as RestoreSummary;
    expect(s.disks.map((d) => d.diskId)).toEqual([...disks]);
    for (const d of s.disks) expect(await sha256File(d.path), `${vmId} ${d.diskId}`).toBe(await sha256File(join(dir, `${d.diskId}.raw`)));
    const verified = JSON.parse((await run('DeepVerify', { vmId, moverGroup: 'site-a' })).output!) as DeepVerifySummary;
    expect(verified.damaged, vmId).toBe(false);
  }
}, 240_000);

it('merges many small index objects into few through the workflow (consolidation); every chunk is still found where it was, and the backup restores', async () => {
  const { store, keys } = await stackRepositoryKeys(t.stack.endpoints);
  const contents = [];
  for (const k of await indexObjects()) contents.push(...(await decodeIndexObject(keys, (await store.get(k))!, k.slice('index/'.length))));
  const entries = contents.flatMap((p) => p.chunks.map((c) => ({ pack: p.pack, c })));
  expect(entries.length).toBeGreaterThan(0);
  // As many small backups leave it: more than 64 small index objects (here each lists one chunk; some twice).
  for (let i = 0; i < 70; i++) {
    const { pack, c } = entries[i % entries.length]!;
    const id = newIndexId();
    await store.put(objectKeys.index(id), await encodeIndexObject(keys, id, [{ pack, chunks: [c] }]));
  }
  const objectsBefore = (await indexObjects()).length;
  expect(objectsBefore).toBeGreaterThan(70);

  const d = await run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 1 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const r = JSON.parse(d.output!) as GcReport;
  // Every small object merged (one this run rewrote for a pack it deleted, if any, waits for the next run).
  expect(r.consolidation.merged).toBeGreaterThanOrEqual(objectsBefore - r.index.rewritten);
  expect(r.consolidation.objectsAfter).toBeLessThanOrEqual(1 + r.index.rewritten);
  expect(r.consolidation.stopped).toBeNull();
  expect(await indexObjects()).toHaveLength(r.consolidation.objectsAfter);
  const index = await RepositoryIndex.load(store, keys);
  for (const { pack, c } of entries) expect(index.get(c.id), c.id).toMatchObject({ key: objectKeys.pack(pack.id), offset: c.offset, length: c.length });

  const restored = await run('Restore', { vmId: 'g2', target: join(t.dir, 'restored-after-merge', 'g2'), moverGroup: 'site-a' });
  expect(restored.status, restored.cause).toBe('SUCCEEDED');
  for (const disk of (JSON.parse(restored.output!) as RestoreSummary).disks)
    expect(await sha256File(disk.path), disk.diskId).toBe(await sha256File(join(g2, `${disk.diskId}.raw`)));
}, 120_000);

it('stops, deleting nothing, when a manifest does not open, names it and gives advice that works: deep-verify, prune by name, collect', async () => {
  const { store } = await openRepository(t.stack.endpoints);
  const backupId = (await t.stack.catalog.latestCommitted('g2'))!.backupId;
  const key = objectKeys.manifest(backupId, 'disk1');
  const body = (await store.get(key))!;
  body[body.length - 20]! ^= 1;
  await store.put(key, body);
  const before = (await packFiles()).length;
  const indexBefore = await indexObjects();
  const d = await run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 0 });
  expect(d.status).toBe('FAILED');
  expect(d.error).toBe('Mover.Corrupt');
  expect(d.cause).toContain(`manifest ${key} of backup ${backupId} (committed) does not open`);
  expect((await packFiles()).length).toBe(before);
  expect(await indexObjects()).toEqual(indexBefore);

  // The advice, followed: a retention prune would keep the backup (the newest), so it is pruned by name once damaged.
  expect((JSON.parse(d.cause!) as { errorMessage: string }).errorMessage).toContain(
    `deep-verify backup ${backupId} (it is then marked damaged) and prune it by name (Prune workflow input { "policyId": "<its policy>", "backupId": "${backupId}" })`,
  );
  const refused = await run('Prune', { policyId: 'p-g2', backupId });
  expect(refused.status).toBe('FAILED');
  expect(refused.cause).toContain(
    `backup '${backupId}' of VM 'g2' is 'committed': only a backup a deep verification found damaged is pruned by name; deep-verify it first`,
  );
  const v = await run('DeepVerify', { vmId: 'g2', backupId, moverGroup: 'site-a' });
  expect(v.status, v.cause).toBe('SUCCEEDED');
  expect(JSON.parse(v.output!)).toMatchObject({
    damaged: true,
    findings: [expect.objectContaining({ objectKey: key, reason: expect.stringContaining('the manifest does not open') })],
  });
  const p = await run('Prune', { policyId: 'p-g2', backupId });
  expect(p.status, p.cause).toBe('SUCCEEDED');
  expect(await t.stack.catalog.getBackup('g2', backupId)).toBeUndefined();
  const again = await run('Gc', { bucket: REPOSITORY_BUCKET, graceHours: 0 });
  expect(again.status, again.cause).toBe('SUCCEEDED');
});

it("gives a failed collection's lease back on the workflow's failure path (a function killed before it could), and leaves another holder's alone", async () => {
  const lease = catalogGcLease(t.stack.catalog, REPOSITORY_BUCKET, undefined);
  const now = Date.now();
  // As if this execution's CollectGarbage had been killed holding the lease: the function
  // fails here before it reaches the lease (a request it refuses), so only the workflow gives it back.
  expect(await lease.take('gc-killed', now, now + GC_LEASE_MS)).toBe(true);
  const bad = { bucket: REPOSITORY_BUCKET, graceHours: -1 };
  const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Gc!, bad, { name: 'gc-killed', pollMs: 200 });
  expect(d.status).toBe('FAILED');
  expect(d.cause).toContain('graceHours');
  expect(await lease.take('gc-next', now, now + GC_LEASE_MS)).toBe(true); // free again

  // Another collection's lease is not this execution's to give back.
  const other = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Gc!, bad, { name: 'gc-killed-2', pollMs: 200 });
  expect(other.status).toBe('FAILED');
  expect(await lease.take('gc-third', now, now + GC_LEASE_MS)).toBe(false);
  await lease.release('gc-next');
});
