/**
 * Least privilege checked against reality: every DynamoDB and S3 call the functions make
 * while the workflows run in the embedded stack is attributed to its function and must
 * be allowed by that function's access declaration (cdk/lib/function-access.ts), which
 * the CDK app turns into its IAM policy (test/cdk-deploy.test.ts checks that mapping).
 * A call missing from a declaration would fail with AccessDenied only in AWS.
 * The movers' S3 requests go through a recording proxy and must fit the mover role.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { functionAccess } from '../cdk/lib/function-access.ts';
import { MOVER_READ_PREFIXES, MOVER_WRITE_PREFIXES } from '../cdk/lib/mover-identity.ts';
import { observeSdkCalls, type SdkCall } from '../functions/commons/clients.ts';
import type { LambdaFunctionId } from '../contracts/functions.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { currentInvocation } from '../local/lambdas.ts';
import { objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation } from '../repository/packs.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { denied } from './helpers/grants.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
let t: TestStack;
const calls: (SdkCall & { functionId: LambdaFunctionId })[] = [];

/** S3 requests of the mover processes (path style: /bucket/key), recorded by a proxy in front of s3rver. */
const moverRequests: { method: string; bucket: string; key: string; query: URLSearchParams }[] = [];
const s3Target = Promise.withResolvers<URL>();
const proxy = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://proxy');
  const [, bucket = '', ...key] = url.pathname.split('/');
  moverRequests.push({ method: req.method ?? '', bucket: decodeURIComponent(bucket), key: decodeURIComponent(key.join('/')), query: url.searchParams });
  const headers = { ...req.headers };
  delete headers.expect; // 100-continue is not signed; the proxy already answered it
  void s3Target.promise.then((target) => {
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', (err) => {
      res.writeHead(502);
      res.end(String(err));
    });
    req.pipe(up);
  });
});

/** The IAM action a mover's S3 request needs, and why the mover role does not allow it (undefined: allowed). */
function moverDenied(r: (typeof moverRequests)[number]): string | undefined {
  const within = (prefixes: readonly string[]) => prefixes.some((p) => r.key.startsWith(p));
  if (r.method === 'DELETE' || (r.method === 'POST' && r.query.has('delete'))) return `${r.method} ${r.bucket}/${r.key}: movers may not delete`;
  // ListObjects (of the index) and HeadBucket both need s3:ListBucket, which the role has on the whole bucket.
  if (!r.key) return r.method === 'GET' || r.method === 'HEAD' ? undefined : `${r.method} on bucket ${r.bucket} is not granted`;
  if (r.method === 'PUT' || r.method === 'POST')
    return within(MOVER_WRITE_PREFIXES) ? undefined : `s3:PutObject of ${r.key} is outside [${MOVER_WRITE_PREFIXES.join(', ')}]`;
  if (r.method === 'GET' || r.method === 'HEAD')
    return within(MOVER_READ_PREFIXES) ? undefined : `s3:GetObject of ${r.key} is outside [${MOVER_READ_PREFIXES.join(', ')}]`;
  return `${r.method} ${r.bucket}/${r.key} is not mapped to an IAM action in this test`;
}

beforeAll(async () => {
  observeSdkCalls((call) => {
    const functionId = currentInvocation.getStore()?.functionId;
    if (functionId) calls.push({ ...call, functionId });
  });
  await new Promise<void>((ok) => proxy.listen(0, '127.0.0.1', ok));
  const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  t = await startTestStack({ groups: { 'site-a': 2, dr: 1 }, moverEnv: { LIFEBOAT_S3_ENDPOINT: proxyUrl } });
  s3Target.resolve(new URL(t.stack.endpoints.s3));
}, 300_000);
afterAll(async () => {
  observeSdkCalls(undefined);
  await t?.close();
  proxy.closeAllConnections();
  await new Promise((ok) => proxy.close(ok));
});

it('makes only the DynamoDB and S3 calls each function and the mover role are granted, across backup, restore, verify, replication, failover, prune, GC and discovery', {
  timeout: 900_000,
}, async () => {
  const e = t.stack.endpoints;
  const run = (name: string, input: unknown) => {
    const arn = e.stateMachines[name];
    if (!arn) throw new Error(`no ${name} state machine; have ${Object.keys(e.stateMachines).join(', ')}`);
    return runExecution(t.sfn, arn, input, { pollMs: 200 });
  };
  const vmDir = join(t.dir, 'vms', 'vm-i');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-i',
      disks: [
        { id: 'disk0', sizeBytes: 12 * MiB },
        { id: 'disk1', sizeBytes: 3 * MiB },
      ],
    },
    seededRng(3),
  );
  await t.stack.catalog.putVm({ vmId: 'vm-i', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putVm({ vmId: 'vm-gone', host: 'esx-01', source: join(t.dir, 'vms', 'no-such-vm') });
  // Small segments: disk0 is cut into parts (PlanDispatch, JoinSegments); vm-gone fails (RecordFailure).
  await t.stack.catalog.putPolicy({
    policyId: 'p-i',
    vmIds: ['vm-i', 'vm-gone'],
    bucket: e.bucket,
    chunkSize: MiB,
    slotLimit: 2,
    segmentBytes: 4 * MiB,
    retention: { keepLast: 1 },
    // The DR repository on its own endpoint (a second s3rver), replicated by group dr after each run.
    replicateTo: { repositoryId: 'dr', ...e.repositories.dr!, moverGroup: 'dr' },
  });
  const replicatePolicy = e.stateMachines.ReplicatePolicy!;
  const replicaDir = join(t.dir, 'dr-site', 'replicas');

  for (let i = 0; i < 2; i++) {
    // disk1 rewritten whole before each backup: the first backup's packs of it become garbage once Prune keeps only the last.
    await changeDisk(join(vmDir, 'disk1.raw'), 3 * MiB, 1, 1, seededRng(4 + i));
    const b = await run('Backup', { policyId: 'p-i' });
    expect(b.status, b.cause).toBe('SUCCEEDED');
    // The run started the replication of its backups (StartReplication); it finishes before the next step.
    const started = (JSON.parse(b.output!) as { replication?: { executionArn?: string } }).replication?.executionArn;
    expect(started, 'the run started no replication').toMatch(new RegExp(`^${replicatePolicy.replace(':stateMachine:', ':execution:')}:`));
    const r = await waitForExecution(t.sfn, started!, { pollMs: 200 });
    expect(r.status, r.cause).toBe('SUCCEEDED');
  }
  const steps: [string, unknown][] = [
    ['Restore', { vmId: 'vm-i', target: join(t.dir, 'restored'), moverGroup: 'site-a' }],
    ['DeepVerify', { vmId: 'vm-i', moverGroup: 'site-a' }],
    ['Replicate', { vmId: 'vm-i', moverGroup: 'dr', replicaDir }],
    ['Failover', { vmId: 'vm-i', moverGroup: 'dr', replicaDir }],
    ['Prune', { policyId: 'p-i' }],
    ['Gc', { bucket: e.bucket, graceHours: 1, dryRun: true }],
    ['Gc', { bucket: e.bucket, graceHours: 0 }],
    ['Replicate', { vmId: 'vm-i', moverGroup: 'site-a', targetBucket: e.buckets.dr, replicaDir: join(t.dir, 'replica') }],
    ['Failover', { vmId: 'vm-i', moverGroup: 'site-a', targetBucket: e.buckets.dr, replicaDir: join(t.dir, 'replica') }],
  ];
  for (const [name, input] of steps) {
    const d = await run(name, input);
    expect(d.status, `${name}: ${d.cause}`).toBe('SUCCEEDED');
  }

  // A restore test (RestoreTest, RecordRestoreTest): vm-i seen as a VM of a libvirt host (libvirt's test driver). Its
  // backup holds no domain definition, so the test fails after the mover restored the disks, and is recorded as failed.
  await t.stack.catalog.putHost({
    hostId: 'kvm-iam',
    moverGroup: 'site-a',
    site: 'site-a',
    maxConcurrentBackups: 1,
    datastores: {},
    hypervisor: { driver: 'libvirt', uri: 'test:///default' },
  });
  await t.stack.catalog.putVm({ vmId: 'vm-i', host: 'kvm-iam', source: vmDir });
  const tested = await run('DeepVerify', { vmId: 'vm-i', moverGroup: 'site-a', sample: 0.5, restoreTest: { bootCheck: { agent: true }, timeoutSeconds: 5 } });
  expect(tested.status, tested.cause).toBe('SUCCEEDED');
  expect(JSON.parse(tested.output!)).toMatchObject({
    restoreTest: { passed: false, reason: expect.stringMatching(/Recovery\.RequestInvalid|Mover\.SourceUnavailable/) },
  });
  await t.stack.catalog.putVm({ vmId: 'vm-i', host: 'esx-01', source: vmDir });

  // Healing: a chunk damaged in its pack is quarantined (QuarantineDamage), stored again by a backup (Plan passes it), and the backup heals (RecordDeepVerify).
  const newest = (await t.stack.catalog.latestCommitted('vm-i'))!;
  const { store, keys } = await stackRepositoryKeys(e);
  const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(newest.backupId, 'disk0')))!, newest.backupId, 'disk0', store);
  const damagedId = m.chunks.find((c) => c !== null)!;
  const at = chunkLocation(m, damagedId); // format 2: the chunk's bytes in its pack
  const damagedBody = (await store.get(at.key))!;
  damagedBody[at.offset + 40]! ^= 1;
  await store.put(at.key, damagedBody);
  const found = await run('DeepVerify', { vmId: 'vm-i', moverGroup: 'site-a' });
  expect(found.status, found.cause).toBe('SUCCEEDED');
  expect(JSON.parse(found.output!)).toMatchObject({ damaged: true });
  const again = await run('Backup', { policyId: 'p-i' });
  expect(again.status, again.cause).toBe('SUCCEEDED');
  const replicated = (JSON.parse(again.output!) as { replication?: { executionArn?: string } }).replication?.executionArn;
  if (replicated) expect((await waitForExecution(t.sfn, replicated, { pollMs: 200 })).status).toBe('SUCCEEDED');
  const healed = await run('DeepVerify', { vmId: 'vm-i', backupId: newest.backupId, moverGroup: 'site-a' });
  expect(healed.status, healed.cause).toBe('SUCCEEDED');
  expect(JSON.parse(healed.output!)).toMatchObject({ damaged: false, healed: { chunks: [damagedId] } });

  // Discovery of the libvirt host kvm-iam (libvirt's test driver, above): ListDiscoveryHosts, RecordInventory, then ListDrSites (the DR sites to sweep).
  const discovered = await run('Discover', { hostId: 'kvm-iam' });
  expect(discovered.status, discovered.cause).toBe('SUCCEEDED');

  const exercised = new Set(calls.map((c) => c.functionId));
  console.log(
    `functions whose calls were checked: ${[...exercised].sort().join(', ')}; not exercised: ${Object.keys(functionAccess)
      .filter((f) => !exercised.has(f as LambdaFunctionId))
      .sort()
      .join(', ')}`,
  );

  // PlanDispatch calls nothing; every other function the workflows ran made calls that were checked.
  for (const f of [
    'Plan',
    'AcquireSlot',
    'JoinSegments',
    'Verify',
    'Commit',
    'ReleaseSlot',
    'RecordFailure',
    'Summarize',
    'PlanRestore',
    'PlanReplicate',
    'PlanReplicatePolicy',
    'AcquireReplicaLease',
    'VerifyReplica',
    'ReleaseReplicaLease',
    'PruneBackup',
    'ExtendLocks',
    'CollectGarbage',
    'QuarantineDamage',
    'RecordDeepVerify',
    'RecordRestoreTest',
    'ReportReplication',
    'AcquireRunLease',
    'ReleaseRunLease',
    'RecordRestore',
    'PlanDeepVerify',
    'RecordReplication',
    'RecordReplicatePolicy',
    'PlanFailover',
    'RecordFailover',
    'PlanPrune',
    'RecordPrune',
    'SyncConfig',
    'ListDiscoveryHosts',
    'RecordInventory',
    'ListDrSites',
  ] as LambdaFunctionId[]) {
    expect(exercised.has(f), `${f} made no calls: the workflows did not exercise it`).toBe(true);
  }
  // Garbage collection deleted a pack and the index object that listed it: those calls were checked too.
  const gcDeleted = calls
    .filter((c) => c.functionId === 'CollectGarbage' && c.operation === 'DeleteObjects')
    .flatMap((c) => ((c.input.Delete as { Objects?: { Key: string }[] } | undefined)?.Objects ?? []).map((o) => o.Key));
  expect(
    gcDeleted.some((k) => k.startsWith('packs/')),
    'GC deleted no pack',
  ).toBe(true);
  expect(
    gcDeleted.some((k) => k.startsWith('index/')),
    'GC deleted no index object',
  ).toBe(true);
  const problems = new Set(
    calls
      .map((c) => {
        const why = denied(c, functionAccess[c.functionId]);
        return why && `${c.functionId}: ${why}`;
      })
      .filter(Boolean),
  );
  expect([...problems]).toEqual([]);

  // The movers: uploads of packs and index objects, downloads, listing the index, registration, no delete; every request within the mover role.
  expect(moverRequests.filter((r) => r.method === 'PUT' && r.key.startsWith('packs/')).length).toBeGreaterThan(0);
  expect(moverRequests.filter((r) => r.method === 'PUT' && r.key.startsWith('index/')).length).toBeGreaterThan(0);
  expect(moverRequests.filter((r) => r.method === 'GET' && r.key.startsWith('packs/')).length).toBeGreaterThan(0);
  expect(moverRequests.some((r) => r.method === 'GET' && !r.key && r.query.get('list-type') === '2' && r.query.get('prefix') === 'index/')).toBe(true);
  expect(moverRequests.some((r) => r.key.startsWith('movers/'))).toBe(true);
  expect([...new Set(moverRequests.map(moverDenied).filter(Boolean))]).toEqual([]);
});
