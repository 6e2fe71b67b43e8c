/**
 * One embedded stack per data folder: a second `lifeboat up` on it would open the same
 * LevelDB (dynalite) and s3rver folders and die with their stack trace, or worse, share
 * them. The lock file names the running stack's pid; a lock whose process is gone (the
 * stack was killed) is taken over.
 */
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StackUnavailable } from '../contracts/errors.ts';

const LOCK = 'stack.lock';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // another user's process: alive
  }
}

/** Takes the data folder's lock (refused naming the running stack); returns its release. */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const file = join(dataDir, LOCK);
  const mine = JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() });
  try {
    await writeFile(file, mine, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const held = JSON.parse((await readFile(file, 'utf8').catch(() => '{}')) || '{}') as { pid?: number; startedAt?: string };
    if (typeof held.pid === 'number' && alive(held.pid)) throw new StackUnavailable(await alreadyRunning(dataDir, held.pid, held.startedAt));
    await writeFile(file, mine); // its process is gone: a stack that was killed
  }
  return async () => {
    const now = await readFile(file, 'utf8').catch(() => '');
    if (now === mine) await unlink(file).catch(() => {});
  };
}

async function alreadyRunning(dataDir: string, pid: number, startedAt: string | undefined): Promise<string> {
  const endpoints = join(dataDir, 'endpoints.json');
  const sfn = await readFile(endpoints, 'utf8').then(
    (t) => (JSON.parse(t) as { sfn?: string }).sfn,
    () => undefined,
  );
  return (
    `the embedded stack is already running on ${dataDir} (pid ${pid}${startedAt ? `, since ${startedAt}` : ''}${sfn ? `; Step Functions API ${sfn}` : ''}; endpoints in ${endpoints}): ` +
    `use that one, stop it first (Ctrl-C in its terminal, or kill ${pid}), or start another stack with --data-dir <another folder>`
  );
}
