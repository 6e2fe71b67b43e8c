/**
 * A backup served over NBD, against the real tools: a VM disk is backed up by the Backup
 * workflow on the embedded stack (a real mover process, s3rver), then the `export` task
 * serves it from the repository. nbdcopy copies it byte-identical, `nbdinfo --map` shows
 * the holes the manifest has, `qemu-img compare` passes, random reads through Lifeboat's
 * own NBD client match, connections within the cap work and the next is refused, the
 * idle timeout ends the task, and a byte flipped in a pack file gives EIO for that range
 * only, logged with backup, disk and chunk.
 */
import type { Repository } from '../repository/open.ts';
import { execFile, spawnSync } from 'node:child_process';
import { readdir, readFile, rm, writeFile, open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportJob, type ExportResult } from '../contracts/export-job.ts';
import { objectKeys, type RepositoryKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { StartExecutionCommand, StopExecutionCommand } from '@aws-sdk/client-sfn';
import { readEndpoint, waitForEndpoint } from '../cli/export-endpoint.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { openRepository } from '../local/stack.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { NbdClient } from '../mover/nbd/client.ts';
import { runExportTask } from '../mover/recovery/export-task.ts';
import { prng } from './helpers/prng.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 48 * MiB + 64 * 1024;
const tools = ['nbdcopy', 'nbdinfo', 'qemu-img'];
const missing = tools.filter((x) => spawnSync(x, ['--version']).status !== 0);
if (missing.length > 0 && process.env.CI) throw new Error(`CI must install ${missing.join(', ')} (Debian: qemu-utils libnbd-bin)`);

let t: TestStack;
let repository: Repository;
let store: ObjectStore;
let keys: RepositoryKeys;
let backupId = '';
let source: Buffer;
let vmDir = '';
const logs: { event: string; fields?: Record<string, unknown> }[] = [];
const logger = {
  info: (event: string, fields?: Record<string, unknown>) => void logs.push({ event, ...(fields ? { fields } : {}) }),
  error: (event: string, fields?: Record<string, unknown>) => void logs.push({ event, ...(fields ? { fields } : {}) }),
};

/** 1 MiB chunks: all zero (holes), random, text, and half zero (not a hole), in turn; the last one short. */
function image(): Buffer {
  const rand = prng(0x1b);
  const b = Buffer.alloc(SIZE);
  for (let c = 0; c * MiB < SIZE; c++) {
    const start = c * MiB;
    const end = Math.min(SIZE, start + MiB);
    if (c % 4 === 1) for (let i = start; i < end; i += 4) b.writeUInt32BE(rand(2 ** 32) >>> 0, i);
    if (c % 4 === 2) b.write('a backup served over NBD\n'.repeat(MiB / 16), start, end - start);
    if (c % 4 === 3) for (let i = start + (end - start) / 2; i < end; i++) b[i] = rand(256);
  }
  return b;
}

/** Starts the export task; resolves its URI for `vda` once it listens. */
async function startExport(over: Record<string, unknown> = {}) {
  const abort = new AbortController();
  let progress = 0;
  const socket = join(t.dir, `export-${Math.random().toString(36).slice(2)}.sock`);
  const job = exportJob.parse({
    exportId: 'x1',
    vmId: 'vm-x',
    backupId,
    repository: { bucket: t.stack.endpoints.bucket },
    diskIds: ['vda'],
    listen: { socket },
    ...over,
  });
  let listening!: (uris: Record<string, string>) => void;
  const uris = new Promise<Record<string, string>>((ok) => (listening = ok));
  const done: Promise<ExportResult> = runExportTask(job, {
    repository,
    logger,
    signal: abort.signal,
    progress: () => progress++,
    progressMs: 100,
    onListening: listening,
  });
  done.catch(() => {});
  const uri = (
    await Promise.race([
      uris,
      done.then(() => {
        throw new Error('export ended before listening');
      }),
    ])
  )['vda']!;
  return { uri, socket, abort, done, progressCount: () => progress };
}

beforeAll(async () => {
  t = await startTestStack({ movers: 1 });
  vmDir = join(t.dir, 'vms', 'vm-x');
  await createVmFolder(vmDir, { name: 'vm-x', disks: [{ id: 'vda', sizeBytes: SIZE }] }, seededRng(3));
  source = image();
  await writeFile(join(vmDir, 'vda.raw'), source);
  await t.stack.catalog.putVm({ vmId: 'vm-x', host: 'esx-01', source: vmDir });
  await t.stack.catalog.putPolicy({ policyId: 'p-x', vmIds: ['vm-x'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-x' });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup failed: ${d.error} ${d.cause}`);
  backupId = (await t.stack.catalog.latestCommitted('vm-x'))!.backupId;
  repository = await openRepository(t.stack.endpoints);
  store = repository.store;
  keys = (await stackRepositoryKeys(t.stack.endpoints)).keys;
}, 600_000);
afterAll(async () => {
  await t?.close();
});

describe.skipIf(missing.length > 0)('NBD export of a backup, with real NBD tools', () => {
  it('nbdcopy copies it byte-identical, nbdinfo --map shows the holes, qemu-img compare passes, random reads match', async () => {
    const x = await startExport({ idleTimeoutSeconds: 600, maxConnections: 6 });
    const out = join(t.dir, 'out.raw');
    await run('nbdcopy', [x.uri, out]);
    expect((await readFile(out)).equals(source)).toBe(true);
    await rm(out);

    const { stdout } = await run('nbdinfo', ['--map', x.uri]);
    const map = stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
    // Expected: chunk by chunk, hole+zero (3) for the all-zero chunks, data (0) otherwise, merged.
    const want: [number, number, number][] = [];
    for (let c = 0; c * MiB < SIZE; c++) {
      const len = Math.min(MiB, SIZE - c * MiB);
      const type = c % 4 === 0 ? 3 : 0;
      const last = want.at(-1);
      if (last && last[2] === type) last[1] += len;
      else want.push([c * MiB, len, type]);
    }
    expect(map).toEqual(want);

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(vmDir, 'vda.raw'), x.uri]);
    expect(cmp.stdout).toContain('Images are identical');

    const c = await NbdClient.connect(x.uri);
    const rand = prng(42);
    for (let i = 0; i < 100; i++) {
      const offset = rand(SIZE / 512) * 512;
      const length = Math.min(SIZE - offset, 512 * (1 + rand(4096)));
      const buf = Buffer.alloc(length);
      await c.read(buf, offset, length);
      expect(buf.equals(source.subarray(offset, offset + length))).toBe(true);
    }
    await c.close();

    x.abort.abort();
    const r = await x.done;
    expect(r).toMatchObject({ closed: 'aborted', damagedChunks: 0 });
    // nbdcopy, nbdinfo, qemu-img and the client all read through it.
    expect(r.bytesServed).toBeGreaterThanOrEqual(2 * SIZE);
    expect(r.connections).toBeGreaterThanOrEqual(4);
    expect(logs.some((l) => l.event === 'export.listening' && (l.fields?.uris as Record<string, string>)?.vda === x.uri)).toBe(true);
  });

  it('serves as many connections as its cap at once and refuses the next cleanly', async () => {
    const x = await startExport({ maxConnections: 6 });
    const clients = await Promise.all(Array.from({ length: 6 }, () => NbdClient.connect(x.uri)));
    await expect(NbdClient.connect(x.uri, { timeoutMs: 10_000 })).rejects.toThrow(/NBD_REP_ERR_POLICY.*at most 6/);
    const bufs = await Promise.all(
      clients.map(async (c, i) => {
        const b = Buffer.alloc(4 * MiB);
        await c.read(b, i * 8 * MiB, 4 * MiB);
        return b;
      }),
    );
    bufs.forEach((b, i) => expect(b.equals(source.subarray(i * 8 * MiB, i * 8 * MiB + 4 * MiB))).toBe(true));
    await Promise.all(clients.map((c) => c.close()));
    x.abort.abort();
    expect((await x.done).refused).toBe(1);
  });

  it('closes itself after the idle timeout once its last client left, heartbeating while open', async () => {
    const x = await startExport({ idleTimeoutSeconds: 1 });
    const c = await NbdClient.connect(x.uri);
    const b = Buffer.alloc(MiB);
    await c.read(b, MiB, MiB);
    await c.close();
    const r = await x.done;
    expect(r).toMatchObject({ closed: 'idle', bytesServed: MiB });
    expect(x.progressCount()).toBeGreaterThan(0);
    await expect(NbdClient.connect(x.uri, { timeoutMs: 2000 })).rejects.toThrow();
  });

  it("the Export workflow serves it from a mover of the VM's site: where to connect is in its endpoint record while it runs; a stop closes it and its port", async () => {
    const exportId = `wf-stop-${process.pid}`;
    const { executionArn } = await t.sfn.send(
      new StartExecutionCommand({
        stateMachineArn: t.stack.endpoints.stateMachines.Export!,
        name: exportId,
        input: JSON.stringify({ vmId: 'vm-x', idleTimeoutSeconds: 600 }),
      }),
    );
    const at = await waitForEndpoint({ sfn: t.sfn, executionArn: executionArn!, store, exportId, ready: (r) => r.state === 'listening', what: 'the export' });
    expect(at).toMatchObject({ exportId, kind: 'export', vmId: 'vm-x', backupId, state: 'listening' });
    // An ephemeral port on the mover's loopback (the default), named in the record.
    expect(at.uris.vda).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/vda$/);
    const out = join(t.dir, 'wf.raw');
    await run('nbdcopy', [at.uris.vda!, out]);
    expect((await readFile(out)).equals(source)).toBe(true);
    await rm(out);

    await t.sfn.send(new StopExecutionCommand({ executionArn: executionArn!, cause: 'test stops it' }));
    const closed = await pollFor(async () => {
      const r = await readEndpoint(store, exportId);
      return r?.state === 'closed' ? r : undefined;
    }, 30_000);
    expect(closed.closed).toBe('aborted');
    await expect(NbdClient.connect(at.uris.vda!, { timeoutMs: 2000 })).rejects.toThrow();
  }, 120_000);

  it('the Export workflow ends by itself after the idle timeout, answering what it served; a VM without backups fails naming it', async () => {
    const exportId = `wf-idle-${process.pid}`;
    const { executionArn } = await t.sfn.send(
      new StartExecutionCommand({
        stateMachineArn: t.stack.endpoints.stateMachines.Export!,
        name: exportId,
        input: JSON.stringify({ vmId: 'vm-x', idleTimeoutSeconds: 2 }),
      }),
    );
    const at = await waitForEndpoint({ sfn: t.sfn, executionArn: executionArn!, store, exportId, ready: (r) => r.state === 'listening', what: 'the export' });
    const c = await NbdClient.connect(at.uris.vda!);
    await c.read(Buffer.alloc(MiB), 0, MiB);
    await c.close();
    const d = await waitForExecution(t.sfn, executionArn!);
    expect(d.status, d.cause).toBe('SUCCEEDED');
    expect(JSON.parse(d.output!) as ExportResult).toMatchObject({ exportId, backupId, closed: 'idle', bytesServed: MiB, connections: 1 });
    expect((await readEndpoint(store, exportId))?.state).toBe('closed');

    const bad = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Export!, { vmId: 'vm-nobody' });
    expect(bad.status).toBe('FAILED');
    expect(bad.cause).toMatch(/VM 'vm-nobody' is not in the inventory/);
    const noBackup = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Export!, { vmId: 'vm-x', backupId: 'b-none' });
    expect(noBackup.cause).toMatch(/VM 'vm-x' has no backup 'b-none'/);
  }, 120_000);

  it('a byte flipped in a pack gives EIO for the reads of that chunk only, logged with backup, disk and chunk', async () => {
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest(backupId, 'vda')))!, backupId, 'vda', store);
    const index = 5; // a random-data chunk
    const id = m.chunks[index]!;
    const loc = chunkLocation(m, id);
    const packId = loc.pack!.id;
    const file = await findFile(join(t.dir, 'data', 's3'), `${packId}._S3rver_object`);
    const fh = await openFile(file, 'r+');
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, loc.offset + 100);
    one[0]! ^= 0x40;
    await fh.write(one, 0, 1, loc.offset + 100);
    await fh.close();

    const x = await startExport({ readAheadChunks: 0 });
    const c = await NbdClient.connect(x.uri);
    await expect(c.read(Buffer.alloc(4096), index * MiB + 8192, 4096)).rejects.toThrow(/EIO.*chunk .* is damaged/);
    // The chunks around it read fine, on the same connection.
    for (const at of [(index - 1) * MiB, (index + 1) * MiB]) {
      const b = Buffer.alloc(MiB);
      await c.read(b, at, MiB);
      expect(b.equals(source.subarray(at, at + MiB))).toBe(true);
    }
    await c.close();
    // nbdcopy of the whole disk fails rather than writing wrong bytes.
    await expect(run('nbdcopy', [x.uri, join(t.dir, 'bad.raw')])).rejects.toThrow();
    x.abort.abort();
    expect((await x.done).damagedChunks).toBe(1);
    const line = logs.find((l) => l.event === 'export.chunk.damaged');
    expect(line?.fields).toMatchObject({ backupId, diskId: 'vda', chunk: id, offset: index * MiB });
  });
});

async function pollFor<T>(f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function findFile(dir: string, name: string): Promise<string> {
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name === name) return join(e.parentPath, e.name);
  }
  throw new Error(`no ${name} under ${dir}`);
}
