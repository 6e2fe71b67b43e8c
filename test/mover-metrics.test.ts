/** The mover's metrics wrapper and its systemd notifier, on their edges (the whole path: test/mover-appliance.e2e.test.ts). */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { MoverMetrics, parseMetricsAddress } from '../mover/metrics.ts';
import { SystemdNotifier } from '../mover/systemd-notify.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const value = async (m: MoverMetrics, line: string) => {
  const text = await m.registry.metrics();
  const found = text.split('\n').find((l) => l.startsWith(`${line} `));
  return found ? Number(found.slice(line.length + 1)) : undefined;
};

describe('MoverMetrics', () => {
  it('counts each request attempt by operation and outcome, and the bytes of successful PUTs and GETs', async () => {
    const m = new MoverMetrics({ version: '1.2.3', name: 'm1', group: 'g', slots: 3 });
    const inner = new MemoryObjectStore();
    let failNext = true;
    const flaky: ObjectStore = {
      ...inner,
      put: async (k, b) => {
        if (failNext) {
          failNext = false;
          throw Object.assign(new Error('reset'), { name: 'ECONNRESET' });
        }
        return inner.put(k, b);
      },
      get: (k, o) => inner.get(k, o),
      head: (k) => inner.head(k),
      list: (p) => inner.list(p),
    };
    const store = m.store(flaky);
    await expect(store.put('a', Buffer.alloc(10))).rejects.toThrow('reset');
    await store.put('a', Buffer.alloc(10));
    expect((await store.get('a'))?.length).toBe(10);
    expect(await store.get('missing')).toBeUndefined();
    expect(await store.head('missing')).toBeUndefined();
    const listed = [];
    for await (const k of store.list('')) listed.push(k.key);
    expect(listed).toEqual(['a']);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="put",outcome="error"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="put",outcome="ok"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="get",outcome="ok"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="get",outcome="missing"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="head",outcome="missing"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_requests_total{op="list",outcome="ok"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_s3_uploaded_bytes_total')).toBe(10); // the failed PUT's body is not counted
    expect(await value(m, 'lifeboat_mover_s3_downloaded_bytes_total')).toBe(10);
    m.onRetry({ op: 'put', key: 'a', attempt: 1, delayMs: 5, error: new Error('x') });
    expect(await value(m, 'lifeboat_mover_s3_retries_total{op="put"}')).toBe(1);
  });

  it('counts a task as a slot while it runs, then its duration and outcome; a task kind that is not a word is "unknown"', async () => {
    const m = new MoverMetrics({ version: '1.2.3', name: 'm1', group: 'g', slots: 3 });
    let inUse: number | undefined;
    await m.task({ task: 'dispatch' }, async () => {
      inUse = await value(m, 'lifeboat_mover_slots_in_use');
      return { stats: { bytesRead: 4096 } };
    });
    expect(inUse).toBe(1);
    await expect(m.task({ task: 'x"}\nevil' }, () => Promise.reject(new Error('no')))).rejects.toThrow('no');
    expect(await value(m, 'lifeboat_mover_slots_in_use')).toBe(0);
    expect(await value(m, 'lifeboat_mover_slots')).toBe(3);
    expect(await value(m, 'lifeboat_mover_source_read_bytes_total')).toBe(4096);
    expect(await value(m, 'lifeboat_mover_tasks_total{task="dispatch",outcome="succeeded"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_tasks_total{task="unknown",outcome="failed"}')).toBe(1);
    expect(await value(m, 'lifeboat_mover_task_duration_seconds_count{task="dispatch",outcome="succeeded"}')).toBe(1);
  });
});

describe('parseMetricsAddress', () => {
  it('takes HOST:PORT, [IPv6]:PORT and port 0; refuses the rest naming the setting', () => {
    expect(parseMetricsAddress('127.0.0.1:9464')).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(parseMetricsAddress('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseMetricsAddress('localhost:9464')).toEqual({ host: 'localhost', port: 9464 });
    for (const bad of ['9464', ':9464', '127.0.0.1:70000', '127.0.0.1:', 'a b:1'])
      expect(() => parseMetricsAddress(bad), bad).toThrow(/^LIFEBOAT_METRICS_ADDRESS=.* is not HOST:PORT/);
  });
});

describe('SystemdNotifier', () => {
  it('is off without NOTIFY_SOCKET, and pings only when WATCHDOG_PID is unset or this process', () => {
    const logger = { info: () => {}, error: () => {} };
    expect(SystemdNotifier.fromEnv({ env: {}, logger })).toBeUndefined();
    const n = (env: NodeJS.ProcessEnv) => SystemdNotifier.fromEnv({ env: { NOTIFY_SOCKET: '/x', ...env }, logger, pid: 42 })!.watchdogIntervalMs();
    expect(n({ WATCHDOG_USEC: '60000000' })).toBe(30_000);
    expect(n({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: '42' })).toBe(30_000);
    expect(n({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: '7' })).toBeUndefined();
    expect(n({})).toBeUndefined();
  });

  it('a socket nobody reads (the manager gone) is logged once, never thrown, and the recovery is logged', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-notify-'));
    dirs.push(dir);
    const lines: { level: string; event: string; fields?: Record<string, unknown> }[] = [];
    const logger = {
      info: (event: string, fields?: Record<string, unknown>) => lines.push({ level: 'info', event, ...(fields ? { fields } : {}) }),
      error: (event: string, fields?: Record<string, unknown>) => lines.push({ level: 'error', event, ...(fields ? { fields } : {}) }),
    };
    const n = SystemdNotifier.fromEnv({ env: { ...process.env, NOTIFY_SOCKET: join(dir, 'none.sock') }, logger, program: 'systemd-notify' })!;
    await n.send({ WATCHDOG: '1' });
    await n.send({ WATCHDOG: '1' });
    expect(lines.filter((l) => l.event === 'systemd.notify_failed')).toHaveLength(1);
    expect(String(lines[0]!.fields?.next)).toMatch(/unset NOTIFY_SOCKET/);
    // A sender that fails while a flag file exists, then works again.
    const flag = join(dir, 'down');
    const program = join(dir, 'notify.sh');
    await writeFile(flag, '');
    await writeFile(program, `#!/bin/sh\n[ -e ${flag} ] && exit 1\nexit 0\n`, { mode: 0o755 });
    const flaky = SystemdNotifier.fromEnv({ env: { NOTIFY_SOCKET: '/x' }, logger, program })!;
    await flaky.send({ WATCHDOG: '1' });
    await rm(flag);
    await flaky.send({ WATCHDOG: '1' });
    expect(lines.map((l) => l.event)).toEqual(['systemd.notify_failed', 'systemd.notify_failed', 'systemd.notify_recovered']);
  });
});
