/**
 * The readers of a disk's manifest stream it: deep verify, the NBD export (random access
 * by offset), replication, shared damage and the standby replica (with the restore's
 * re-hash) each walk a synthetic manifest with a live heap that does not follow its size.
 * `npm test` walks 2^18 entries (a 1 GiB disk of 4 KiB chunks, 4 pieces);
 * `npm run test:manifest-memory` walks 2^21 (LIFEBOAT_STREAM_TEST_ENTRIES: any number). Each
 * prints its peak live heap (sampled after a full collection) above where it started; with
 * the npm script, the same manifest read whole (test/helpers/manifest.ts) is printed beside
 * them for scale.
 *
 * The manifests are written with the real writer into an in-memory repository. Their
 * entries are unique ids (every one a distinct chunk, as on a real disk), most of them
 * stand-ins that point into a real pack; real chunks of a small backup are sprinkled
 * among them where a reader opens chunks: deep verify samples only real ones, the export
 * reads only real ones, and replication finds the packs at the target already.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { ReplicateJob } from '../contracts/recovery-jobs.ts';
import { shareDamage } from '../functions/recovery/shared-damage.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { deepVerifyDisk, inSample } from '../mover/recovery/deep-verify.ts';
import { BackupDiskExport } from '../mover/recovery/export.ts';
import { replicateDisk } from '../mover/recovery/replicate.ts';
import { standbyPaths, updateStandbyDisk } from '../mover/recovery/standby.ts';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import { ManifestReader } from '../repository/manifest/reader.ts';
import { ManifestWriter } from '../repository/manifest/writer.ts';
import type { ChunkLocation } from '../repository/packs.ts';
import { peakHeap as peakLiveHeap } from './helpers/heap.ts';
import { decodeManifest } from './helpers/manifest.ts';
import type { Backup } from '../functions/catalog/catalog.ts';

const CHUNK = 4096;
const N = Number(process.env.LIFEBOAT_STREAM_TEST_ENTRIES ?? 2 ** 18);
/** Real chunks (a small backup's). */
const K = 64;
/** Every 8th entry is a zero chunk; every 4096th (+1) a real chunk; the rest are stand-ins. */
const isZero = (i: number) => i % 8 === 0;
const isReal = (i: number) => i % 4096 === 1;
const SAMPLE = 1 / 16;
const VERIFY_ID = 'v-stream';
const store = new MemoryObjectStore();
const keys = deriveKeys(randomBytes(32));
const repository = new Repository(store, keys);
let dir: string;
let small: Buffer;
let real: { id: string; loc: ChunkLocation }[];
const realAt = (i: number) => real[Math.floor(i / 4096) % K]!;
/** A stand-in id for entry `i`: unique, and never in deep verify's sample. */
function standIn(i: number): string {
  for (let salt = 0; ; salt++) {
    const id = `${(i >>> 0).toString(16).padStart(8, '0')}${salt.toString(16).padStart(8, '0')}`.repeat(4);
    if (!inSample(VERIFY_ID, id, SAMPLE)) return id;
  }
}
/** Per test: 5 minutes for 2^18 entries (on a loaded 2-core machine), in proportion for more. */
const TIMEOUT = 300_000 * Math.max(1, N / 2 ** 18);
/** A reader's live heap at most: a few pieces (about 3 MiB each) and bounded sets, whatever N. */
const BOUND = 48 * 2 ** 20;

/** Runs `fn` and prints its peak live heap above where it started (helpers/heap.ts). */
const peakHeap = (what: string, fn: () => Promise<void>) => peakLiveHeap(`${what}: ${N} manifest entries`, fn);

/** Writes manifest `backupId`/disk0 of N entries, `entry(i)` each. */
async function writeManifest(backupId: string, entry: (i: number) => { id: string; loc: ChunkLocation } | null) {
  const w = new ManifestWriter({ store: store, keys: keys, backupId, manifestId: 'disk0', sizeBytes: N * CHUNK, chunkSize: CHUNK });
  for (const r of real) w.packLanded(r.loc.pack!.id, r.loc.pack!.size);
  for (let i = 0; i < N; i++) {
    const e = entry(i);
    const wait = w.add(e && { id: e.id, packId: e.loc.pack!.id, offset: e.loc.offset, length: e.loc.length });
    if (wait) await wait;
  }
  await w.finish();
}

const stored = () => N - Math.ceil(N / 8);
const realCount = () => Math.ceil((N - 1) / 4096);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-stream-'));
  small = randomBytes(K * CHUNK);
  const reader = { sizeBytes: small.length, read: async (b: Buffer, off: number, len: number) => small.copy(b, 0, off, off + len), close: async () => {} };
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: small.length },
    backupId: 'small',
    chunkSize: CHUNK,
    parallelism: 2,
  });
  real = [];
  for await (const b of (await ManifestReader.open(store, keys, 'small', 'disk0'))!.batches()) {
    for (let i = 0; i < b.count; i++) real.push({ id: b.id(i)!, loc: b.location(i)! });
  }
  expect(real).toHaveLength(K);
  await writeManifest('big', (i) => (isZero(i) ? null : isReal(i) ? realAt(i) : { id: standIn(i), loc: real[0]!.loc }));
}, 2 * TIMEOUT);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
}, TIMEOUT);

describe(`readers of a manifest of ${N} entries stream it`, () => {
  // For scale, in `npm run test:manifest-memory` only (what a reader holding the whole manifest would hold; slow).
  it.runIf(process.env.LIFEBOAT_STREAM_TEST_ENTRIES !== undefined)(
    'read whole (for scale only: the tests read manifests this way, the product does not)',
    async () => {
      let entries = 0;
      await peakHeap('the manifest read whole (test helper)', async () => {
        entries = (await decodeManifest(keys, (await store.get(objectKeys.manifest('big', 'disk0')))!, 'big', 'disk0', store)).chunks.length;
      });
      expect(entries).toBe(N);
    },
    TIMEOUT,
  );

  it(
    'deep verify',
    async () => {
      let out: Awaited<ReturnType<typeof deepVerifyDisk>> | undefined;
      const peak = await peakHeap('deep verify', async () => {
        out = await deepVerifyDisk(
          { verifyId: VERIFY_ID, backupId: 'big', sample: SAMPLE } as Parameters<typeof deepVerifyDisk>[0],
          { diskId: 'disk0', sizeBytes: N * CHUNK },
          { repository, parallelism: 4 },
        );
      });
      expect(out!.damaged).toEqual([]);
      // Every stored entry is a distinct chunk (a real one recurs only far apart); the real ones in the sample were read.
      expect(out!.chunksTotal).toBe(stored());
      let sampled = 0;
      for (let i = 0; i < N; i++) if (isReal(i) && inSample(VERIFY_ID, realAt(i).id, SAMPLE)) sampled++;
      expect(out!.chunksChecked).toBe(sampled);
      expect(peak).toBeLessThan(BOUND);
    },
    TIMEOUT,
  );

  it(
    'the NBD export: random reads by offset and base:allocation of the whole disk',
    async () => {
      const exp = await BackupDiskExport.open({ repository: new Repository(store, keys), backupId: 'big', diskId: 'disk0', cacheMiB: 4, readAheadChunks: 0 });
      let holes = 0;
      const peak = await peakHeap('NBD export', async () => {
        for (let n = 0; n < 400; n++) {
          const i = 1 + 4096 * Math.floor(Math.random() * realCount());
          const r = realAt(i);
          const k = real.indexOf(r);
          expect((await exp.read(i * CHUNK, CHUNK)).equals(small.subarray(k * CHUNK, (k + 1) * CHUNK))).toBe(true);
          expect((await exp.read((i - 1) * CHUNK, CHUNK)).equals(Buffer.alloc(CHUNK))).toBe(true);
        }
        const step = 256 * 2 ** 20;
        for (let at = 0; at < exp.size; at += step) {
          for (const e of await exp.allocation(at, Math.min(step, exp.size - at))) if (e.flags !== 0) holes += e.length;
        }
      });
      exp.close();
      expect(holes).toBe(Math.ceil(N / 8) * CHUNK);
      expect(peak).toBeLessThan(BOUND);
    },
    TIMEOUT,
  );

  it(
    'replication (its packs already at the target)',
    async () => {
      const target = new MemoryObjectStore();
      for (const [k, v] of store.objects) if (k.startsWith('packs/')) await target.put(k, v);
      const job = {
        replicationId: 'r',
        vmId: 'vm',
        backupId: 'big',
        moverGroup: 'dr',
        source: { bucket: 's' },
        target: { bucket: 't' },
        disks: [],
        replicaDir: null,
        recoveryPoint: '2026-12-07T00:00:00Z',
      } as ReplicateJob;
      let out: Awaited<ReturnType<typeof replicateDisk>> | undefined;
      const peak = await peakHeap('replication', async () => {
        out = await replicateDisk(job, { diskId: 'disk0' }, 1, { source: new Repository(store, keys), target: { store: target }, parallelism: 4 });
      });
      expect(out).toMatchObject({ chunks: stored(), chunksCopied: 0 });
      expect(target.objects.get(objectKeys.manifest('big', 'disk0'))?.equals(store.objects.get(objectKeys.manifest('big', 'disk0'))!)).toBe(true);
      expect(peak).toBeLessThan(BOUND);
    },
    TIMEOUT,
  );

  it(
    'shared damage',
    async () => {
      const damagedId = real[3]!.id;
      const big = { vmId: 'vm', backupId: 'big', disks: [{ diskId: 'disk0' }] } as Backup;
      let marked: Awaited<ReturnType<typeof shareDamage>> = [];
      let offsets: number[] = [];
      const peak = await peakHeap('shared damage', async () => {
        marked = await shareDamage({ vmId: 'vm', backupId: 'other', verifyId: VERIFY_ID }, [damagedId], {
          repository: new Repository(store, keys),
          now: () => new Date(),
          catalog: { backupsWithStatus: async () => [big] },
          recovery: {
            markSharedDamage: async (_vm, _b, damage) => {
              offsets = damage.findings.flatMap((f) => f.offsets);
              return true;
            },
          },
        });
      });
      expect(marked).toEqual([{ vmId: 'vm', backupId: 'big', chunks: [damagedId] }]);
      const expected: number[] = [];
      for (let i = 0; i < N; i++) if (isReal(i) && realAt(i).id === damagedId) expected.push(i * CHUNK);
      expect(offsets).toEqual(expected);
      expect(peak).toBeLessThan(BOUND);
    },
    TIMEOUT,
  );

  it(
    'the standby replica from a known backup, and its re-hash of the whole disk',
    async () => {
      // Real chunks only (the re-hash checks every chunk of the disk): from all zeros to one real chunk in 64.
      await writeManifest('zeros', () => null);
      await writeManifest('cyc', (i) => (i % 64 === 1 ? realAt(i * 64) : null));
      const paths = standbyPaths(dir, 'vm', 'disk0');
      await mkdir(paths.dir, { recursive: true });
      await writeFile(paths.disk, '');
      await truncate(paths.disk, N * CHUNK);
      await writeFile(paths.state, JSON.stringify({ backupId: 'zeros', state: 'current' }));
      const job = {
        replicationId: 'r',
        vmId: 'vm',
        backupId: 'cyc',
        moverGroup: 'dr',
        source: { bucket: 's' },
        target: { bucket: 't' },
        disks: [],
        replicaDir: dir,
        recoveryPoint: '2026-12-07T00:00:00Z',
      } as ReplicateJob;
      let out: Awaited<ReturnType<typeof updateStandbyDisk>> | undefined;
      const peak = await peakHeap('standby replica + re-hash', async () => {
        out = await updateStandbyDisk(job, { diskId: 'disk0' }, { repository });
      });
      expect(out).toMatchObject({ fromBackupId: 'zeros', chunksWritten: Math.ceil((N - 1) / 64), chunksUnchanged: N - Math.ceil((N - 1) / 64) });
      expect(peak).toBeLessThan(BOUND);
    },
    TIMEOUT,
  );
});
