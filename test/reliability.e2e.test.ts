/**
 * The reliability suite: Lifeboat's workflows end to end on the embedded stack while the
 * storage misbehaves. Fault proxies (test/helpers/fault-proxy.ts) stand in front of the
 * embedded S3 with a seeded random schedule: each request of a mover gets, with
 * probability LIFEBOAT_FAULT_RATE (default 0.05), a reset connection, a PUT cut
 * mid-body, a response stalled beyond the movers' request deadline (before its headers,
 * or mid-body), or a 500 InternalError / 503 SlowDown. One proxy serves the backup site's
 * movers, one the DR mover (which reads the primary repository through it), one stands in
 * front of the DR repository's own endpoint (the DR mover's writes, and the functions'
 * checks of the replica: stalls only on PUTs, which only movers send, since the
 * functions' deadline is the default 60 s), one the control plane's functions during
 * prune and GC (resets and 5xx only).
 *
 * Scenarios: a full backup, an incremental, a restore, the replications to the DR
 * repository they started, a kill -9 of the mover running a backup's Dispatch followed by
 * a clean next run, prune and GC. For each: the outcome succeeded, restored data is
 * byte-identical to the source, no slot, lease or running record is left, and the faults
 * injected are matched by `storage.retry` lines (one retry layer in the movers: the SDK
 * tries each request once), less the requests whose task failed and was retried by the
 * workflow; in the functions (prune, GC) the SDK's own retries are the one layer, logged
 * and counted by functions/commons/clients.ts. A table of the figures is printed.
 *
 * `npm run reliability` runs it with a fault rate of 0.2 (LIFEBOAT_FAULT_RATE); the seed
 * is LIFEBOAT_FAULT_SEED (default 17), printed with the table, so a failing run replays.
 */
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, ScanCommand } from '@aws-sdk/lib-dynamodb';
import { createCipheriv, createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { controlPlaneStorageRetries } from '../functions/commons/clients.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover, type MoverLogLine } from '../local/movers.ts';
import { LOCAL_CREDENTIALS } from '../local/stack.ts';
import { startFaultProxy, type FaultProxy, type FaultRule } from './helpers/fault-proxy.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import type { RestoreSummary, RunSummary } from '../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
const RATE = Number(process.env.LIFEBOAT_FAULT_RATE ?? '0.05');
const SEED = Number(process.env.LIFEBOAT_FAULT_SEED ?? '17');
/** The movers' S3 request deadline: a stalled response fails after this long and is retried. */
const REQUEST_TIMEOUT_MS = 2000;

/**
 * Fills a VM's disk with incompressible bytes (an AES-CTR keystream of `seed`): every chunk
 * becomes a pack's worth of requests, so the faults meet enough of them.
 */
async function fillIncompressible(path: string, sizeBytes: number, seed: number): Promise<void> {
  const key = createHash('sha256').update(`reliability-${seed}`).digest();
  await writeFile(path, createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(sizeBytes)));
}

/** The fault kinds, each at an equal share of `rate` (a request meets at most one). */
function schedule(rate: number, kinds: 'all' | 'no-stalls' | 'stalls-on-puts'): FaultRule[] {
  const all: FaultRule[] = [
    { fault: { kind: 'reset' } },
    { fault: { kind: 'status', status: 500, code: 'InternalError' } },
    { fault: { kind: 'status', status: 503, code: 'SlowDown' } },
    ...(kinds === 'all'
      ? ([
          { method: 'PUT', fault: { kind: 'cut-put' } },
          { fault: { kind: 'stall', at: 'before-headers' } },
          { method: 'GET', fault: { kind: 'stall', at: 'mid-body' } },
        ] satisfies FaultRule[])
      : kinds === 'stalls-on-puts'
        ? ([
            { method: 'PUT', fault: { kind: 'cut-put' } },
            { method: 'PUT', fault: { kind: 'stall', at: 'before-headers' } },
          ] satisfies FaultRule[])
        : []),
  ];
  // Five rules match a GET or a PUT (four a HEAD or a listing): 1 - (1 - p)^5 ≈ rate.
  const p = 1 - (1 - rate) ** (1 / (kinds === 'no-stalls' ? 3 : 5));
  return all.map((r) => ({ ...r, probability: p }));
}

const example = loadConfig();
const config: LifeboatConfig = {
  ...example,
  policies: [
    ...example.policies,
    {
      id: 'p-rel',
      vms: { ids: ['vm-rel'] },
      schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' },
      retention: { keepLast: 2 },
      repository: 'primary',
      rpoHours: 26,
      replicateTo: 'dr',
    },
    {
      id: 'p-kill',
      vms: { ids: ['vm-kill'] },
      schedule: { expression: 'cron(0 4 * * ? *)', timeZone: 'UTC' },
      retention: { keepLast: 10 },
      repository: 'primary',
      rpoHours: 26,
    },
  ],
};

interface Row {
  scenario: string;
  requests: number;
  faults: number;
  retries: number;
  failedTasks: number;
  outcome: string;
  data: string;
}
const rows: Row[] = [];
let t: TestStack;
let site: FaultProxy;
let dr: FaultProxy;
let control: FaultProxy;
let drEndpoint: FaultProxy;
let db: DynamoDBDocumentClient;
const vmDir = (vm: string) => join(t.dir, 'vms', vm);
let moverCount = 0;

const moverEnv = (proxy: FaultProxy): Record<string, string> => ({
  LIFEBOAT_S3_ENDPOINT: proxy.url,
  LIFEBOAT_S3_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
  LIFEBOAT_S3_CONNECT_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
  // Small packs: more requests, so more of them meet a fault; a slow link, so a backup is still running when its mover is killed.
  LIFEBOAT_PACK_MIB: '1',
  LIFEBOAT_BANDWIDTH_LIMIT: String(16 * MiB),
});
function addMover(group: 'site-a' | 'dr', proxy: FaultProxy): string {
  const name = `rel-${group}-${++moverCount}`;
  t.movers.push(startMover(t.stack.endpoints, { name, group, env: moverEnv(proxy), onLog: (l) => t.logs.push(l) }));
  return name;
}

async function until<T>(get: () => T | undefined | Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`${what} did not happen within ${ms} ms`);
    await sleep(100);
  }
}

/** What a scenario did to storage: faults injected by its proxies, retries its movers logged, tasks failed. */
function window(proxies: FaultProxy[], movers: (name: string) => boolean) {
  const start = { faults: proxies.map((p) => p.injected.length), requests: proxies.map((p) => p.requests), logs: t.logs.length };
  return () => {
    const lines = t.logs.slice(start.logs).filter((l) => movers(l.mover));
    return {
      requests: proxies.reduce((n, p, i) => n + p.requests - start.requests[i]!, 0),
      faults: proxies.reduce((n, p, i) => n + p.injected.length - start.faults[i]!, 0),
      injected: proxies.flatMap((p, i) => p.injected.slice(start.faults[i])),
      retries: lines.filter((l) => l.event === 'storage.retry').length,
      failedTasks: lines.filter((l) => l.event === 'task.failed').length,
      lines,
    };
  };
}
const siteMovers = (m: string) => m.startsWith('rel-site-a-');
const drMovers = (m: string) => m.startsWith('rel-dr-');

/** Every injected fault of a movers' proxy shows as a retry, unless its request's task failed and the workflow retried the task. */
function expectRetriesAccountFor(w: ReturnType<ReturnType<typeof window>>, scenario: string) {
  expect(w.retries, `${scenario}: storage.retry lines for ${w.faults} faults (${w.failedTasks} tasks failed)`).toBeGreaterThanOrEqual(
    w.faults - w.failedTasks * 5,
  );
  for (const l of w.lines.filter((x) => x.event === 'storage.retry'))
    expect(l, scenario).toMatchObject({ op: expect.any(String), key: expect.any(String), attempt: expect.any(Number), cause: expect.any(String) });
}

/** No slot, lease (run, replica, GC) or running backup record is left. */
async function expectNothingHeld(scenario: string) {
  const slots = await db.send(
    new ScanCommand({
      TableName: t.stack.endpoints.table,
      FilterExpression: 'begins_with(pk, :s)',
      ExpressionAttributeValues: { ':s': 'SLOT#' },
      ConsistentRead: true,
    }),
  );
  expect(slots.Items ?? [], `${scenario}: slots and leases held`).toEqual([]);
  expect(await t.stack.catalog.runningBackups(), `${scenario}: running backup records`).toEqual([]);
}

const backupRun = async (policyId: string) => runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 200 });

/** The ReplicatePolicy execution a Backup run started, waited for. */
async function replicationOf(runId: string) {
  const arn = t.stack.endpoints.stateMachines.ReplicatePolicy!;
  const name = `replicate-${createHash('sha1').update(runId).digest('hex')}`;
  const found = await until(
    async () => (await t.sfn.send(new ListExecutionsCommand({ stateMachineArn: arn }))).executions?.find((x) => x.name === name),
    30_000,
    `the replication of run ${runId}`,
  );
  return waitForExecution(t.sfn, found.executionArn!, { pollMs: 200 });
}

/** Restores a backup (through the site's proxy) and compares every disk with the VM's source; returns what was checked. */
async function restoreIdentical(vm: string, backupId: string, target: string, extra: Record<string, unknown> = {}): Promise<string> {
  const r = await runExecution(
    t.sfn,
    t.stack.endpoints.stateMachines.Restore!,
    { vmId: vm, backupId, target: join(t.dir, target), moverGroup: 'site-a', ...extra },
    { pollMs: 200 },
  );
  expect(r.status, r.cause).toBe('SUCCEEDED');
  const s = JSON.parse(r.output!) as RestoreSummary;
  for (const d of s.disks) expect(await sha256File(d.path), `${vm}/${d.diskId}`).toBe(await sha256File(join(vmDir(vm), `${d.diskId}.raw`)));
  return `${s.disks.length} disk(s), ${Math.round(s.bytesRestored / MiB)} MiB sha256-identical`;
}

beforeAll(async () => {
  t = await startTestStack({
    groups: {},
    config,
    endpointFront: async (repositoryId, url) => {
      expect(repositoryId).toBe('dr');
      drEndpoint = await startFaultProxy({ target: url, seed: SEED + 3, rules: schedule(RATE, 'stalls-on-puts') });
      return drEndpoint.url;
    },
  });
  const e = t.stack.endpoints;
  db = DynamoDBDocumentClient.from(new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS }));
  site = await startFaultProxy({ target: e.s3, seed: SEED, rules: schedule(RATE, 'all') });
  dr = await startFaultProxy({ target: e.s3, seed: SEED + 1, rules: schedule(RATE, 'all') });
  control = await startFaultProxy({ target: e.s3, seed: SEED + 2 });
  addMover('site-a', site);
  addMover('site-a', site);
  addMover('dr', dr);
  await createVmFolder(
    vmDir('vm-rel'),
    {
      name: 'vm-rel',
      disks: [
        { id: 'disk0', sizeBytes: 24 * MiB },
        { id: 'disk1', sizeBytes: 8 * MiB },
      ],
    },
    seededRng(SEED),
  );
  await createVmFolder(vmDir('vm-kill'), { name: 'vm-kill', disks: [{ id: 'disk0', sizeBytes: 64 * MiB }] }, seededRng(SEED + 1));
  await fillIncompressible(join(vmDir('vm-rel'), 'disk0.raw'), 24 * MiB, SEED);
  await fillIncompressible(join(vmDir('vm-rel'), 'disk1.raw'), 8 * MiB, SEED + 1);
  await fillIncompressible(join(vmDir('vm-kill'), 'disk0.raw'), 64 * MiB, SEED + 2);
  await t.stack.catalog.putVm({ vmId: 'vm-rel', host: 'esx-01', source: vmDir('vm-rel') });
  await t.stack.catalog.putVm({ vmId: 'vm-kill', host: 'esx-02', source: vmDir('vm-kill') });
}, 240_000);
afterAll(async () => {
  const table = [
    `reliability suite: fault rate ${RATE}, seed ${SEED}`,
    '| scenario | requests | faults injected | retries logged | tasks failed (prune + GC: requests failed after the last attempt) | outcome | data checked |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.scenario} | ${r.requests} | ${r.faults} | ${r.retries} | ${r.failedTasks} | ${r.outcome} | ${r.data} |`),
  ].join('\n');
  process.stdout.write(`\n${table}\n\n`);
  await t?.close();
  await Promise.all([site, dr, control, drEndpoint].map((p) => p?.close()));
});

it('backs up, replicates, restores, survives a killed mover, prunes and collects garbage while the storage fails', async () => {
  // Full backup, and the replication it starts.
  let w = window([site], siteMovers);
  const full = await backupRun('p-rel');
  expect(full.status, full.cause).toBe('SUCCEEDED');
  const fullRun = JSON.parse(full.output!) as RunSummary & { replication?: { started: boolean } };
  expect(fullRun).toMatchObject({ committed: 1, failed: 0, replication: { started: true } });
  let s = w();
  expectRetriesAccountFor(s, 'full backup');
  // The run's counter holds the retries its Dispatch tasks made (the snapshot, verify and registration ones are logged only).
  expect(fullRun.totals.storageRetries).toBeLessThanOrEqual(s.retries);
  rows.push({
    scenario: 'full backup',
    requests: s.requests,
    faults: s.faults,
    retries: s.retries,
    failedTasks: s.failedTasks,
    outcome: `committed (run counter: ${fullRun.totals.storageRetries} retries)`,
    data: 'restored below',
  });

  // Replication: the DR mover reads through `dr` and writes through `drEndpoint`; the functions check the replica through `drEndpoint` (their retries counted apart).
  const wr = window([dr, drEndpoint], drMovers);
  const kr = controlPlaneStorageRetries();
  const rep1 = await replicationOf(fullRun.runId);
  expect(rep1.status, rep1.cause).toBe('SUCCEEDED');
  await expectNothingHeld('full backup and its replication');

  // Incremental backup of the changed VM, and its replication.
  await changeDisk(join(vmDir('vm-rel'), 'disk0.raw'), 24 * MiB, 0.05, 3, seededRng(SEED + 3));
  w = window([site], siteMovers);
  const incr = await backupRun('p-rel');
  expect(incr.status, incr.cause).toBe('SUCCEEDED');
  const incrRun = JSON.parse(incr.output!) as RunSummary;
  expect(incrRun).toMatchObject({ committed: 1, failed: 0 });
  expect(incrRun.totals.uploadedChunks).toBeGreaterThan(0);
  expect(incrRun.totals.uploadedChunks).toBeLessThan(fullRun.totals.uploadedChunks);
  s = w();
  expectRetriesAccountFor(s, 'incremental backup');
  rows.push({
    scenario: 'incremental backup',
    requests: s.requests,
    faults: s.faults,
    retries: s.retries,
    failedTasks: s.failedTasks,
    outcome: `committed, ${incrRun.totals.uploadedChunks} of ${incrRun.totals.chunks} chunks uploaded (run counter: ${incrRun.totals.storageRetries} retries)`,
    data: 'restored below',
  });
  const rep2 = await replicationOf(incrRun.runId);
  expect(rep2.status, rep2.cause).toBe('SUCCEEDED');
  s = wr();
  const krEnd = controlPlaneStorageRetries();
  s.retries += krEnd.retries - kr.retries;
  s.failedTasks += krEnd.exhausted - kr.exhausted;
  expectRetriesAccountFor(s, 'replication');
  await expectNothingHeld('incremental backup and its replication');

  // The replica is whole: a restore from the DR repository (through its own endpoint, no faults) equals the source.
  const incrId = incrRun.vms[0]!.backupId;
  const fromDr = await runExecution(
    t.sfn,
    t.stack.endpoints.stateMachines.Restore!,
    { vmId: 'vm-rel', backupId: incrId, target: join(t.dir, 'from-dr'), moverGroup: 'dr', fromBucket: t.stack.endpoints.buckets.dr! },
    { pollMs: 200 },
  );
  expect(fromDr.status, fromDr.cause).toBe('SUCCEEDED');
  for (const d of (JSON.parse(fromDr.output!) as RestoreSummary).disks)
    expect(await sha256File(d.path), d.diskId).toBe(await sha256File(join(vmDir('vm-rel'), `${d.diskId}.raw`)));
  rows.push({
    scenario: 'replication to DR (full + incremental; reads and writes through faults)',
    requests: s.requests,
    faults: s.faults,
    retries: s.retries,
    failedTasks: s.failedTasks,
    outcome: 'both succeeded',
    data: 'restore from the DR repository sha256-identical',
  });

  // Restore of the incremental through the faults.
  w = window([site], siteMovers);
  const restored = await restoreIdentical('vm-rel', incrId, 'restore-incr');
  s = w();
  expectRetriesAccountFor(s, 'restore');
  await expectNothingHeld('restore');
  rows.push({
    scenario: 'restore',
    requests: s.requests,
    faults: s.faults,
    retries: s.retries,
    failedTasks: s.failedTasks,
    outcome: 'succeeded',
    data: restored,
  });

  // kill -9 of the mover running a Dispatch mid-backup: the task goes to the other mover after its heartbeat timeout.
  w = window([site], siteMovers);
  const killedRun = backupRun('p-kill');
  const progress = await until(
    () => t.logs.find((l): l is MoverLogLine => l.event === 'dispatch.progress' && l.vmId === 'vm-kill' && (l.bytesStored as number) > 0),
    60_000,
    'a Dispatch of vm-kill storing bytes',
  );
  const victim = t.movers.find((m) => m.name === progress.mover)!;
  await victim.stop(true);
  expect(victim.child.signalCode).toBe('SIGKILL');
  addMover('site-a', site); // a replacement, so two movers serve the group again
  const killed = await killedRun;
  s = w();
  const killedSummary = killed.output ? (JSON.parse(killed.output) as RunSummary) : undefined;
  if (killed.status === 'SUCCEEDED' && killedSummary?.committed === 1) {
    expect(
      t.logs.some((l) => l.mover !== progress.mover && l.event === 'task.succeeded' && l.task === 'dispatch' && l.vmId === 'vm-kill'),
      'another mover finished the Dispatch',
    ).toBe(true);
  } else {
    // Failed with a named error and nothing committed.
    expect(killedSummary?.vms[0]?.error?.Error ?? killed.error, killed.cause).toMatch(/^[A-Z][A-Za-z]+\.[A-Za-z]+/);
    expect(await t.stack.catalog.latestCommitted('vm-kill')).toBeUndefined();
  }
  await expectNothingHeld('backup whose mover was killed');
  const next = await backupRun('p-kill');
  expect(next.status, next.cause).toBe('SUCCEEDED');
  const nextRun = JSON.parse(next.output!) as RunSummary;
  expect(nextRun).toMatchObject({ committed: 1, failed: 0 });
  await expectNothingHeld('the run after the kill');
  const killRestore = await restoreIdentical('vm-kill', nextRun.vms[0]!.backupId, 'restore-kill');
  s = w();
  rows.push({
    scenario: 'kill -9 of a mover mid-Dispatch, then the next run',
    requests: s.requests,
    faults: s.faults,
    retries: s.retries,
    failedTasks: s.failedTasks,
    outcome: `${killedSummary?.committed === 1 ? 'committed after takeover' : `failed (${killed.error})`}; next run committed`,
    data: killRestore,
  });

  // Prune (keepLast 2: the full goes) and GC with the control plane's own requests through a faulty proxy.
  const vmRelBefore = (await t.stack.catalog.listBackups('vm-rel')).filter((b) => b.status === 'committed');
  await backupRun('p-rel').then(async (d) => {
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = await replicationOf((JSON.parse(d.output!) as RunSummary).runId);
    expect(r.status, r.cause).toBe('SUCCEEDED');
  });
  control.setRules(schedule(RATE, 'no-stalls'));
  t.stack.routeFunctionsS3(control.url);
  // Prune deletes the pruned backup's DR copy through the DR endpoint's proxy: its faults count here too.
  const c0 = control.injected.length + drEndpoint.injected.length;
  const r0 = control.requests + drEndpoint.requests;
  const k0 = controlPlaneStorageRetries();
  try {
    const prune = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Prune!, { policyId: 'p-rel' }, { pollMs: 200 });
    expect(prune.status, prune.cause).toBe('SUCCEEDED');
    const gc = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Gc!, { bucket: t.stack.endpoints.bucket, graceHours: 0 }, { pollMs: 200 });
    expect(gc.status, gc.cause).toBe('SUCCEEDED');
  } finally {
    control.setRules([]);
    t.stack.routeFunctionsS3(undefined);
  }
  // The functions' one retry layer is the SDK's: every fault is a logged, counted retry, or a request that failed after its last attempt (the workflow's Retry ran the function again).
  const k1 = controlPlaneStorageRetries();
  const ctl = { faults: control.injected.length + drEndpoint.injected.length - c0, retries: k1.retries - k0.retries, exhausted: k1.exhausted - k0.exhausted };
  expect(ctl.retries, `prune + GC: ${ctl.faults} faults, ${ctl.exhausted} requests failed after their last attempt`).toBeGreaterThanOrEqual(
    ctl.faults - 3 * ctl.exhausted,
  );
  const committed = (await t.stack.catalog.listBackups('vm-rel')).filter((b) => b.status === 'committed');
  expect(committed).toHaveLength(2);
  expect(committed.map((b) => b.backupId)).not.toContain(vmRelBefore.at(-1)!.backupId); // the oldest (the full) was pruned
  await expectNothingHeld('prune and GC');
  // What GC kept restores whole: the newest backup (unchanged since the incremental) and the incremental.
  const afterGc = await restoreIdentical('vm-rel', committed[0]!.backupId, 'restore-after-gc');
  await restoreIdentical('vm-rel', incrId, 'restore-incr-after-gc', {});
  rows.push({
    scenario: 'prune + GC (the functions through proxies: resets, 5xx)',
    requests: control.requests + drEndpoint.requests - r0,
    faults: ctl.faults,
    retries: ctl.retries,
    failedTasks: ctl.exhausted,
    outcome: 'prune and GC succeeded, the full backup pruned',
    data: `2 backups left, both restored: ${afterGc}`,
  });
}, 420_000);
