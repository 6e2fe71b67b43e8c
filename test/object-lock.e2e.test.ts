/**
 * Object Lock on the embedded stack: a repository configured with `objectLock` gets it on
 * the local S3 front, and the Garbage collection workflow (the ASL the CDK app synthesizes)
 * runs ExtendLocks before CollectGarbage, so a real backup's packs end up locked until its
 * expiry under its policy's retention, not only for the bucket's default days.
 */
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, s3Client } from '../core/s3-store.ts';
import type { GcReport } from '../contracts/gc-report.ts';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { S3RepositoryAdmin } from '../repository/admin.ts';
import { S3ObjectLocks } from '../repository/object-lock.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const DAY = 86_400_000;
const MiB = 1024 * 1024;
let t: TestStack;
let clock = Date.now();
const example = loadConfig();

beforeAll(async () => {
  const config = {
    ...example,
    repositories: example.repositories.map((r, i) => (i === 0 ? { ...r, objectLock: { mode: 'GOVERNANCE' as const, days: 2 } } : r)),
  };
  t = await startTestStack({ movers: 1, config, s3Clock: () => new Date(clock) });
  const vm = join(t.dir, 'vms', 'locked');
  await createVmFolder(vm, { name: 'locked', disks: [{ id: 'disk0', sizeBytes: 8 * MiB }] }, seededRng(31));
  await t.stack.catalog.putVm({ vmId: 'vm-lock', host: 'esx-01', source: vm });
  await t.stack.catalog.putPolicy({
    policyId: 'p-lock',
    vmIds: ['vm-lock'],
    bucket: t.stack.endpoints.bucket,
    chunkSize: MiB,
    slotLimit: 1,
    retention: { daily: 90 },
    rpoHours: 24,
  });
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-lock' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
}, 240_000);
afterAll(async () => {
  await t?.close();
});

it("locks a backup's packs until its expiry when the Gc workflow runs, and GC deletes none of them", async () => {
  const e = t.stack.endpoints;
  const client = s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  const locks = new S3ObjectLocks(client, e.bucket);
  const packs: string[] = [];
  for await (const o of new S3RepositoryAdmin(client, e.bucket).list('packs/')) packs.push(o.key);
  expect(packs.length).toBeGreaterThan(0);
  const backup = (await t.stack.catalog.latestCommitted('vm-lock'))!;
  const expiry = Date.parse(backup.startedAt) + 90 * DAY;
  // Written under the bucket's default: two days.
  for (const k of packs) expect((await locks.retention(k))!.until.getTime()).toBeLessThan(Date.now() + 3 * DAY);

  const gc = await runExecution(t.sfn, e.stateMachines.Gc!, { bucket: e.bucket, graceHours: 0, objectLockDays: 2 }, { pollMs: 200 });
  expect(gc.status, gc.cause).toBe('SUCCEEDED');
  const report = JSON.parse(gc.output!) as GcReport;
  expect(report.failed).toEqual([]);
  expect(report.packs.referenced).toBe(packs.length);
  for (const k of packs) {
    const r = (await locks.retention(k))!;
    expect(r.mode).toBe('GOVERNANCE');
    expect(r.until.getTime(), k).toBeGreaterThanOrEqual(expiry);
  }
  // A week on, past the default retention, the front still refuses to delete them.
  clock = Date.now() + 7 * DAY;
  const refused = await client.send(new DeleteObjectCommand({ Bucket: e.bucket, Key: packs[0]! })).then(
    () => 'deleted',
    (err: Error) => err.name,
  );
  expect(refused).toBe('AccessDenied');
});
