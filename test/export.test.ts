/**
 * A backup's disk as a block source (mover/recovery/export.ts), on an in-memory
 * repository: reads at any offset equal the disk, holes come from the manifest, the
 * cache stays within its size, sequential reads fetch ahead and random ones do not,
 * and a damaged chunk fails the reads that need it (EIO, logged once) and no others.
 */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { GetOptions, ObjectStore, PutChecksum } from '../core/object-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import { StateFlag } from '../mover/nbd/protocol.ts';
import { ExportIoError } from '../mover/nbd/block-export.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { BackupDiskExport } from '../mover/recovery/export.ts';
import { runRecoveryTask } from '../mover/recovery/tasks.ts';
import { NbdClient } from '../mover/nbd/client.ts';
import { BadTaskInput } from '../contracts/errors.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prng } from './helpers/prng.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

class Counting implements ObjectStore {
  gets = 0;
  readonly inner = new MemoryObjectStore();
  put(key: string, body: Uint8Array, checksum?: PutChecksum) {
    return this.inner.put(key, body, checksum);
  }
  head(key: string) {
    return this.inner.head(key);
  }
  get(key: string, opts: GetOptions = {}) {
    this.gets++;
    return this.inner.get(key, opts);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
}

/** 96 chunks: every third all zero, the rest random or text, and a last chunk cut short. */
function disk(): Buffer {
  const rand = prng(3);
  const b = Buffer.alloc(96 * CHUNK - 1000);
  for (let c = 0; c < 96; c++) {
    if (c % 3 === 0) continue;
    const end = Math.min(b.length, (c + 1) * CHUNK);
    if (c % 3 === 1) for (let i = c * CHUNK; i < end; i++) b[i] = rand(256);
    else b.write('lifeboat export '.repeat(CHUNK / 16), c * CHUNK, end - c * CHUNK);
  }
  return b;
}

async function setup(o: { cacheMiB?: number; readAheadChunks?: number } = {}) {
  const store = new Counting();
  const data = disk();
  const reader = bufferReader(data);
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'vda', path: 'mem', sizeBytes: data.length },
    backupId: 'b1',
    chunkSize: CHUNK,
    parallelism: 2,
  });
  const logs: { event: string; fields?: Record<string, unknown> }[] = [];
  const logger = { info: () => {}, error: (event: string, fields?: Record<string, unknown>) => void logs.push({ event, ...(fields ? { fields } : {}) }) };
  const exp = await BackupDiskExport.open({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'vda', logger, ...o });
  store.gets = 0;
  return { store, data, exp, logs };
}

describe('backup disk export', () => {
  it('reads any offset and length equal to the disk, and reports all-zero chunks as holes', async () => {
    const { data, exp } = await setup();
    expect(exp.size).toBe(data.length);
    const rand = prng(5);
    for (let i = 0; i < 200; i++) {
      const offset = rand(data.length);
      const length = rand(Math.min(data.length - offset, 5 * CHUNK) + 1);
      expect((await exp.read(offset, length)).equals(data.subarray(offset, offset + length))).toBe(true);
    }
    const extents = await exp.allocation(0, data.length);
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(data.length);
    let at = 0;
    for (const e of extents) {
      for (let c = at; c < at + e.length; c += CHUNK) expect(e.flags === (StateFlag.HOLE | StateFlag.ZERO)).toBe(Math.floor(c / CHUNK) % 3 === 0);
      at += e.length;
    }
    // A range inside one chunk is clipped to the range.
    expect(await exp.allocation(10, 100)).toEqual([{ length: 100, flags: StateFlag.HOLE | StateFlag.ZERO }]);
    await expect(exp.read(data.length - 10, 11)).rejects.toThrow(RangeError);
  });

  it('keeps decoded chunks in a bounded cache: a second pass over a small range fetches nothing', async () => {
    const { store, exp } = await setup({ cacheMiB: 1, readAheadChunks: 0 });
    for (let c = 1; c < 12; c++) await exp.read(c * CHUNK, CHUNK);
    const gets = store.gets;
    for (let c = 1; c < 12; c++) await exp.read(c * CHUNK, CHUNK);
    expect(store.gets).toBe(gets);
    expect(exp.stats.cacheHits).toBeGreaterThan(0);
    // Reading the whole disk through a 1 MiB cache (16 chunks) fetches again what was evicted.
    for (let c = 0; c < 96; c++) await exp.read(c * CHUNK, Math.min(CHUNK, exp.size - c * CHUNK));
    const before = exp.stats.chunksFetched;
    await exp.read(1 * CHUNK, CHUNK);
    expect(exp.stats.chunksFetched).toBe(before + 1);
  });

  it('fetches ahead of sequential reads and not of random ones', async () => {
    const seq = await setup({ readAheadChunks: 8 });
    for (let c = 0; c < 40; c++) await seq.exp.read(c * CHUNK, CHUNK);
    expect(seq.exp.stats.chunksReadAhead).toBeGreaterThan(10);
    const rnd = await setup({ readAheadChunks: 8 });
    const rand = prng(11);
    for (let i = 0; i < 40; i++) await rnd.exp.read(rand(90) * CHUNK + 512, 4096);
    expect(rnd.exp.stats.chunksReadAhead).toBe(0);
  });

  it('fails with EIO only the reads that need a damaged chunk, naming backup, disk and chunk, logged once', async () => {
    const { store, data, exp, logs } = await setup({ readAheadChunks: 0 });
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest('b1', 'vda')))!, 'b1', 'vda', store);
    const id = m.chunks[4]!;
    const loc = chunkLocation(m, id);
    const pack = (await store.inner.get(loc.key))!;
    pack[loc.offset + 40]! ^= 0x01;
    await store.inner.put(loc.key, pack);
    for (let i = 0; i < 2; i++) {
      const err = await exp.read(4 * CHUNK + 100, 10).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ExportIoError);
      expect((err as ExportIoError).errno).toBe(5);
      expect((err as Error).message).toMatch(new RegExp(`backup b1 disk 'vda' chunk ${id} at offset ${4 * CHUNK} is damaged`));
    }
    // A read spanning it fails too; its neighbours read fine.
    await expect(exp.read(3 * CHUNK, 3 * CHUNK)).rejects.toThrow(/damaged/);
    expect((await exp.read(5 * CHUNK, CHUNK)).equals(data.subarray(5 * CHUNK, 6 * CHUNK))).toBe(true);
    expect((await exp.read(3 * CHUNK, CHUNK)).equals(data.subarray(3 * CHUNK, 4 * CHUNK))).toBe(true);
    const damaged = logs.filter((l) => l.event === 'export.chunk.damaged');
    expect(damaged).toHaveLength(1);
    expect(damaged[0]!.fields).toMatchObject({ backupId: 'b1', diskId: 'vda', chunk: id, offset: 4 * CHUNK });
  });

  it('names a missing manifest', async () => {
    await expect(BackupDiskExport.open({ repository: new Repository(new MemoryObjectStore(), keys), backupId: 'nope', diskId: 'vda' })).rejects.toThrow(
      /manifest .*nope.* is missing/,
    );
  });
});

describe('the mover task export', () => {
  it('refuses input that is not an export job, naming the fields', async () => {
    const { store } = await setup();
    const deps = { repository: async () => new Repository(store, keys), logger: { info: () => {}, error: () => {} }, parallelism: 2, workDir: tmpdir() };
    const ctx = { signal: new AbortController().signal, progress: () => {} };
    const err = await runRecoveryTask({ task: 'export', export: { backupId: 'b1', listen: { port: 99999 } } }, deps, ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BadTaskInput);
    expect((err as Error).message).toMatch(/exportId.*diskIds|diskIds.*exportId/s);
    expect((err as Error).message).toContain('listen');
  });

  it('serves the backup until the task is stopped, then answers what it served', async () => {
    const { store, data } = await setup();
    const dir = await mkdtemp(join(tmpdir(), 'export-task-'));
    let listening!: (uris: Record<string, string>) => void;
    const uris = new Promise<Record<string, string>>((ok) => (listening = ok));
    const logger = {
      info: (event: string, f?: Record<string, unknown>) => {
        if (event === 'export.listening') listening(f!.uris as Record<string, string>);
      },
      error: () => {},
    };
    const deps = { repository: async () => new Repository(store, keys), logger, parallelism: 2, workDir: dir };
    const abort = new AbortController();
    const task = {
      task: 'export',
      export: { exportId: 'e1', vmId: 'vm', backupId: 'b1', repository: { bucket: 'repo' }, diskIds: ['vda'], listen: { socket: join(dir, 'x.sock') } },
    };
    const done = runRecoveryTask(task, deps, { signal: abort.signal, progress: () => {} });
    const c = await NbdClient.connect((await uris).vda!);
    const b = Buffer.alloc(3 * CHUNK);
    await c.read(b, CHUNK, 3 * CHUNK);
    expect(b.equals(data.subarray(CHUNK, 4 * CHUNK))).toBe(true);
    abort.abort();
    expect(await done).toMatchObject({ exportId: 'e1', closed: 'aborted', bytesServed: 3 * CHUNK, connections: 1, damagedChunks: 0 });
    await c.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });
});

describe('lifeboat export --listen', () => {
  it('takes a unix socket path or [HOST]:PORT, and names what it cannot read', async () => {
    const { listenAddress } = await import('../cli/export.ts');
    expect(listenAddress('/run/x.sock')).toEqual({ socket: '/run/x.sock' });
    expect(listenAddress('unix:/tmp/a.sock')).toEqual({ socket: '/tmp/a.sock' });
    expect(listenAddress(':10809')).toEqual({ port: 10809 });
    expect(listenAddress('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(listenAddress('[::1]:10809')).toEqual({ host: '::1', port: 10809 });
    expect(() => listenAddress('localhost')).toThrow(/'localhost' is not an address to listen on/);
    expect(() => listenAddress(':70000')).toThrow(/not an address/);
  });
});
