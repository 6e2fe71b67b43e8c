/**
 * The mover's Prometheus metrics (prom-client) and the HTTP endpoint that serves them
 * (`LIFEBOAT_METRICS_ADDRESS`, off when unset). Names and labels are the appliance's
 * monitoring contract (mover/README.md, "Metrics"); labels stay few and bounded: a task
 * kind, an ObjectStore operation, an outcome, never a VM, key or bucket.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { GetOptions, ObjectStore, PutChecksum } from '../core/object-store.ts';
import type { RetryInfo } from '../core/store-wrappers.ts';
import type { Logger } from './worker.ts';

/** Task durations span a sub-second ReleaseSnapshot to a multi-hour disk transfer. */
const TASK_SECONDS_BUCKETS = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600];

export type TaskOutcome = 'succeeded' | 'failed';

export class MoverMetrics {
  readonly registry = new Registry();
  private readonly bytesRead: Counter;
  private readonly bytesUploaded: Counter;
  private readonly bytesDownloaded: Counter;
  private readonly requests: Counter<'op' | 'outcome'>;
  private readonly retries: Counter<'op'>;
  private readonly taskSeconds: Histogram<'task' | 'outcome'>;
  private readonly tasks: Counter<'task' | 'outcome'>;
  private readonly slotsInUse: Gauge;

  constructor(o: { version: string; name: string; group: string; slots: number }) {
    const registers = [this.registry];
    new Gauge({
      name: 'lifeboat_mover_info',
      help: 'Always 1; the labels say which mover this is and its version',
      labelNames: ['version', 'name', 'group'],
      registers,
    }).set({ version: o.version, name: o.name, group: o.group }, 1);
    new Gauge({ name: 'lifeboat_mover_slots', help: 'Tasks this mover runs at once (LIFEBOAT_MOVER_SLOTS)', registers }).set(o.slots);
    this.slotsInUse = new Gauge({ name: 'lifeboat_mover_slots_in_use', help: 'Tasks running now', registers });
    this.bytesRead = new Counter({
      name: 'lifeboat_mover_source_read_bytes_total',
      help: 'Bytes read from VM disks by backup (dispatch) tasks, counted as each task ends',
      registers,
    });
    this.bytesUploaded = new Counter({
      name: 'lifeboat_mover_s3_uploaded_bytes_total',
      help: 'Bytes of bodies the repository stores accepted (successful PUTs)',
      registers,
    });
    this.bytesDownloaded = new Counter({
      name: 'lifeboat_mover_s3_downloaded_bytes_total',
      help: 'Bytes of bodies read from the repository stores (successful GETs)',
      registers,
    });
    this.requests = new Counter({
      name: 'lifeboat_mover_s3_requests_total',
      help: 'Storage requests by operation (put, get, head, list) and outcome (ok, missing: the object does not exist, error), each attempt counted',
      labelNames: ['op', 'outcome'],
      registers,
    });
    this.retries = new Counter({
      name: 'lifeboat_mover_s3_retries_total',
      help: 'Storage requests tried again after a retryable failure (throttling, 5xx, a dropped or stalled connection)',
      labelNames: ['op'],
      registers,
    });
    this.taskSeconds = new Histogram({
      name: 'lifeboat_mover_task_duration_seconds',
      help: 'How long tasks ran, by task kind and outcome',
      labelNames: ['task', 'outcome'],
      buckets: TASK_SECONDS_BUCKETS,
      registers,
    });
    this.tasks = new Counter({
      name: 'lifeboat_mover_tasks_total',
      help: 'Tasks finished, by task kind and outcome',
      labelNames: ['task', 'outcome'],
      registers,
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'lifeboat_mover_' });
  }

  /** `withRetry`'s onRetry hook: one per retry. */
  readonly onRetry = (info: RetryInfo): void => {
    this.retries.inc({ op: info.op });
  };

  /** Runs one task, counting it as a slot in use, its duration and outcome, and the source bytes a backup task read. */
  async task<T>(input: unknown, run: () => Promise<T>): Promise<T> {
    const kind = taskKind(input);
    this.slotsInUse.inc();
    const end = this.taskSeconds.startTimer({ task: kind });
    let outcome: TaskOutcome = 'failed';
    try {
      const out = await run();
      outcome = 'succeeded';
      const read = (out as { stats?: { bytesRead?: unknown } } | null)?.stats?.bytesRead;
      if (typeof read === 'number' && read > 0) this.bytesRead.inc(read);
      return out;
    } finally {
      end({ outcome });
      this.tasks.inc({ task: kind, outcome });
      this.slotsInUse.dec();
    }
  }

  /** Wraps a store (innermost, under the retry wrapper) so each request attempt and its bytes are counted. */
  store(inner: ObjectStore): ObjectStore {
    const count = async <T>(op: RetryInfo['op'], fn: () => Promise<T>, missing: (v: T) => boolean): Promise<T> => {
      try {
        const v = await fn();
        this.requests.inc({ op, outcome: missing(v) ? 'missing' : 'ok' });
        return v;
      } catch (err) {
        this.requests.inc({ op, outcome: 'error' });
        throw err;
      }
    };
    return {
      put: async (key: string, body: Uint8Array, checksum?: PutChecksum) => {
        await count(
          'put',
          () => inner.put(key, body, checksum),
          () => false,
        );
        this.bytesUploaded.inc(body.byteLength);
      },
      get: async (key: string, opts?: GetOptions) => {
        const v = await count(
          'get',
          () => inner.get(key, opts),
          (b) => b === undefined,
        );
        if (v) this.bytesDownloaded.inc(v.byteLength);
        return v;
      },
      head: (key: string) =>
        count(
          'head',
          () => inner.head(key),
          (i) => i === undefined,
        ),
      list: (prefix: string) => {
        const requests = this.requests;
        return (async function* () {
          try {
            yield* inner.list(prefix);
            requests.inc({ op: 'list', outcome: 'ok' });
          } catch (err) {
            requests.inc({ op: 'list', outcome: 'error' });
            throw err;
          }
        })();
      },
    };
  }
}

/** A task input's kind (`dispatch`, `restoreDisk`, ...), or `unknown` for input that names none. */
function taskKind(input: unknown): string {
  const t = (input as { task?: unknown } | null)?.task;
  return typeof t === 'string' && /^[A-Za-z]{1,40}$/.test(t) ? t : 'unknown';
}

/** `LIFEBOAT_METRICS_ADDRESS`: `HOST:PORT` (`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464`; port 0: any free port). */
export function parseMetricsAddress(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(value.trim());
  const port = Number(m?.[3]);
  if (!m || port > 65535)
    throw new Error(
      `LIFEBOAT_METRICS_ADDRESS=${value} is not HOST:PORT (e.g. 127.0.0.1:9464; [::1]:9464; 0.0.0.0:9464 to be scraped from other machines): fix it in mover.env, or unset it to serve no metrics`,
    );
  return { host: m[1] ?? m[2]!, port };
}

/** Serves `GET /metrics` at `address`; resolves once listening, with the address it got (port 0: the port chosen). */
export async function serveMetrics(metrics: MoverMetrics, address: string, logger: Logger): Promise<{ url: string; close(): Promise<void> }> {
  const { host, port } = parseMetricsAddress(address);
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://mover').pathname;
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return void res.end('the mover serves GET /metrics only\n');
    }
    metrics.registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(text);
      },
      (err: Error) => {
        logger.error('metrics.failed', { error: err.message });
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`${err.message}\n`);
      },
    );
  });
  await new Promise<void>((ok, fail) =>
    server
      .once('error', (err: NodeJS.ErrnoException) => {
        fail(
          new Error(
            `LIFEBOAT_METRICS_ADDRESS=${address}: cannot listen (${err.code ?? err.message})${err.code === 'EADDRINUSE' ? ': another process has that port; pick another port in mover.env (each mover on a machine needs its own)' : ": check the address is one of this machine's"}`,
          ),
        );
      })
      .listen(port, host, ok),
  );
  const a = server.address() as AddressInfo;
  const url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics`;
  logger.info('metrics.listening', { url });
  server.unref();
  return {
    url,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
