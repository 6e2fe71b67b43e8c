/** The embedded stack keeps its state in its data folder across restarts, and its endpoints' URLs. */
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { runExecution, sfnClient } from '../local/client.ts';
import { EmbeddedStack, repositoryStore, type StackEndpoints } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';

/** Waits until `ok()` holds, polling; fails naming `what` after `ms`. */
async function until(ok: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const masterKey = async (e: StackEndpoints) => (await stackRepositoryKeys(e)).masterKey;

it('keeps the catalog, the repository key and execution history across a restart', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  const first = await EmbeddedStack.start({ dataDir: dir });
  let key: Buffer;
  let executionArn: string | undefined;
  try {
    await first.catalog.putPolicy({ policyId: 'kept', vmIds: [], bucket: first.endpoints.bucket, chunkSize: 1 << 20, slotLimit: 1 });
    key = await masterKey(first.endpoints);
    const d = await runExecution(sfnClient(first.endpoints), first.endpoints.backupStateMachineArn, { policyId: 'missing' });
    expect(d.status).toBe('FAILED');
    executionArn = d.executionArn;
  } finally {
    await first.stop();
  }

  const second = await EmbeddedStack.start({ dataDir: dir });
  try {
    expect(await second.catalog.getPolicy('kept')).toMatchObject({ policyId: 'kept', slotLimit: 1 });
    expect((await masterKey(second.endpoints)).equals(key)).toBe(true);
    const listed = await sfnClient(second.endpoints).send(new ListExecutionsCommand({ stateMachineArn: second.endpoints.backupStateMachineArn }));
    expect(listed.executions?.map((x) => [x.executionArn, x.status])).toContainEqual([executionArn, 'FAILED']);
  } finally {
    await second.stop();
  }
});

it('serves a repository on another endpoint at the same URL after a restart, and on a new port only when its old one is taken', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  const urlOf = (s: EmbeddedStack): string => s.endpoints.repositories.dr!.endpoint!.url!;
  const first = await EmbeddedStack.start({ dataDir: dir });
  const url = urlOf(first);
  try {
    // The catalog keeps the URL (the policy's DR repository); an object written there must be found again.
    expect((await first.catalog.getPolicy('nightly'))?.replicateTo?.endpoint?.url).toBe(url);
    await repositoryStore(first.endpoints, 'dr').put('movers/marker.json', Buffer.from('{}'));
  } finally {
    await first.stop();
  }
  expect(JSON.parse(await readFile(join(dir, 'endpoint-ports.json'), 'utf8'))).toEqual({ 's3-dr': Number(new URL(url).port) });

  const second = await EmbeddedStack.start({ dataDir: dir });
  try {
    expect(urlOf(second)).toBe(url);
    expect((await second.catalog.getPolicy('nightly'))?.replicateTo?.endpoint?.url).toBe(url);
    expect((await repositoryStore(second.endpoints, 'dr').get('movers/marker.json'))?.toString()).toBe('{}');
  } finally {
    await second.stop();
  }

  // Another process took the port meanwhile: a fresh one, remembered from now on.
  const squatter = net.createServer();
  await new Promise<void>((ok) => squatter.listen(Number(new URL(url).port), '127.0.0.1', ok));
  try {
    const third = await EmbeddedStack.start({ dataDir: dir });
    try {
      expect(urlOf(third)).not.toBe(url);
      expect((await third.catalog.getPolicy('nightly'))?.replicateTo?.endpoint?.url).toBe(urlOf(third));
      expect((await repositoryStore(third.endpoints, 'dr').get('movers/marker.json'))?.toString()).toBe('{}');
      expect(JSON.parse(await readFile(join(dir, 'endpoint-ports.json'), 'utf8'))).toEqual({ 's3-dr': Number(new URL(urlOf(third)).port) });
    } finally {
      await third.stop();
    }
  } finally {
    await new Promise((ok) => squatter.close(ok));
  }
});

it('refuses a second stack on the same data folder, naming the running one; takes over the lock of one that was killed', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  const first = await EmbeddedStack.start({ dataDir: dir });
  try {
    await expect(EmbeddedStack.start({ dataDir: dir })).rejects.toMatchObject({
      name: 'Stack.Unavailable',
      message: expect.stringMatching(
        new RegExp(`^the embedded stack is already running on ${dir} \\(pid ${process.pid}, since .*\\): use that one, stop it first .*--data-dir`),
      ),
    });
  } finally {
    await first.stop();
  }
  // A stack killed with -9 leaves its lock behind: a pid that is gone does not hold the folder.
  await writeFile(join(dir, 'stack.lock'), JSON.stringify({ pid: 2 ** 22 + 1, startedAt: 'then' }));
  const second = await EmbeddedStack.start({ dataDir: dir });
  await second.stop();
});

it('names the key file when it does not open the repository (replaced), instead of a stack trace', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  await (await EmbeddedStack.start({ dataDir: dir })).stop();
  await writeFile(join(dir, 'repository.keyfile'), `${randomBytes(32).toString('hex')}\n`);
  await expect(EmbeddedStack.start({ dataDir: dir })).rejects.toMatchObject({
    name: 'Stack.Unavailable',
    message: expect.stringContaining(
      `does not unwrap with key file ${join(dir, 'repository.keyfile')}: the file was replaced, or belongs to another repository; put back the key file`,
    ),
  });
  // The failed start gave its lock back.
  await expect(readFile(join(dir, 'stack.lock'))).rejects.toMatchObject({ code: 'ENOENT' });
});

it('says at once, naming the file, when the key file is replaced while the stack runs, and when it is put back', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-stack-'));
  dirs.push(dir);
  const seen: (string | undefined)[] = [];
  const stack = await EmbeddedStack.start({ dataDir: dir, keyFileCheckMs: 100, onKeyFile: (p) => seen.push(p && `${p.name}: ${p.message}`) });
  try {
    const keyFile = join(dir, 'repository.keyfile');
    const original = await readFile(keyFile);
    await writeFile(keyFile, `${randomBytes(32).toString('hex')}\n`);
    await until(() => seen.length === 1, 10_000, 'a word about the replaced key file');
    expect(seen[0]).toMatch(
      new RegExp(
        `^Stack.Unavailable: the repository key file ${keyFile} changed while the stack runs, and .*does not unwrap with key file .*put back the original key file now`,
      ),
    );
    await writeFile(keyFile, original);
    await until(() => seen.length === 2, 10_000, 'a word about the key file put back');
    expect(seen[1]).toBeUndefined();
  } finally {
    await stack.stop();
  }
});
