/**
 * The bench's side of a Lifeboat mover process (bench/lifeboat-child.ts): started once per
 * round as a mover is started (mover/start-settings.ts), then given the round's jobs one at
 * a time. Each job's figures are the child's own (wall time, CPU of all its threads and
 * children, peak RSS from the job's start).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';

export interface JobFigures {
  /** Wall seconds of the job, measured in the mover from taking the job to its result. */
  seconds: number;
  cpuSeconds: number;
  peakRssMiB: number;
  /** The process's RSS when the job began: what its start and earlier jobs left resident. */
  rssAtStartMiB: number;
  /** The job's result (transfer stats, or the restore's), as JSON. */
  result: string;
}

export interface BenchMover {
  /** How long the process took to load its modules and keys, and its peak RSS by then. */
  readonly start: { seconds: number; peakRssMiB: number };
  job(phase: 'full' | 'incr' | 'restore', path: string): Promise<JobFigures>;
  /** Ends the process (stdin closed: it exits after its last job). */
  close(): Promise<void>;
}

const CHILD = fileURLToPath(new URL('./lifeboat-child.ts', import.meta.url));

export async function startBenchMover(o: { endpoint: string; bucket: string; keyFile: string; compileCacheDir: string }): Promise<BenchMover> {
  // BENCH_MOVER_NODE_FLAGS: more Node flags for the mover, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof' to see where its time goes.
  const extra = (process.env.BENCH_MOVER_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...MOVER_NODE_FLAGS, ...extra, CHILD, o.endpoint, o.bucket, o.keyFile], {
    env: { ...process.env, ...moverStartEnv(o.compileCacheDir) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  child.stdin.on('error', () => {}); // a mover that died is reported by its exit code and stderr
  const exited = new Promise<number | null>((ok) => child.on('close', ok));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (what: string): Promise<Record<string, unknown>> => {
    const line = await lines.next();
    if (line.done) throw new Error(`the bench mover exited (code ${await exited}) before ${what}:\n${stderr.slice(-3000)}`);
    return JSON.parse(line.value) as Record<string, unknown>;
  };
  const ready = (await next('it was ready')).ready as { seconds: number; peakRssKiB: number };
  return {
    start: { seconds: ready.seconds, peakRssMiB: ready.peakRssKiB / 1024 },
    async job(phase, path) {
      child.stdin.write(JSON.stringify({ phase, path }) + '\n');
      const r = await next(`finishing its ${phase} job`);
      return {
        seconds: r.seconds as number,
        cpuSeconds: r.cpuSeconds as number,
        peakRssMiB: (r.peakRssKiB as number) / 1024,
        rssAtStartMiB: (r.rssAtStartKiB as number) / 1024,
        result: JSON.stringify(r.stats),
      };
    },
    async close() {
      child.stdin.end();
      const code = await exited;
      if (code !== 0) throw new Error(`the bench mover exited with code ${code}:\n${stderr.slice(-3000)}`);
    },
  };
}
