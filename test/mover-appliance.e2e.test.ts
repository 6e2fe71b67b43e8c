/**
 * The mover as an appliance, end to end: a real mover process on the embedded stack, as
 * systemd would start it (NOTIFY_SOCKET: a real unix datagram socket read by a small
 * Python receiver standing in for the service manager; WATCHDOG_USEC), with its Prometheus
 * endpoint on an ephemeral port. After a real backup and a deep verification the scrape
 * shows the bytes, requests, task durations and outcomes; READY=1, the watchdog pings and
 * STOPPING=1 arrive; bad metrics settings stop the mover with exit code 2 and a message.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../local/movers.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const haveNotify = existsSync('/usr/bin/systemd-notify') || existsSync('/bin/systemd-notify');

let t: TestStack;
let receiver: ChildProcess;
const datagrams: { at: number; text: string }[] = [];
let mover: MoverProcess;
const logs: MoverLogLine[] = [];
let metricsUrl = '';

const waitFor = async <T>(what: string, get: () => T | undefined, ms = 30_000): Promise<T> => {
  const until = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v) return v;
    if (Date.now() > until)
      throw new Error(
        `timed out waiting for ${what}; mover log: ${logs
          .slice(-10)
          .map((l) => JSON.stringify(l))
          .join('\n')}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
};

/** A unix datagram socket as systemd's NOTIFY_SOCKET: one line per datagram received (newlines shown as `|`). */
async function startReceiver(path: string): Promise<ChildProcess> {
  const py =
    'import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("bound",flush=True)\nwhile True:\n  print(s.recv(65536).decode().replace("\\n","|"),flush=True)\n';
  const child = spawn(PYTHON, ['-c', py, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((ok, fail) => {
    child.once('error', fail);
    lines.on('line', (l) => (l === 'bound' ? ok() : datagrams.push({ at: Date.now(), text: l })));
  });
  return child;
}

/** Prometheus text → `name{labels}` → value. */
async function scrape(): Promise<Map<string, number>> {
  const res = await fetch(metricsUrl);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-zA-Z0-9_:]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}
const sum = (m: Map<string, number>, prefix: string) => [...m].filter(([k]) => k.startsWith(prefix)).reduce((a, [, v]) => a + v, 0);

beforeAll(async () => {
  t = await startTestStack({ movers: 0 });
  receiver = await startReceiver(join(t.dir, 'notify.sock'));
  mover = startMover(t.stack.endpoints, {
    name: 'appliance-1',
    group: 'site-a',
    env: { LIFEBOAT_METRICS_ADDRESS: '127.0.0.1:0', NOTIFY_SOCKET: join(t.dir, 'notify.sock'), WATCHDOG_USEC: '1000000', LIFEBOAT_REGISTRATION_SECONDS: '5' },
    onLog: (l) => logs.push(l),
  });
  metricsUrl = String((await waitFor('metrics.listening', () => logs.find((l) => l.event === 'metrics.listening'), 120_000)).url);
  const vmDir = join(t.dir, 'vms', 'vm-ap');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-ap',
      disks: [
        { id: 'disk0', sizeBytes: 6 * MiB },
        { id: 'disk1', sizeBytes: 3 * MiB },
      ],
    },
    seededRng(5),
  );
  await t.stack.catalog.putVm({ vmId: 'vm-ap', host: 'esx-02', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-ap', vmIds: ['vm-ap'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
}, 300_000);

afterAll(async () => {
  await mover?.stop(true);
  receiver?.kill('SIGKILL');
  await t?.close();
});

describe.skipIf(!haveNotify)('a mover under systemd (fake NOTIFY_SOCKET) with its metrics endpoint', () => {
  it('says READY=1 with its slots and pings the watchdog about every half WATCHDOG_USEC', { timeout: 30_000 }, async () => {
    const ready = await waitFor('READY=1', () => datagrams.find((d) => d.text.startsWith('READY=1')));
    expect(ready.text).toMatch(/^READY=1\|STATUS=0 of 2 slot\(s\) in use$/);
    await new Promise((r) => setTimeout(r, 3000));
    const pings = datagrams.filter((d) => d.text.startsWith('WATCHDOG=1'));
    // Every 500 ms for 3 s; each carries the status.
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings.every((p) => /\|STATUS=\d of 2 slot\(s\) in use$/.test(p.text))).toBe(true);
    // Periodic at half the period; the median, not the maximum: a loaded CI machine may stall one tick.
    const gaps = pings
      .slice(1)
      .map((p, i) => p.at - pings[i]!.at)
      .sort((a, b) => a - b);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeGreaterThan(300);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeLessThan(1000);
  });

  it('after a backup and a deep verification, the scrape shows bytes, requests, retries, task durations, slots and outcomes', async () => {
    const before = await scrape();
    const arn = (w: string) => t.stack.endpoints.stateMachines[w]!;
    const b = await runExecution(t.sfn, arn('Backup'), { policyId: 'p-ap' }, { pollMs: 200 });
    expect(b.status, b.cause).toBe('SUCCEEDED');
    const run = JSON.parse(b.output!) as { vms: { backupId: string }[]; totals: { bytesRead: number; bytesStored: number } };
    const backupId = run.vms[0]!.backupId;
    const v = await runExecution(t.sfn, arn('DeepVerify'), { vmId: 'vm-ap', backupId, moverGroup: 'site-a' }, { pollMs: 200 });
    expect(v.status, v.cause).toBe('SUCCEEDED');
    const m = await scrape();

    expect(m.get(`lifeboat_mover_info{version="${String(logs.find((l) => l.version)?.version)}",name="appliance-1",group="site-a"}`)).toBe(1);
    expect(m.get('lifeboat_mover_slots')).toBe(2);
    expect(m.get('lifeboat_mover_slots_in_use')).toBe(0);
    // What the run says its disks read and stored (packs, indexes, manifests: sealed bytes); the mover's own small objects (VM config, progress, registration) come on top.
    expect(run.totals.bytesRead).toBeGreaterThan(0);
    expect(m.get('lifeboat_mover_source_read_bytes_total')).toBe(run.totals.bytesRead);
    const uploaded = m.get('lifeboat_mover_s3_uploaded_bytes_total')! - (before.get('lifeboat_mover_s3_uploaded_bytes_total') ?? 0);
    expect(uploaded, JSON.stringify(run.totals)).toBeGreaterThan(run.totals.bytesStored);
    expect(uploaded, JSON.stringify(run.totals)).toBeLessThan(run.totals.bytesStored + MiB);
    // The verification read every chunk back.
    expect(m.get('lifeboat_mover_s3_downloaded_bytes_total')!).toBeGreaterThan(run.totals.bytesStored * 0.9);
    expect(m.get('lifeboat_mover_s3_requests_total{op="put",outcome="ok"}')).toBeGreaterThan(
      before.get('lifeboat_mover_s3_requests_total{op="put",outcome="ok"}') ?? 0,
    );
    expect(m.get('lifeboat_mover_s3_requests_total{op="get",outcome="ok"}')).toBeGreaterThan(0);
    // No faults are injected, but a loaded machine stalls a request now and then: the counter says exactly what the retry log lines say.
    expect(sum(m, 'lifeboat_mover_s3_retries_total')).toBe(logs.filter((l) => l.event === 'storage.retry').length);
    // One DispatchDisk task per disk, one snapshot, one release, two deep-verify disk tasks: each in the histogram.
    expect(m.get('lifeboat_mover_tasks_total{task="dispatch",outcome="succeeded"}')).toBe(2);
    expect(m.get('lifeboat_mover_tasks_total{task="snapshot",outcome="succeeded"}')).toBe(1);
    expect(m.get('lifeboat_mover_tasks_total{task="deepVerifyDisk",outcome="succeeded"}')).toBe(2);
    expect(m.get('lifeboat_mover_task_duration_seconds_count{task="dispatch",outcome="succeeded"}')).toBe(2);
    expect(m.get('lifeboat_mover_task_duration_seconds_bucket{le="+Inf",task="dispatch",outcome="succeeded"}')).toBe(2);
    expect(m.get('lifeboat_mover_task_duration_seconds_sum{task="dispatch",outcome="succeeded"}')).toBeGreaterThan(0);
    expect(m.get('lifeboat_mover_process_resident_memory_bytes')).toBeGreaterThan(0);
    expect((await fetch(metricsUrl.replace('/metrics', '/other'))).status).toBe(404);
  }, 240_000);

  it('says STOPPING=1 when it drains, and exits 0', async () => {
    const code = await mover.stop();
    expect(code).toBe(0);
    await waitFor('STOPPING=1', () => datagrams.find((d) => d.text.startsWith('STOPPING=1')), 10_000);
  }, 30_000);
});

describe('bad metrics settings', () => {
  const run = async (address: string) => {
    const lines: MoverLogLine[] = [];
    const m = startMover(t.stack.endpoints, {
      name: `bad-metrics-${Math.random().toString(36).slice(2, 8)}`,
      group: 'site-a',
      env: { LIFEBOAT_METRICS_ADDRESS: address },
      onLog: (l) => lines.push(l),
    });
    // A mover takes seconds to load its modules, more on a loaded machine; a bad setting stops it before it polls.
    const code = await Promise.race([m.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 60_000))]);
    if (code === 'running') await m.stop(true);
    return {
      code,
      stderr: lines
        .filter((l) => l.event === 'stderr')
        .map((l) => l.line)
        .join('\n'),
    };
  };

  it('refuses an address that is not HOST:PORT, naming the setting and the fix (exit code 2)', async () => {
    const r = await run('localhost');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/LIFEBOAT_METRICS_ADDRESS=localhost is not HOST:PORT \(e\.g\. 127\.0\.0\.1:9464.*unset it to serve no metrics/);
  }, 90_000);

  it('refuses a port another process holds, saying each mover needs its own (exit code 2)', async () => {
    const { createServer } = await import('node:net');
    const busy = createServer();
    await new Promise<void>((ok) => busy.listen(0, '127.0.0.1', ok));
    try {
      const r = await run(`127.0.0.1:${(busy.address() as { port: number }).port}`);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/cannot listen \(EADDRINUSE\): another process has that port; pick another port in mover\.env/);
    } finally {
      busy.close();
    }
  }, 90_000);
});
