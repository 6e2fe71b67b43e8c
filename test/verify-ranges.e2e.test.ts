/**
 * Verify by range on the embedded stack (functions/backup/verify-ranges.ts,
 * cdk/lib/verify-steps.ts): with 2 manifest pieces per range (`backup.verifyRangePieces`) and
 * 2 MiB segments of 1 MiB chunks (a piece per segment), a VM of a 12 MiB and a 3 MiB disk has
 * 6 + 2 pieces: 4 ranges. Real movers, the synthesized ASL, dynalite and s3rver.
 */
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { createCipheriv, createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { VerifyOutput } from '../contracts/backup-steps.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';
import { loadConfig } from '../core/config.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, s3Client } from '../core/s3-store.ts';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
const example = loadConfig();
let t: TestStack;

/** Random bytes, so no chunk repeats and each segment's chunks are in that segment's own packs. */
async function fillIncompressible(path: string, sizeBytes: number, seed: string): Promise<void> {
  const key = createHash('sha256').update(`verify-ranges-${seed}`).digest();
  await writeFile(path, createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(sizeBytes)));
}

async function addVm(vmId: string, disksMiB: number[], seedOf: (disk: number) => string) {
  const dir = join(t.dir, 'vms', vmId);
  await createVmFolder(dir, { name: vmId, disks: disksMiB.map((mib, i) => ({ id: `disk${i}`, sizeBytes: mib * MiB })) }, seededRng(3));
  for (const [i, mib] of disksMiB.entries()) await fillIncompressible(join(dir, `disk${i}.raw`), mib * MiB, seedOf(i));
  await t.stack.catalog.putVm({ vmId, host: 'esx-01', source: dir });
  return dir;
}

async function addPolicy(policyId: string, vmIds: string[]) {
  await t.stack.catalog.putPolicy({ policyId, vmIds, bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 2, segmentBytes: 2 * MiB });
}

type Record_ = { file: string; executionArn: string; parentExecutionArn?: string; input: string; status: string };
async function executions(): Promise<Record_[]> {
  const folder = join(t.stack.endpoints.dataDir, 'executions');
  const files = (await readdir(folder)).filter((f) => f.endsWith('.json'));
  return Promise.all(files.map(async (file) => ({ file, ...(JSON.parse(await readFile(join(folder, file), 'utf8')) as Omit<Record_, 'file'>) })));
}

/** The states a VM's own child execution entered, with their inputs. */
async function vmStates(runArn: string, vmId: string): Promise<{ child: Record_; entered: { name: string; input: unknown }[] }> {
  const all = await executions();
  const hosts = all.filter((c) => c.parentExecutionArn === runArn).map((c) => c.executionArn);
  const child = all.find((c) => hosts.includes(c.parentExecutionArn ?? '') && c.input.includes(`"${vmId}"`))!;
  return { child, entered: await statesOf(child.file) };
}

/** The states an execution entered (its record's file), with their inputs, from its history. */
async function statesOf(recordFile: string): Promise<{ name: string; input: unknown }[]> {
  const history = await readFile(join(t.stack.endpoints.dataDir, 'executions', recordFile.replace(/\.json$/, '.history.jsonl')), 'utf8');
  return history
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; state?: { name: string; input?: unknown } })
    .filter((e) => e.type === 'StateEntered')
    .map((e) => ({ name: e.state!.name, input: e.state!.input }));
}

/** What Verify by range should count, worked out from the manifests read here: per range, its distinct chunks and packs. */
async function expectedCounts(backupId: string, ranges: { diskId: string; from: number; to: number }[]): Promise<VerifyOutput> {
  const repository = await openRepository(t.stack.endpoints);
  const out = { chunksChecked: 0, bytesChecked: 0, checksumsCompared: 0, packsChecked: 0, packsTrusted: 0 };
  for (const r of ranges) {
    const m = (await repository.openManifest(backupId, r.diskId))!;
    const chunks = new Set<string>();
    const packs = new Map<string, number>();
    for await (const b of m.batches()) {
      for (let i = 0; i < b.count; i++) {
        const id = b.id(i);
        if (id === null || b.firstChunk + i < r.from || b.firstChunk + i >= r.to) continue;
        chunks.add(id);
        const pack = b.location(i)!.pack!;
        packs.set(pack.id, pack.size);
      }
    }
    out.chunksChecked += chunks.size;
    out.packsChecked += packs.size;
    for (const size of packs.values()) out.bytesChecked += size;
  }
  return out;
}

/** disk0 (12 MiB): pieces 0-1, 2-3, 4-5; disk1 (3 MiB): pieces 0-1. */
const RANGES = [
  { diskId: 'disk0', from: 0, to: 4 },
  { diskId: 'disk0', from: 4, to: 8 },
  { diskId: 'disk0', from: 8, to: 12 },
  { diskId: 'disk1', from: 0, to: 3 },
];

beforeAll(async () => {
  t = await startTestStack({ movers: 2, config: { ...example, backup: { ...example.backup, verifyRangePieces: 2 } } });
}, 600_000);
afterAll(async () => {
  await t?.close();
});

it('verifies a backup past one range by range, through the workflow, and Commit gets the ranges summed; a one-range VM keeps the one Verify', async () => {
  await addVm('vm-big', [12, 3], (i) => `big-${i}`);
  await addVm('vm-small', [2], () => 'small');
  await addPolicy('p-big', ['vm-big', 'vm-small']);
  const run = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-big' }, { pollMs: 300 });
  expect(run.status, run.cause).toBe('SUCCEEDED');
  const summary = JSON.parse(run.output!) as RunSummary;
  expect(summary).toMatchObject({ committed: 2, failed: 0 });

  const big = await vmStates(run.executionArn!, 'vm-big');
  const names = big.entered.map((e) => e.name);
  expect(names.slice(names.indexOf('Verify'), names.indexOf('Commit') + 1)).toEqual([
    'Verify',
    'PlanVerifyRanges',
    'VerifyRanges',
    'JoinVerifyRanges',
    'Commit',
  ]);
  // One child execution per range, each verifying its range (the Map Run's children of the VM's execution).
  const children = (await executions()).filter((c) => c.parentExecutionArn === big.child.executionArn);
  expect(
    children.map((c) => JSON.parse(c.input) as { diskId: string; from: number; to: number }).map(({ diskId, from, to }) => ({ diskId, from, to })),
  ).toEqual(expect.arrayContaining(RANGES));
  expect(children).toHaveLength(RANGES.length);
  expect(children.every((c) => c.status === 'SUCCEEDED')).toBe(true);
  const childStates = await Promise.all(children.map((c) => statesOf(c.file)));
  for (const states of childStates) expect(states.map((e) => e.name)).toEqual(['VerifyRange']);
  // Commit's input carries the ranges' counts summed, as worked out here from the manifests.
  const commit = big.entered.find((e) => e.name === 'Commit')!.input as { backupId: string; verify: VerifyOutput };
  const expected = await expectedCounts(commit.backupId, RANGES);
  expect(expected.chunksChecked).toBe(15);
  expect(commit.verify).toEqual(expected);
  expect((await t.stack.catalog.getBackup('vm-big', commit.backupId))?.status).toBe('committed');

  // The VM of one piece: Verify alone, straight to Commit, no state more than before.
  const small = await vmStates(run.executionArn!, 'vm-small');
  const path = small.entered.map((e) => e.name);
  expect(path.slice(path.indexOf('Verify'), path.indexOf('Commit') + 1)).toEqual(['Verify', 'Commit']);
  process.stdout.write(
    `states entered: one-range VM ${path.length}; VM of ${RANGES.length} ranges ${names.length} in its execution + ${childStates.flat().length} in its ${children.length} range executions\n`,
  );
  expect((small.entered.find((e) => e.name === 'Commit')!.input as { verify: VerifyOutput }).verify.chunksChecked).toBe(2);
}, 600_000);

it('fails the backup when a pack of the middle range is missing, naming the pack, the disk and the range', async () => {
  await addVm('vm-orig', [12, 3], (i) => `orig-${i}`);
  await addPolicy('p-orig', ['vm-orig']);
  const first = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-orig' }, { pollMs: 300 });
  expect(first.status, first.cause).toBe('SUCCEEDED');
  const backupId = (JSON.parse(first.output!) as RunSummary).vms[0]!.backupId;
  // A pack only chunks 4 to 7 of disk0 (range 2 of 4) are in.
  const repository = await openRepository(t.stack.endpoints);
  const where = new Map<string, Set<string>>();
  for (const diskId of ['disk0', 'disk1']) {
    for await (const b of (await repository.openManifest(backupId, diskId))!.batches()) {
      for (let i = 0; i < b.count; i++) {
        const loc = b.location(i);
        if (!loc) continue;
        const range = RANGES.findIndex((r) => r.diskId === diskId && r.from <= b.firstChunk + i && b.firstChunk + i < r.to);
        where.set(loc.key, (where.get(loc.key) ?? new Set()).add(String(range)));
      }
    }
  }
  const middle = [...where].find(([, ranges]) => ranges.size === 1 && ranges.has('1'))?.[0];
  expect(middle, `no pack is only in range 2: ${JSON.stringify([...where].map(([k, r]) => [k, [...r]]))}`).toBeDefined();
  const e = t.stack.endpoints;
  const s3 = s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  await s3.send(new DeleteObjectCommand({ Bucket: e.bucket, Key: middle! }));
  expect(await repository.store.head(middle!)).toBeUndefined();

  // The same bytes (the same seeds) in another VM (no parent to vouch for a pack): its mover finds every chunk in the index, so its
  // manifests name the deleted pack, and only Verify can tell.
  await addVm('vm-copy', [12, 3], (i) => `orig-${i}`);
  await addPolicy('p-copy', ['vm-copy']);
  const run = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-copy' }, { pollMs: 300 });
  expect(run.status, run.cause).toBe('SUCCEEDED');
  const summary = JSON.parse(run.output!) as RunSummary & { vms: { error?: { Error: string; Cause: string } }[] };
  expect(summary).toMatchObject({ committed: 0, failed: 1 });
  const error = summary.vms[0]!.error!;
  expect(error.Error).toBe('Verify.Failed');
  expect(error.Cause).toContain(`pack ${middle} of disk 'disk0', range 2 of 4 (pieces 2 to 3, chunks 4 to 7)`);
  expect(error.Cause).toContain('is missing from the repository');
  expect(error.Cause).toContain('1 of 4 ranges');
  const failed = (await vmStates(run.executionArn!, 'vm-copy')).entered.map((e) => e.name);
  expect(failed).toContain('RecordFailure');
  expect(failed).not.toContain('Commit');
}, 600_000);
