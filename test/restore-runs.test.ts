/**
 * A restore reads runs of neighbouring chunks of a pack with one range GET each
 * (mover/pipeline/read-runs.ts, restore-disk.ts): the restored image is the source for
 * any layout of chunks in packs, a damaged chunk in the middle of a run still comes from
 * another copy, a connection cut in the middle of a run's body is retried, and the bytes
 * in flight stay within the restore's budget.
 */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys, encodeManifest, objectKeys, seal, chunkId, sealedCapacity, type Manifest } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { GetOptions, ObjectStore } from '../core/object-store.ts';
import { newPackId, putIndexObject, type ChunkLocation, type PackContents } from '../repository/packs.ts';
import { packTrailer } from '../repository/pack-trailer.ts';
import { packedManifest } from './helpers/manifest.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { withRetry } from '../core/store-wrappers.ts';
import { startLocalS3 } from '../local/s3-server.ts';
import { ChunkPool } from '../mover/pipeline/chunk-pool.ts';
import { manifestEntries, planRuns, planWindows, writeExtents, type ManifestEntry, type RunChunk, type StoredEntry } from '../repository/read-runs.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { startFaultProxy } from './helpers/fault-proxy.ts';
import { prng } from './helpers/prng.ts';

const keys = deriveKeys(randomBytes(32));
let pool: ChunkPool;
let dir: string;
beforeAll(async () => {
  pool = new ChunkPool(1);
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-runs-'));
});
afterAll(async () => {
  await pool.close();
  await rm(dir, { recursive: true, force: true });
});

/** A store that counts GETs by key and the range bytes in flight at once. */
class WatchedStore implements ObjectStore {
  readonly gets: { key: string; length?: number }[] = [];
  inFlight = 0;
  peakInFlight = 0;
  peakGets = 0;
  private open = 0;
  readonly inner: ObjectStore;
  constructor(inner: ObjectStore) {
    this.inner = inner;
  }
  put = (key: string, body: Uint8Array) => this.inner.put(key, body);
  head = (key: string) => this.inner.head(key);
  list = (prefix: string) => this.inner.list(prefix);
  async get(key: string, o?: GetOptions) {
    const bytes = o?.range?.length ?? 0;
    this.gets.push({ key, ...(o?.range ? { length: o.range.length } : {}) });
    this.inFlight += bytes;
    this.open++;
    this.peakInFlight = Math.max(this.peakInFlight, this.inFlight);
    this.peakGets = Math.max(this.peakGets, this.open);
    try {
      // A turn of the event loop, so GETs overlap as they do over a network.
      await new Promise((ok) => setImmediate(ok));
      return await this.inner.get(key, o);
    } finally {
      this.inFlight -= bytes;
      this.open--;
    }
  }
}

interface Layout {
  /** Chunk contents in disk order (null: zeros). */
  chunks: (Buffer | null)[];
  sizeBytes: number;
  chunkSize: number;
  /** Packs, each a list of envelopes: a chunk's content, or junk no manifest references. */
  packs: ({ content: Buffer } | { junk: Buffer })[][];
}

/** Stores `layout` as a format-2 backup 'b'/'d' (packs with trailers, an index object, the manifest); the image it restores to. */
async function storeBackup(
  store: ObjectStore,
  l: Layout,
  locateIn?: (id: string, copies: ChunkLocation[]) => ChunkLocation,
): Promise<{ image: Buffer; manifest: Manifest }> {
  const copies = new Map<string, ChunkLocation[]>();
  const contents: PackContents[] = [];
  for (const pack of l.packs) {
    const id = newPackId();
    const parts: Buffer[] = [];
    const entries: PackContents['chunks'] = [];
    let at = 0;
    for (const e of pack) {
      const plain = 'content' in e ? e.content : e.junk;
      const cid = chunkId(keys, plain);
      const sealed = await seal(keys, plain, cid);
      parts.push(sealed);
      entries.push({ id: cid, offset: at, length: sealed.length });
      if ('content' in e) copies.set(cid, [...(copies.get(cid) ?? []), { pack: { id, size: 0 }, key: objectKeys.pack(id), offset: at, length: sealed.length }]);
      at += sealed.length;
    }
    const body = Buffer.concat([...parts, packTrailer(keys, id, entries, at)]);
    for (const c of copies.values()) for (const loc of c) if (loc.pack!.id === id) loc.pack!.size = body.length;
    await store.put(objectKeys.pack(id), body);
    contents.push({ pack: { id, size: body.length }, chunks: entries });
  }
  await putIndexObject(store, keys, contents);
  const ids = l.chunks.map((c) => (c ? chunkId(keys, c) : null));
  const manifest = packedManifest({ backupId: 'b', diskId: 'd', sizeBytes: l.sizeBytes, chunkSize: l.chunkSize }, ids, (id) =>
    (locateIn ?? ((_, c) => c[0]!))(id, copies.get(id)!),
  );
  await store.put(objectKeys.manifest('b', 'd'), await encodeManifest(keys, manifest));
  const image = Buffer.alloc(l.sizeBytes);
  l.chunks.forEach((c, i) => c?.copy(image, i * l.chunkSize));
  return { image, manifest };
}

/** A random disk: zero runs, repeated chunks, partial last chunk; its chunks spread over packs in shuffled order with junk between. */
function randomLayout(rand: (n: number) => number): Layout {
  const chunkSize = 4096;
  const n = 4 + rand(60);
  const sizeBytes = n * chunkSize - (rand(3) === 0 ? 1 + rand(chunkSize - 1) : 0);
  const distinct = Array.from({ length: 1 + rand(n) }, () => (rand(2) ? randomBytes(chunkSize) : Buffer.alloc(chunkSize, `text ${rand(1000)} `)));
  const chunks: (Buffer | null)[] = [];
  while (chunks.length < n) {
    const run = 1 + rand(6);
    const zero = rand(4) === 0;
    for (let k = 0; k < run && chunks.length < n; k++) chunks.push(zero ? null : distinct[rand(distinct.length)]!);
  }
  const last = n - 1;
  if (chunks[last] && sizeBytes < n * chunkSize) chunks[last] = randomBytes(sizeBytes - last * chunkSize);
  const used = [...new Map(chunks.filter((c): c is Buffer => c !== null).map((c) => [chunkId(keys, c), c])).values()];
  const packs: Layout['packs'] = Array.from({ length: 1 + rand(5) }, () => []);
  for (const content of used) {
    packs[rand(packs.length)]!.push({ content });
    if (rand(5) === 0) packs[rand(packs.length)]!.push({ content }); // a second copy elsewhere
    if (rand(4) === 0) packs[rand(packs.length)]!.push({ junk: randomBytes(1 + rand(2 * chunkSize)) });
  }
  for (const p of packs)
    for (let i = p.length - 1; i > 0; i--) {
      const j = rand(i + 1);
      [p[i], p[j]] = [p[j]!, p[i]!];
    }
  return { chunks, sizeBytes, chunkSize, packs: packs.filter((p) => p.length > 0) };
}

describe('planning runs', () => {
  it('covers every stored entry once, within runs no longer than the limit nor with a gap wider than it, joined wherever they may be (300 random plans)', () => {
    const rand = prng(18);
    for (let t = 0; t < 300; t++) {
      const entries: StoredEntry[] = [];
      const objects = Array.from({ length: 1 + rand(4) }, (_, k) => ({ key: `packs/${k}`, packed: rand(8) !== 0, at: [] as [number, number][] }));
      for (let index = 0; index < 1 + rand(80); index++) {
        const o = objects[rand(objects.length)]!;
        // A location used before (a repeated chunk) or a new one.
        const loc = o.at.length && rand(4) === 0 ? o.at[rand(o.at.length)]! : ([rand(1 << 20), 1 + rand(64 << 10)] as [number, number]);
        if (!o.at.includes(loc)) o.at.push(loc);
        entries.push({ index, id: `${o.key}@${loc[0]}`, key: o.key, packed: o.packed, offset: loc[0], storedSize: loc[1] });
      }
      const opts = { maxRunBytes: 1 + rand(512 << 10), maxGapBytes: rand(128 << 10) };
      const runs = planRuns(entries, opts);
      const seen = new Map<number, string>();
      let lastFirst = -1;
      for (const r of runs) {
        expect(r.chunks.length).toBeGreaterThan(0);
        expect(r.length).toBeLessThanOrEqual(Math.max(opts.maxRunBytes, ...r.chunks.map((c) => c.length)));
        if (!r.packed) expect(r.chunks).toHaveLength(1);
        const sorted = [...r.chunks].sort((a, b) => a.offset - b.offset);
        let end = r.offset;
        for (const c of sorted) {
          expect(c.offset - r.offset).toBe(c.at);
          expect(c.at + c.length).toBeLessThanOrEqual(r.length);
          expect(c.offset - end).toBeLessThanOrEqual(opts.maxGapBytes);
          end = Math.max(end, c.offset + c.length);
          for (const i of c.indexes) {
            expect(seen.has(i)).toBe(false);
            seen.set(i, c.id);
          }
        }
        const first = Math.min(...r.chunks.flatMap((c) => c.indexes));
        expect(first).toBeGreaterThan(lastFirst);
        lastFirst = first;
      }
      expect([...seen.entries()].sort((a, b) => a[0] - b[0])).toEqual(entries.map((e) => [e.index, e.id]));
      // Greedy joining: a run of an object begins where its first chunk could not join the run before it.
      for (const o of objects.filter((x) => x.packed)) {
        const mine = runs.filter((r) => r.key === o.key).sort((a, b) => a.offset - b.offset);
        for (let k = 1; k < mine.length; k++) {
          const [a, b] = [mine[k - 1]!, mine[k]!];
          const first = b.chunks.reduce((x, c) => (c.offset < x.offset ? c : x));
          expect(first.offset - (a.offset + a.length) > opts.maxGapBytes || first.offset + first.length - a.offset > opts.maxRunBytes).toBe(true);
        }
      }
    }
  });

  it('plans a window at a time, pulling no further ahead of the restore than a window', async () => {
    let pulled = 0;
    function* entries(): Generator<ManifestEntry> {
      for (let index = 0; index < 100_000; index++) {
        pulled++;
        yield index % 7 === 0
          ? { index, id: null }
          : { index, id: `c${index}`, key: `packs/${index >> 10}`, packed: true, offset: (index & 1023) * 100, storedSize: 100 };
      }
    }
    let planned = 0;
    let windows = 0;
    for await (const w of planWindows(entries(), { maxRunBytes: 1 << 20, maxGapBytes: 100, windowEntries: 4096 })) {
      windows++;
      planned += w.zeros.length + w.runs.reduce((n, r) => n + r.chunks.reduce((m, c) => m + c.indexes.length, 0), 0);
      expect(pulled - planned).toBeLessThanOrEqual(0);
      // Chunks 0..1023 of a pack are adjacent but for the zero entries' gaps: one run per pack per window.
      expect(w.runs.length).toBeLessThanOrEqual(Math.ceil(4096 / 1024) + 1);
    }
    expect(planned).toBe(100_000);
    expect(windows).toBe(Math.ceil(100_000 / 4096));
  });

  it('places the disk chunks a run fills in runs of neighbours, each filled once, at most the limit long, joined wherever they may be (300 random runs)', () => {
    const rand = prng(31);
    for (let t = 0; t < 300; t++) {
      const free = Array.from({ length: 200 }, (_, i) => i).filter(() => rand(3) !== 0);
      const chunks: RunChunk[] = [];
      for (const i of free.sort(() => rand(3) - 1)) {
        // A chunk used at several indexes (repeated in the disk) or a chunk of its own.
        const c =
          chunks.length && rand(5) === 0 ? chunks[rand(chunks.length)]! : chunks[chunks.push({ id: `c${i}`, offset: 0, at: 0, length: 1, indexes: [] }) - 1]!;
        c.indexes.push(i);
      }
      const maxChunks = 1 + rand(12);
      const extents = writeExtents(chunks, maxChunks);
      const filled = extents.flatMap((e) => e.chunks.map((c, k) => [e.first + k, c.id] as const));
      const expected = chunks.flatMap((c) => c.indexes.map((i) => [i, c.id] as const)).sort((a, b) => a[0] - b[0]);
      expect(filled).toEqual(expected);
      for (const [k, e] of extents.entries()) {
        expect(e.chunks.length).toBeGreaterThan(0);
        expect(e.chunks.length).toBeLessThanOrEqual(maxChunks);
        const before = extents[k - 1];
        if (before && before.first + before.chunks.length === e.first) expect(before.chunks).toHaveLength(maxChunks);
      }
    }
    expect(() => writeExtents([], 0)).toThrow(/at least one chunk/);
  });

  it('refuses entries out of disk order, naming both', async () => {
    const e = (index: number): ManifestEntry => ({ index, id: null });
    await expect(async () => {
      for await (const _ of planWindows([e(0), e(2), e(1)], { maxRunBytes: 1, maxGapBytes: 0, windowEntries: 8 }));
    }).rejects.toMatchObject({ name: 'Mover.Corrupt', message: 'manifest entry 1 follows entry 2: entries must come in disk order' });
  });
});

describe('restoring runs', () => {
  it('restores the source exactly for random layouts: zero runs, repeated chunks, many packs, chunks out of disk order with junk between (30 layouts)', async () => {
    const rand = prng(7);
    for (let t = 0; t < 30; t++) {
      const store = new WatchedStore(new MemoryObjectStore());
      const l = randomLayout(rand);
      const { image, manifest } = await storeBackup(store, l);
      const maxChunk = sealedCapacity(l.chunkSize);
      const opts = { inFlightBytes: maxChunk + rand(8 * maxChunk), maxRunBytes: 1 + rand(16 * maxChunk), maxGapBytes: rand(3 * maxChunk) };
      const target = join(dir, `t${t}.raw`);
      store.gets.length = 0;
      const r = await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target, ...opts });
      expect((await readFile(target)).equals(image)).toBe(true);
      // One GET per planned run (and the manifest's), none past the budget.
      const runs = [];
      for await (const w of planWindows(manifestEntries(manifest), {
        maxRunBytes: Math.max(maxChunk, Math.min(opts.maxRunBytes, opts.inFlightBytes)),
        maxGapBytes: opts.maxGapBytes,
        windowEntries: 4096,
      }))
        runs.push(...w.runs);
      expect(store.gets.length).toBe(runs.length + 1);
      expect(r.requests).toBe(runs.length + 1);
      expect(store.peakInFlight).toBeLessThanOrEqual(Math.max(opts.inFlightBytes, maxChunk));
    }
  });

  it('reads the chunks of a pack in one GET, and still restores a damaged chunk in the middle of that run from another copy the index lists', async () => {
    const store = new WatchedStore(new MemoryObjectStore());
    const chunks = Array.from({ length: 6 }, () => randomBytes(4096));
    // Pack 0 holds all six in order; pack 1 a second copy of chunk 3.
    const layout: Layout = { chunks, sizeBytes: 6 * 4096, chunkSize: 4096, packs: [chunks.map((content) => ({ content })), [{ content: chunks[3]! }]] };
    const { image, manifest } = await storeBackup(store, layout, (_, c) => c[0]!);
    const id3 = chunkId(keys, chunks[3]!);
    const at = manifest.locations![id3]!;
    const packKey = objectKeys.pack(manifest.packs![at[0]]!.id);
    const inner = store.inner as MemoryObjectStore;
    inner.objects.get(packKey)![at[1] + 30]! ^= 0x40;
    store.gets.length = 0;
    const target = join(dir, 'mid-run.raw');
    await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target });
    expect((await readFile(target)).equals(image)).toBe(true);
    // The manifest, the run of six, the index to find the other copy, and that copy.
    expect(store.gets.filter((g) => g.key === packKey)).toEqual([
      { key: packKey, length: manifest.storedSizes[chunkId(keys, chunks[5]!)]! + manifest.locations![chunkId(keys, chunks[5]!)]![1] },
    ]);
    expect(store.gets.filter((g) => g.key.startsWith('index/'))).toHaveLength(1);
    // Without the other copy: Corrupt, naming the disk offset, the chunk's bytes in the pack, and what to do.
    for (const key of [...inner.objects.keys()]) if (key.startsWith('index/')) inner.objects.delete(key);
    await expect(restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target })).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(
        new RegExp(
          `^disk 'd' offset ${3 * 4096}: chunk ${id3} in ${packKey} bytes ${at[1]}\\+${manifest.storedSizes[id3]} is damaged: .*failed authentication.*; deep-verify the backup`,
        ),
      ),
    });
  });

  it('refuses a manifest that says a chunk is stored in more bytes than any chunk seals to, naming the chunk and the offset', async () => {
    const store = new MemoryObjectStore();
    const chunks = [randomBytes(4096), randomBytes(4096)];
    const { manifest } = await storeBackup(store, { chunks, sizeBytes: 2 * 4096, chunkSize: 4096, packs: [chunks.map((content) => ({ content }))] });
    const id1 = chunkId(keys, chunks[1]!);
    manifest.storedSizes[id1] = 1 << 30;
    manifest.packs![manifest.locations![id1]![0]]!.size = 2 ** 31; // consistent with its pack, as a damaged writer could make it
    await store.put(objectKeys.manifest('b', 'd'), await encodeManifest(keys, manifest));
    await expect(
      restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target: join(dir, 'huge.raw') }),
    ).rejects.toMatchObject({
      name: 'Mover.Corrupt',
      message: expect.stringMatching(
        new RegExp(`^disk 'd' offset 4096: the manifest says chunk ${id1} is stored in 1073741824 bytes of packs/.* more than a chunk of 4096 bytes seals to`),
      ),
    });
  });

  it('retries a run whose connection is cut in the middle of its body, through a real S3 endpoint, and restores the source', async () => {
    const s3 = await startLocalS3({ directory: join(dir, 's3'), buckets: ['repo'] });
    const proxy = await startFaultProxy({ target: s3.url, rules: [{ method: 'GET', path: /\/packs\//, times: 1, fault: { kind: 'cut-body' } }] });
    try {
      const client = s3Client({ region: 'us-east-1', endpoint: proxy.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
      const retries: string[] = [];
      const store = withRetry(new S3ObjectStore(client, 'repo'), { baseDelayMs: 1, onRetry: (r) => retries.push(`${r.op} ${r.key}`) });
      const chunks = Array.from({ length: 32 }, () => randomBytes(64 * 1024));
      const { image } = await storeBackup(store, { chunks, sizeBytes: 32 * 64 * 1024, chunkSize: 64 * 1024, packs: [chunks.map((content) => ({ content }))] });
      const target = join(dir, 'cut.raw');
      const r = await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target });
      expect((await readFile(target)).equals(image)).toBe(true);
      expect(proxy.injected.map((f) => f.kind)).toEqual(['cut-body']);
      expect(retries).toEqual([`get ${proxy.injected[0]!.path.split('?')[0]!.slice('/repo/'.length)}`]);
      expect(r.requests).toBe(2); // the manifest, and the whole pack's chunks in one run (its retry is the store's)
    } finally {
      await proxy.close();
      await s3.close();
    }
  });

  it('keeps the bytes of GETs in flight within the budget while several overlap, on a disk many times the budget', async () => {
    const store = new WatchedStore(new MemoryObjectStore());
    const chunks = Array.from({ length: 256 }, () => randomBytes(16 * 1024));
    // Eight packs of 32 chunks: 8 runs of ~512 KiB against a budget of 1.2 MiB.
    const packs = Array.from({ length: 8 }, (_, p) => chunks.slice(p * 32, p * 32 + 32).map((content) => ({ content })));
    const { image } = await storeBackup(store, { chunks, sizeBytes: 256 * 16 * 1024, chunkSize: 16 * 1024, packs });
    const budget = 1.2 * 1024 * 1024;
    store.gets.length = 0;
    const target = join(dir, 'budget.raw');
    const r = await restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target, inFlightBytes: Math.floor(budget) });
    expect((await readFile(target)).equals(image)).toBe(true);
    expect(store.gets.filter((g) => g.key.startsWith('packs/'))).toHaveLength(8);
    // Each pack's 32 neighbouring chunks (512 KiB) are written at once.
    expect(r.writes).toBe(8);
    expect(store.peakGets).toBeGreaterThanOrEqual(2);
    expect(store.peakInFlight).toBeLessThanOrEqual(budget);
  });

  it('writes the neighbouring chunks of a run at once, at most 4 MiB each, and leaves zero runs as holes', async () => {
    const store = new MemoryObjectStore();
    const chunkSize = 64 * 1024;
    // 160 chunks in one pack, but chunks 100..109 are zeros: 100 neighbours (6.25 MiB: two writes), then 50 (one write).
    const chunks: (Buffer | null)[] = Array.from({ length: 160 }, (_, i) => (i >= 100 && i < 110 ? null : Buffer.alloc(chunkSize, `chunk ${i} `)));
    const stored = chunks.filter((c): c is Buffer => c !== null);
    const { image } = await storeBackup(store, { chunks, sizeBytes: 160 * chunkSize, chunkSize, packs: [stored.map((content) => ({ content }))] });
    const target = join(dir, 'coalesced.raw');
    const r = await restoreDisk({
      repository: new Repository(store, keys),
      pool,
      backupId: 'b',
      diskId: 'd',
      target,
      maxRunBytes: 64 << 20,
      inFlightBytes: 64 << 20,
    });
    expect((await readFile(target)).equals(image)).toBe(true);
    expect(r.writes).toBe(3);
    // The zeros were not written: the file has fewer blocks than its size.
    expect((await stat(target)).blocks * 512).toBeLessThanOrEqual(150 * chunkSize + 64 * 1024);
  });

  it('fails a restore whose target refuses writes with an error naming the disk, the range and the target, and leaves nothing running', async () => {
    const store = new MemoryObjectStore();
    const chunks = Array.from({ length: 8 }, () => randomBytes(4096));
    await storeBackup(store, { chunks, sizeBytes: 8 * 4096, chunkSize: 4096, packs: [chunks.map((content) => ({ content }))] });
    // /dev/full: a device whose every write fails with ENOSPC.
    await expect(
      restoreDisk({ repository: new Repository(store, keys), pool, backupId: 'b', diskId: 'd', target: '/dev/full', targetKind: 'device' }),
    ).rejects.toThrow(/^disk 'd': writing 32768 bytes at offset 0 of \/dev\/full failed: ENOSPC/);
    expect(pool.backlog).toBe(0);
  });
});
