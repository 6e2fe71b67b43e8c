/** User-facing errors name the thing, the cause and the next step: the command line and the mover's file errors. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalIoFailed } from '../contracts/errors.ts';
import { describeFailure } from '../cli/stack-client.ts';

const cli = (args: string[]) =>
  promisify(execFile)(process.execPath, ['cli/lifeboat.ts', ...args]).then(
    (r) => ({ code: 0, ...r }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-cli-errors-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  const port = (s.address() as { port: number }).port;
  await new Promise((ok) => s.close(ok));
  return port;
}

describe('the command line', () => {
  it('refuses verify --sample outside (0, 1] naming the value and the range, before reaching the stack', async () => {
    const r = await cli(['verify', '--vm', 'v', '--group', 'g', '--sample', '2', '--endpoints', join(dir, 'none.json')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("'2' is not a fraction of the chunks: give a number above 0 and at most 1");
    expect(r.stderr).not.toContain('version mismatch');
  });

  it('refuses failback of both a VM and a plan, a plan the configuration lacks, and a bad timeout, before reaching the stack', async () => {
    const none = join(dir, 'none.json');
    const both = await cli(['failback', 'web', '--plan', 'p', '--endpoints', none]);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toContain('name one VM (lifeboat failback VM) or a failover plan (--plan ID), not both');
    const plan = await cli(['failback', '--plan', 'no-such-plan', '--endpoints', none]);
    expect(plan.stderr).toContain("the configuration has no failover plan 'no-such-plan'");
    const timeout = await cli(['failback', 'web', '--shutdown-timeout', '2', '--endpoints', none]);
    expect(timeout.code).toBe(2);
    expect(timeout.stderr).toContain("--shutdown-timeout must be whole seconds from 5 to 3600, not '2'");
  });

  it('refuses restore --pool without --define, saying what it goes with, before reaching the stack', async () => {
    const r = await cli(['restore', '--vm', 'v', '--group', 'g', '--target', dir, '--pool', 'vmstore', '--endpoints', join(dir, 'none.json')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--pool, --name, --raw, --start, --boot-check, --agent and --instant go with --define <uri>');
  });

  it('refuses --resume and --move-bandwidth without --instant, and a bandwidth that is not one', async () => {
    const r = await cli([
      'restore',
      '--vm',
      'v',
      '--group',
      'g',
      '--target',
      dir,
      '--define',
      'qemu:///system',
      '--resume',
      '--endpoints',
      join(dir, 'none.json'),
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('--resume, --move-bandwidth, --move-stall and --move-after go with --instant');
    const bw = await cli([
      'restore',
      '--vm',
      'v',
      '--group',
      'g',
      '--target',
      dir,
      '--define',
      'qemu:///system',
      '--instant',
      '--move-bandwidth',
      'fast',
      '--endpoints',
      join(dir, 'none.json'),
    ]);
    expect(bw.code).not.toBe(0);
    expect(bw.stderr).toContain("'fast' is not a bandwidth");
  });

  it("refuses verify's restore test options without --restore-test, and a boot timeout out of range, before reaching the stack", async () => {
    const alone = await cli(['verify', '--vm', 'v', '--group', 'g', '--agent', '--endpoints', join(dir, 'none.json')]);
    expect(alone.code).not.toBe(0);
    expect(alone.stderr).toContain('--boot-check, --agent and --restore-timeout go with --restore-test');
    const timeout = await cli(['verify', '--vm', 'v', '--group', 'g', '--restore-test', '--restore-timeout', '2', '--endpoints', join(dir, 'none.json')]);
    expect(timeout.code).not.toBe(0);
    expect(timeout.stderr).toContain("'2' is not a boot timeout: give whole seconds from 5 to 3600");
  });

  it('says the embedded stack is not running, at which URL, and how to start it, when its endpoints refuse connections', async () => {
    const port = await deadPort();
    const url = `http://127.0.0.1:${port}`;
    const endpoints = join(dir, 'endpoints.json');
    await writeFile(
      endpoints,
      JSON.stringify({
        region: 'us-east-1',
        sfn: url,
        dynamodb: url,
        s3: url,
        table: 't',
        bucket: 'b',
        stateMachines: { Backup: 'arn:aws:states:us-east-1:000000000000:stateMachine:Backup' },
      }),
    );
    const r = await cli(['backup', 'p', '--endpoints', endpoints]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `lifeboat: the embedded stack is not running at ${url} (connection refused): start it with \`npx lifeboat up\` (or name the running stack's endpoints file with --endpoints, or a deployed stack with --stack)`,
    );
  });

  it('finds a refused connection inside an AggregateError (both loopback addresses refused)', () => {
    const refused = (address: string) => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED', address, port: 8083 });
    expect(describeFailure(new Error('wrapped', { cause: new AggregateError([refused('::1'), refused('127.0.0.1')]) }))).toMatch(
      /^the embedded stack is not running at http:\/\/::1:8083/,
    );
  });
});

describe('a mover task that fails on a local file', () => {
  it('names the operation, the path, what the errno means and what to do (not Mover.Internal: EEXIST)', async () => {
    const file = join(dir, 'a-file');
    await writeFile(file, 'x');
    const err = (await mkdir(file).catch((e: unknown) => LocalIoFailed.from(e))) as Error;
    expect(err.name).toBe('Mover.LocalIo');
    expect(err.message).toBe(
      `mkdir ${file} on the mover failed (EEXIST): a file or folder of that name is already there; choose another target path, or move it out of the way`,
    );
    // Anything else passes through unchanged.
    const other = new Error('x');
    expect(LocalIoFailed.from(other)).toBe(other);
  });
});
