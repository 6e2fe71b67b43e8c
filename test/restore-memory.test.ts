/**
 * A restore holds what its in-flight budget allows, whatever the disk's size: it restores a
 * synthetic manifest of 2^18 entries (LIFEBOAT_RESTORE_TEST_ENTRIES: any number) into a
 * file and prints its peak live heap (sampled after a full collection) above where it
 * started. The chunks compress to a few dozen bytes each, as the 1 KiB chunks of
 * `npm run bench:big-disk` do: the stored bytes in flight (`inFlightBytes`) then stand for
 * hundreds of thousands of chunks, and a restore bounded by them alone held the plan of
 * nearly the whole disk (+200 MiB here, 820 MiB RSS in that bench).
 *
 * The manifest is written with the real writer into an in-memory repository: its entries
 * cycle through the K chunks of a small real backup in their pack order (so its runs are
 * those of a real disk, one range GET per window), every 8th a zero chunk.
 */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { deriveKeys } from '../repository/format.ts';
import { ManifestReader } from '../repository/manifest/reader.ts';
import { ManifestWriter } from '../repository/manifest/writer.ts';
import { peakHeap } from './helpers/heap.ts';

const CHUNK = 1024;
const N = Number(process.env.LIFEBOAT_RESTORE_TEST_ENTRIES ?? 2 ** 18);
/** Distinct chunks (a small backup's): one cycle of them is one manifest window of the restore. */
const K = 4096;
const isZero = (i: number) => i % 8 === 0;
/** The restore's live heap at most: its chunk budget's plans and opens (~16 MiB) and a few manifest pieces, whatever N. */
const BOUND = 40 * 2 ** 20;
/** 5 minutes for 2^18 entries (on a loaded 2-core machine), in proportion for more. */
const TIMEOUT = 300_000 * Math.max(1, N / 2 ** 18);

const keys = deriveKeys(randomBytes(32));
const store = new MemoryObjectStore();
let dir: string;
/** Chunk k: its number, then a pattern (distinct, and compressing to a few dozen bytes). */
const small = Buffer.alloc(K * CHUNK, 0xa5);
for (let k = 0; k < K; k++) small.writeUInt32BE(k, k * CHUNK);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-restore-memory-'));
  const reader = { sizeBytes: small.length, read: async (b: Buffer, off: number, len: number) => small.copy(b, 0, off, off + len), close: async () => {} };
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: small.length },
    backupId: 'small',
    chunkSize: CHUNK,
    parallelism: 2,
  });
  const real = [];
  for await (const b of (await ManifestReader.open(store, keys, 'small', 'disk0'))!.batches()) {
    for (let i = 0; i < b.count; i++) real.push({ id: b.id(i)!, loc: b.location(i)! });
  }
  expect(real).toHaveLength(K);
  const w = new ManifestWriter({ store: store, keys: keys, backupId: 'big', manifestId: 'disk0', sizeBytes: N * CHUNK, chunkSize: CHUNK });
  for (const r of new Map(real.map((r) => [r.loc.pack!.id, r.loc.pack!.size]))) w.packLanded(...r);
  for (let i = 0; i < N; i++) {
    const r = real[i % K]!;
    const wait = w.add(isZero(i) ? null : { id: r.id, packId: r.loc.pack!.id, offset: r.loc.offset, length: r.loc.length });
    if (wait) await wait;
  }
  await w.finish();
}, TIMEOUT);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

it(
  `a restore of a manifest of ${N} entries holds a bounded heap`,
  async () => {
    const target = join(dir, 'restored.raw');
    let out: Awaited<ReturnType<typeof restoreDisk>> | undefined;
    const peak = await peakHeap(`restore: ${N} manifest entries of ${CHUNK}-byte chunks`, async () => {
      out = await restoreDisk({ repository: new Repository(store, keys), backupId: 'big', diskId: 'disk0', target, targetKind: 'file' });
    });
    expect(out!.sizeBytes).toBe(N * CHUNK);
    // Every K chunks of the disk are the small backup's, in order, with every 8th a hole.
    const expected = Buffer.from(small);
    for (let k = 0; k < K; k += 8) expected.fill(0, k * CHUNK, (k + 1) * CHUNK);
    const got = Buffer.alloc(K * CHUNK);
    const fh = await open(target);
    try {
      for (let i = 0; i < N; i += K) {
        const length = Math.min(K, N - i) * CHUNK;
        expect((await fh.read(got, 0, length, i * CHUNK)).bytesRead).toBe(length);
        expect(got.subarray(0, length).equals(expected.subarray(0, length)), `chunks ${i}..${i + K - 1} restored as backed up`).toBe(true);
      }
    } finally {
      await fh.close();
    }
    expect(peak).toBeLessThan(BOUND);
  },
  TIMEOUT,
);
