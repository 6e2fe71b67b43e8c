/**
 * Starts mover processes against a running embedded stack: the real mover program
 * (mover/main.ts) as separate child processes, configured as an appliance would be.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { StackEndpoints } from './stack.ts';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';

const MOVER_MAIN = fileURLToPath(new URL('../mover/main.ts', import.meta.url));

export interface MoverLogLine {
  mover: string;
  level: string;
  event: string;
  [field: string]: unknown;
}

export interface MoverProcess {
  name: string;
  child: ChildProcess;
  exited: Promise<number | null>;
  /** SIGTERM (drain), or SIGKILL with `force`. */
  stop(force?: boolean): Promise<number | null>;
}

export function startMover(
  e: StackEndpoints,
  opts: { name: string; group: string; slots?: number; env?: Record<string, string>; onLog?: (l: MoverLogLine) => void },
): MoverProcess {
  const activityArn = e.activities[opts.group] ?? Object.values(e.activities).find((a) => a.endsWith(`-mover-${opts.group}`));
  if (!activityArn) throw new Error(`mover group '${opts.group}' has no activity; known: ${Object.keys(e.activities).join(', ')}`);
  const child = spawn(process.execPath, [...MOVER_NODE_FLAGS, MOVER_MAIN], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ...moverStartEnv(join(e.dataDir, 'movers', opts.name, 'compile-cache')),
      AWS_REGION: e.region,
      LIFEBOAT_ACTIVITY_ARN: activityArn,
      LIFEBOAT_SFN_ENDPOINT: e.sfn,
      LIFEBOAT_S3_ENDPOINT: e.s3,
      LIFEBOAT_KEY_FILE: e.keyFile,
      LIFEBOAT_MOVER_NAME: opts.name,
      LIFEBOAT_MOVER_SLOTS: String(opts.slots ?? 2),
      LIFEBOAT_MOVER_GROUP: opts.group,
      // Registers in the stack's repository; installs releases under the data folder.
      LIFEBOAT_BUCKET: e.bucket,
      LIFEBOAT_MOVER_HOME: join(e.dataDir, 'movers', opts.name),
      ...(existsSync(join(e.dataDir, 'release.pub')) ? { LIFEBOAT_RELEASE_PUBLIC_KEY_FILE: join(e.dataDir, 'release.pub') } : {}),
      ...opts.env,
    },
  });
  const lines = createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    try {
      opts.onLog?.(JSON.parse(line) as MoverLogLine);
    } catch {
      opts.onLog?.({ mover: opts.name, level: 'info', event: 'stdout', line });
    }
  });
  const errLines = createInterface({ input: child.stderr! });
  errLines.on('line', (line) => opts.onLog?.({ mover: opts.name, level: 'error', event: 'stderr', line }));
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  return {
    name: opts.name,
    child,
    exited,
    stop: async (force = false) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(force ? 'SIGKILL' : 'SIGTERM');
      return exited;
    },
  };
}
