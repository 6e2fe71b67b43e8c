/**
 * The machine's own limits, measured beside the tools: how fast the image can be read,
 * and how fast the bytes a restore writes can be written, with `dd`. A tool's figure next
 * to these says how much of the machine it uses, not only how it compares with another tool.
 */
import { spawnSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface Ceiling {
  /** What was measured, as a command line. */
  command: string;
  bytes: number;
  seconds: number;
  mbPerSecond: number;
}

const BLOCK = 4 * 1024 * 1024;

function timedDd(args: string[], bytes: number): Ceiling {
  const started = performance.now();
  const r = spawnSync('dd', args, { encoding: 'utf8' });
  const seconds = (performance.now() - started) / 1000;
  if (r.status !== 0) throw new Error(`dd ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { command: `dd ${args.join(' ')}`, bytes, seconds, mbPerSecond: bytes / 1e6 / seconds };
}

/** Reading `path` front to back into /dev/null (through the page cache, as the tools read it). */
export function readCeiling(path: string, sizeBytes: number): Ceiling {
  return timedDd([`if=${path}`, 'of=/dev/null', `bs=${BLOCK}`], sizeBytes);
}

/**
 * Writing `bytes` (rounded up to 4 MiB) to a new file in `dir` and flushing it to storage
 * once at the end (conv=fsync), as a restore flushes before it reports done.
 */
export async function writeCeiling(dir: string, bytes: number): Promise<Ceiling> {
  const path = join(dir, 'write-ceiling.raw');
  const count = Math.max(1, Math.ceil(bytes / BLOCK));
  try {
    return timedDd(['if=/dev/zero', `of=${path}`, `bs=${BLOCK}`, `count=${count}`, 'conv=fsync'], count * BLOCK);
  } finally {
    await rm(path, { force: true });
  }
}
