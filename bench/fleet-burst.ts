/**
 * The slot wait's start-up burst, alone: a Backup run's first wave of AcquireSlots (every
 * host's first VMs, `hosts × slots` of them, invoked at once) against the embedded stack's
 * catalog, with nothing else running. Each VM's AcquireSlot fast path is invoked as the
 * embedded stack invokes it (local/lambdas.ts: the real handler, middy and all, with the
 * stack's client wiring) against dynalite on disk, as the stack keeps it. Prints each VM's
 * time from the burst's start to holding its slot (p50/p99/max, mean), and the DynamoDB
 * requests the burst made (conditional writes refused apart).
 *
 *   npx node bench/fleet-burst.ts    settings: BENCH_BURST_HOSTS (default 20), BENCH_BURST_SLOTS (10)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import dynalite from 'dynalite';
import type { VmJob } from '../contracts/jobs.ts';
import { LOCAL_REGION } from '../local/asl.ts';
import { catalogFunctions, LOCAL_CREDENTIALS, observeSdkCalls } from '../local/stack.ts';
import { createCatalogTable } from '../test/helpers/catalog.ts';

const HOSTS = Number(process.env.BENCH_BURST_HOSTS ?? 20);
const SLOTS = Number(process.env.BENCH_BURST_SLOTS ?? 10);

const job = (host: string, vmId: string): VmJob => ({
  runId: 'burst',
  policyId: 'p',
  backupId: `b-${vmId}`,
  vmId,
  host,
  moverGroup: 'g',
  source: '/vms/burst',
  repository: { bucket: 'b', chunkSize: 1 << 20 },
  parentBackupId: null,
  parentManifests: {},
  slotScopes: [{ scope: `host:${host}`, limit: SLOTS }],
  slot: null,
  snapshot: null,
  segmentBytes: 256 << 20,
});

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(p * xs.length) - 1)]!;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-burst-'));
  const server = dynalite({ path: join(dir, 'dynamodb'), createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const admin = new DynamoDBClient({ region: LOCAL_REGION, endpoint, credentials: LOCAL_CREDENTIALS });
  await createCatalogTable(admin);
  const functions = catalogFunctions(endpoint, 'catalog');
  const requests = new Map<string, number>();
  observeSdkCalls((c) => {
    if (c.service === 'dynamodb') requests.set(c.operation, (requests.get(c.operation) ?? 0) + 1);
  });
  const jobs = Array.from({ length: HOSTS * SLOTS }, (_, i) => job(`h-${i % HOSTS}`, `vm-${i}`));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const held = await Promise.all(
    jobs.map(async (j) => {
      const lease = (await functions.invoke('AcquireSlot', { job: j })) as { keys: string[] };
      return { ms: performance.now() - t0, key: lease.keys[0]! };
    }),
  );
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  if (new Set(held.map((h) => h.key)).size !== jobs.length) throw new Error('two VMs of the burst hold the same slot');
  const ms = held.map((h) => h.ms / 1000);
  const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
  const s = (x: number) => x.toFixed(2);
  process.stdout.write(
    `burst of ${jobs.length} AcquireSlots (${HOSTS} hosts x ${SLOTS} slots): all held in ${s(wall / 1000)} s, process CPU ${s((cpu.user + cpu.system) / 1e6)} s; each held after p50/p99/max ${s(pct(ms, 0.5))}/${s(pct(ms, 0.99))}/${s(pct(ms, 1))} s, mean ${s(mean)} s; ` +
      `DynamoDB requests ${[...requests.values()].reduce((a, b) => a + b, 0)} (${[...requests].map(([op, n]) => `${op} ${n}`).join(', ')})\n`,
  );
  admin.destroy();
  await new Promise<void>((ok) => server.close(() => ok()));
  await rm(dir, { recursive: true, force: true });
}

await main();
process.exit(0);
