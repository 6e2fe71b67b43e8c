/**
 * Repository format 2 (repository/packs.ts): the binary index and pack trailers (round trips,
 * and fuzz: damaged bytes parse to something self-consistent or fail as Mover.Corrupt,
 * never another error), the read planner's properties, and the PackWriter.
 */
import type { PutChecksum } from '../core/object-store.ts';
import { createHash, randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Corrupt, StorageUnavailable } from '../contracts/errors.ts';
import { chunkId, deriveKeys, objectKeys, open, packIdOfKey, seal, type Manifest } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import {
  chunkLocation,
  decodeIndex,
  decodeIndexObject,
  encodeIndex,
  encodeIndexObject,
  IndexListing,
  MAX_PACK_BYTES,
  openIndexObject,
  planReads,
  type ChunkLocation,
  type PackContents,
  type PackEntry,
} from '../repository/packs.ts';
import { fetchPackTrailer, packTrailer, readPackTrailer, trailerBytes } from '../repository/pack-trailer.ts';
import { IndexCache, RepositoryIndex } from '../repository/repository-index.ts';
import { newPackBuffer, sealIntoPack, type PackBuffer, type Placement } from '../repository/pack-buffer.ts';
import { PackWriter } from '../repository/pack-writer.ts';
import { prng } from './helpers/prng.ts';

const keys = deriveKeys(randomBytes(32));

const bytesOf = (rand: (n: number) => number, n: number) => Buffer.from(Array.from({ length: n }, () => rand(256)));
const hexOf = (rand: (n: number) => number, n: number) => bytesOf(rand, n).toString('hex');
const fakeId = (n: number | string) => createHash('sha256').update(String(n)).digest('hex');

/** What `fn` did: 'ok' with its result, or 'corrupt'; any other error fails the test, naming the case. */
function outcome<T>(fn: () => T, label: string): { ok: true; value: T } | { ok: false } {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (!(err instanceof Corrupt) || (err as Error).name !== 'Mover.Corrupt')
      throw new Error(`${label}: threw ${String(err)}, not Mover.Corrupt`, { cause: err });
    return { ok: false };
  }
}

/** Random but consistent pack listings: chunks back to back with occasional gaps, inside the pack. */
function randomPacks(rand: (n: number) => number): PackContents[] {
  return Array.from({ length: rand(5) }, () => {
    const chunks: PackEntry[] = [];
    let at = 0;
    for (let c = rand(13); c > 0; c--) {
      at += rand(4) === 0 ? rand(500) : 0;
      const length = 1 + rand(5000);
      chunks.push({ id: hexOf(rand, 32), offset: at, length });
      at += length;
    }
    // Now and then a pack as large as a pack may be: the 32-bit fields at their limit.
    const size = rand(8) === 0 ? MAX_PACK_BYTES : at + rand(300);
    return { pack: { id: hexOf(rand, 16), size }, chunks };
  });
}

/** A parsed index is self-consistent: well-formed ids, chunks inside their pack, and it encodes back to exactly the bytes it came from. */
function expectSelfConsistent(parsed: PackContents[], from: Buffer): void {
  for (const p of parsed) {
    expect(p.pack.id).toMatch(/^[0-9a-f]{32}$/);
    for (const c of p.chunks) {
      expect(c.id).toMatch(/^[0-9a-f]{64}$/);
      expect(c.offset + c.length).toBeLessThanOrEqual(p.pack.size);
    }
  }
  expect(encodeIndex(parsed).equals(from)).toBe(true);
}

/** IndexListing.parse accepts exactly what decodeIndex accepts, failing with the same message, and lists the same chunks. */
function expectListingAgrees(bytes: Buffer, decoded: { ok: true; value: PackContents[] } | { ok: false }): void {
  const label = bytes.toString('hex');
  const listing = outcome(() => IndexListing.parse(bytes, 'fuzz'), label);
  expect(listing.ok, label).toBe(decoded.ok);
  if (!decoded.ok) {
    expect(() => IndexListing.parse(bytes, 'fuzz')).toThrow(captureMessage(() => decodeIndex(bytes, 'fuzz')));
    return;
  }
  const l = (listing as { value: IndexListing }).value;
  expect([l.packs, l.entries]).toEqual([decoded.value.length, decoded.value.reduce((n, p) => n + p.chunks.length, 0)]);
}

function captureMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('did not throw');
}

describe('the binary index (encodeIndex / decodeIndex)', () => {
  it('round-trips random listings (property, 300 cases)', () => {
    const rand = prng(0x1d3);
    for (let n = 0; n < 300; n++) {
      const packs = randomPacks(rand);
      const encoded = encodeIndex(packs);
      expect(encoded.subarray(0, 4).toString()).toBe('LBIX');
      expect(decodeIndex(encoded, 'index')).toEqual(packs);
      // ~40 bytes per chunk: the header, 24 per pack, 40 per chunk.
      expect(encoded.length).toBe(9 + packs.reduce((s, p) => s + 24 + 40 * p.chunks.length, 0));
    }
  });

  it('reads an index held in an unaligned subarray of a larger buffer', () => {
    const packs = randomPacks(prng(7)).concat([{ pack: { id: 'ab'.repeat(16), size: 10 }, chunks: [{ id: 'cd'.repeat(32), offset: 2, length: 8 }] }]);
    const encoded = encodeIndex(packs);
    const outer = Buffer.concat([Buffer.from([1, 2, 3]), encoded, Buffer.from([4])]);
    expect(decodeIndex(outer.subarray(3, 3 + encoded.length), 'index')).toEqual(packs);
    // The form a mover keeps copies it out of the larger buffer (a view would keep all of it alive).
    const listing = IndexListing.parse(outer.subarray(3, 3 + encoded.length), 'index');
    expect(listing.bytes.equals(encoded)).toBe(true);
    expect([listing.bytes.byteOffset, listing.bytes.buffer.byteLength]).toEqual([0, encoded.length]);
    const cd = RepositoryIndex.of([listing]).all('cd'.repeat(32));
    expect(cd).toEqual([{ pack: { id: 'ab'.repeat(16), size: 10 }, key: objectKeys.pack('ab'.repeat(16)), offset: 2, length: 8 }]);
  });

  it('rejects every truncation, and bytes after the last pack, as Mover.Corrupt naming the object', () => {
    const rand = prng(0x7c);
    let packs = randomPacks(rand);
    while (packs.length === 0) packs = randomPacks(rand);
    const encoded = encodeIndex(packs);
    for (let cut = 0; cut < encoded.length; cut++) {
      expect(() => decodeIndex(encoded.subarray(0, cut), 'index object index/x'), `cut at ${cut}`).toThrow(/^index object index\/x is malformed: /);
      expect(outcome(() => decodeIndex(encoded.subarray(0, cut), 'x'), `cut at ${cut}`).ok).toBe(false);
    }
    expect(() => decodeIndex(Buffer.concat([encoded, Buffer.from([0])]), 'x')).toThrow(/1 bytes follow the last pack/);
  });

  it('names the problem: magic, version, a chunk past its pack', () => {
    const good = encodeIndex([{ pack: { id: 'ab'.repeat(16), size: 100 }, chunks: [{ id: 'cd'.repeat(32), offset: 10, length: 90 }] }]);
    const edit = (at: number, write: (b: Buffer) => void) => {
      const b = Buffer.from(good);
      write(b.subarray(at));
      return b;
    };
    expect(() =>
      decodeIndex(
        edit(0, (b) => b.write('LBIY')),
        'x',
      ),
    ).toThrow(/no index header/);
    expect(() =>
      decodeIndex(
        edit(4, (b) => {
          b[0] = 3;
        }),
        'x',
      ),
    ).toThrow(/index version 3, this code reads 2/);
    // The chunk's length field (after magic, version, count, pack id, size, count and the chunk id).
    expect(() =>
      decodeIndex(
        edit(9 + 24 + 32 + 4, (b) => b.writeUInt32BE(91)),
        'x',
      ),
    ).toThrow(/ends at 101, past the pack's 100 bytes/);
  });

  it('fuzz: random bytes, random bytes behind a valid header, and bit flips of valid encodings parse self-consistently or fail as Mover.Corrupt', () => {
    const rand = prng(0xf0);
    const seen = { ok: 0, corrupt: 0 };
    const tally = (r: { ok: boolean }) => void (r.ok ? seen.ok++ : seen.corrupt++);
    for (let n = 0; n < 300; n++) {
      const junk = bytesOf(rand, rand(300));
      if (n % 2 === 1 && junk.length >= 9) {
        junk.write('LBIX', 0);
        junk[4] = 2;
        junk.writeUInt32BE(rand(3), 5); // a small pack count, so parsing goes on into the packs
      }
      const r = outcome(() => decodeIndex(junk, 'fuzz'), `junk ${junk.toString('hex')}`);
      if (r.ok) expectSelfConsistent(r.value, junk);
      expectListingAgrees(junk, r);
      tally(r);
    }
    for (let n = 0; n < 200; n++) {
      const encoded = encodeIndex(randomPacks(rand));
      const flips = 1 + rand(3);
      for (let f = 0; f < flips; f++) {
        const bit = rand(encoded.length * 8);
        encoded[bit >> 3]! ^= 1 << (bit & 7);
      }
      const r = outcome(() => decodeIndex(encoded, 'fuzz'), `flipped ${encoded.toString('hex')}`);
      if (r.ok) expectSelfConsistent(r.value, encoded);
      expectListingAgrees(encoded, r);
      tally(r);
    }
    // Both outcomes happen: flips in ids parse (only authentication catches those), flips in counts do not.
    expect(seen.ok).toBeGreaterThan(0);
    expect(seen.corrupt).toBeGreaterThan(0);
  });

  it('an index object opens only under its own id and repository keys', async () => {
    const packs = randomPacks(prng(3));
    const sealed = await encodeIndexObject(keys, 'i1', packs);
    expect(await decodeIndexObject(keys, sealed, 'i1')).toEqual(packs);
    expect((await openIndexObject(keys, sealed, 'i1')).bytes.equals(encodeIndex(packs))).toBe(true);
    await expect(decodeIndexObject(keys, sealed, 'i2')).rejects.toMatchObject({ name: 'Mover.Corrupt' });
    await expect(openIndexObject(keys, sealed, 'i2')).rejects.toMatchObject({ name: 'Mover.Corrupt' });
    await expect(decodeIndexObject(deriveKeys(randomBytes(32)), sealed, 'i1')).rejects.toMatchObject({ name: 'Mover.Corrupt' });
    const damaged = Buffer.from(sealed);
    damaged[damaged.length - 20]! ^= 4;
    await expect(decodeIndexObject(keys, damaged, 'i1')).rejects.toMatchObject({ name: 'Mover.Corrupt' });
  });
});

/** A pack as the writer makes it: sealed chunks back to back, then the trailer. */
async function makePack(packId: string, plaintexts: Buffer[]): Promise<{ pack: Buffer; entries: PackEntry[]; trailerStart: number }> {
  const entries: PackEntry[] = [];
  const parts: Buffer[] = [];
  let at = 0;
  for (const p of plaintexts) {
    const id = chunkId(keys, p);
    const sealed = await seal(keys, p, id);
    entries.push({ id, offset: at, length: sealed.length });
    parts.push(sealed);
    at += sealed.length;
  }
  return { pack: Buffer.concat([...parts, packTrailer(keys, packId, entries, at)]), entries, trailerStart: at };
}

describe('pack trailers (packTrailer / readPackTrailer)', () => {
  const plaintexts = [randomBytes(700), Buffer.from('lifeboat '.repeat(300)), randomBytes(1), randomBytes(2500)];

  it('round-trips: a pack lists its chunks, each opening under its id at its offset', async () => {
    const packId = randomBytes(16).toString('hex');
    const { pack, entries } = await makePack(packId, plaintexts);
    const read = readPackTrailer(keys, pack, packId);
    expect(read).toEqual({ pack: { id: packId, size: pack.length }, chunks: entries });
    for (const [i, c] of read.chunks.entries()) expect(await open(keys, pack.subarray(c.offset, c.offset + c.length), c.id)).toEqual(plaintexts[i]);
    // An empty pack (no chunks) is well-formed too.
    const empty = packTrailer(keys, packId, [], 0);
    expect(readPackTrailer(keys, empty, packId)).toEqual({ pack: { id: packId, size: empty.length }, chunks: [] });
  });

  it('a flipped bit fails the trailer as Mover.Corrupt, or (in a chunk) the chunk it lands in (400 positions)', async () => {
    const rand = prng(0xb17);
    const packId = randomBytes(16).toString('hex');
    const { pack, entries, trailerStart } = await makePack(packId, plaintexts);
    let inTrailer = 0;
    for (let n = 0; n < 400; n++) {
      // Half the flips in the trailer (and its length field), half anywhere.
      const bit = n % 2 === 0 ? trailerStart * 8 + rand((pack.length - trailerStart) * 8) : rand(pack.length * 8);
      const damaged = Buffer.from(pack);
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const r = outcome(() => readPackTrailer(keys, damaged, packId), `bit ${bit}`);
      if (bit >> 3 >= trailerStart) {
        expect(r.ok, `bit ${bit} is in the trailer`).toBe(false);
        inTrailer++;
        continue;
      }
      // The trailer does not cover the chunks' bytes: the chunk's own authentication does.
      expect(r.ok).toBe(true);
      const c = entries.find((e) => e.offset <= bit >> 3 && bit >> 3 < e.offset + e.length)!;
      await expect(open(keys, damaged.subarray(c.offset, c.offset + c.length), c.id), `bit ${bit}`).rejects.toMatchObject({ name: 'Mover.Corrupt' });
    }
    expect(inTrailer).toBeGreaterThanOrEqual(200);
  });

  it('a truncated pack, or one missing its first bytes, is Mover.Corrupt naming the pack', async () => {
    const packId = randomBytes(16).toString('hex');
    const { pack } = await makePack(packId, plaintexts);
    for (let cut = 0; cut < pack.length; cut += cut < 40 ? 1 : 37) {
      expect(() => readPackTrailer(keys, pack.subarray(0, cut), packId), `first ${cut} bytes`).toThrow(Corrupt);
      expect(() => readPackTrailer(keys, pack.subarray(0, cut), packId)).toThrow(new RegExp(`^pack packs/${packId.slice(0, 2)}/${packId}`));
    }
    for (const skip of [1, 15, 700, 701]) {
      expect(() => readPackTrailer(keys, pack.subarray(skip), packId), `without the first ${skip} bytes`).toThrow(/its trailer begins at byte/);
    }
    expect(() => readPackTrailer(keys, Buffer.concat([Buffer.alloc(3), pack]), packId)).toThrow(/its trailer begins at byte/);
  });

  it("another pack's trailer, or the pack read under another id, is Mover.Corrupt", async () => {
    const a = randomBytes(16).toString('hex');
    const b = randomBytes(16).toString('hex');
    const packA = await makePack(a, plaintexts);
    const packB = await makePack(b, plaintexts.slice(0, 2));
    const aWithTrailerOfB = Buffer.concat([packA.pack.subarray(0, packA.trailerStart), packB.pack.subarray(packB.trailerStart)]);
    expect(() => readPackTrailer(keys, aWithTrailerOfB, a)).toThrow(Corrupt);
    expect(() => readPackTrailer(keys, packA.pack, b)).toThrow(Corrupt);
    // A trailer sealed for the right id that describes another pack id (a faulty writer) is refused too.
    const forged = packTrailer(keys, b, packA.entries, packA.trailerStart);
    expect(() => readPackTrailer(keys, Buffer.concat([packA.pack.subarray(0, packA.trailerStart), forged]), a)).toThrow(Corrupt);
    // And one of another repository.
    expect(() => readPackTrailer(deriveKeys(randomBytes(32)), packA.pack, a)).toThrow(Corrupt);
  });

  it('fuzz: random bytes are Mover.Corrupt, never another error', () => {
    const rand = prng(0xfa);
    const packId = 'ab'.repeat(16);
    for (let n = 0; n < 300; n++) {
      const junk = bytesOf(rand, rand(400));
      if (n % 2 === 1 && junk.length >= 4) junk.writeUInt32BE(rand(junk.length), junk.length - 4); // a plausible trailer length
      expect(outcome(() => readPackTrailer(keys, junk, packId), `junk ${junk.toString('hex')}`).ok).toBe(false);
    }
  });
});

describe("a pack trailer read from the pack's end (fetchPackTrailer)", () => {
  /** Records the byte ranges read. */
  class RangeLog extends MemoryObjectStore {
    reads: { offset: number; length: number }[] = [];
    override async get(key: string, opts?: Parameters<MemoryObjectStore['get']>[1]) {
      const whole = this.objects.get(key);
      if (whole) this.reads.push(opts?.range ?? { offset: 0, length: whole.length });
      return super.get(key, opts);
    }
  }
  const plaintexts = [randomBytes(40_000), Buffer.from('lifeboat '.repeat(30_000)), randomBytes(30_000)];
  /** A pack of `plaintexts`, stored in a RangeLog. */
  const storedPack = async () => {
    const packId = randomBytes(16).toString('hex');
    const made = await makePack(packId, plaintexts);
    const store = new RangeLog();
    await store.put(objectKeys.pack(packId), made.pack);
    return { packId, ...made, store };
  };

  it('reads only the end of the pack, and lists what readPackTrailer lists from the whole pack', async () => {
    const { packId, pack, trailerStart, store } = await storedPack();
    expect(await fetchPackTrailer(store, keys, packId, pack.length, 4096)).toEqual(readPackTrailer(keys, pack, packId));
    expect(store.reads).toEqual([{ offset: pack.length - 4096, length: 4096 }]);
    expect(pack.length - trailerStart).toBeLessThan(4096);
  });

  it('reads the trailer again, exactly, when it is longer than the first read', async () => {
    const { packId, pack, trailerStart, store } = await storedPack();
    expect(await fetchPackTrailer(store, keys, packId, pack.length, 16)).toEqual(readPackTrailer(keys, pack, packId));
    expect(store.reads).toEqual([
      { offset: pack.length - 16, length: 16 },
      { offset: trailerStart, length: pack.length - trailerStart },
    ]);
    // A pack smaller than the first read is read whole, once.
    const whole = new RangeLog();
    await whole.put(objectKeys.pack(packId), pack);
    expect((await fetchPackTrailer(whole, keys, packId, pack.length, pack.length + 100))?.chunks).toHaveLength(3);
    expect(whole.reads).toEqual([{ offset: 0, length: pack.length }]);
  });

  it('is undefined for a pack that is gone, and Mover.Corrupt naming the pack for a wrong size or a damaged trailer', async () => {
    const packId = randomBytes(16).toString('hex');
    const { pack } = await makePack(packId, plaintexts);
    const store = new MemoryObjectStore();
    expect(await fetchPackTrailer(store, keys, packId, pack.length)).toBeUndefined();
    await store.put(objectKeys.pack(packId), pack);
    const named = new RegExp(`^pack packs/${packId.slice(0, 2)}/${packId}`);
    // Listed larger than it is: its end is not where the listing says.
    await expect(fetchPackTrailer(store, keys, packId, pack.length + 10)).rejects.toThrow(named);
    await expect(fetchPackTrailer(store, keys, packId, pack.length + 10)).rejects.toBeInstanceOf(Corrupt);
    // Listed smaller: the bytes read end before the trailer does.
    await expect(fetchPackTrailer(store, keys, packId, pack.length - 10)).rejects.toBeInstanceOf(Corrupt);
    await expect(fetchPackTrailer(store, keys, packId, 3)).rejects.toThrow(/too short for a trailer/);
    const damaged = Buffer.from(pack);
    damaged[pack.length - 20]! ^= 1;
    await store.put(objectKeys.pack(packId), damaged);
    await expect(fetchPackTrailer(store, keys, packId, pack.length)).rejects.toBeInstanceOf(Corrupt);
  });
});

/** A random valid format-2 manifest: packs of chunks back to back (some not referenced), chunks in random order and repeats. */
function randomPackedManifest(rand: (n: number) => number, serial: number): Manifest {
  const m: Manifest = { version: 2, backupId: 'b', diskId: 'd', sizeBytes: 0, chunkSize: 4096, chunks: [], storedSizes: {}, packs: [], locations: {} };
  const ids: string[] = [];
  for (let p = 1 + rand(4); p > 0; p--) {
    const packIndex = m.packs!.length;
    let at = 0;
    for (let c = 1 + rand(20); c > 0; c--) {
      const length = 40 + rand(3000);
      if (rand(5) !== 0) {
        const id = fakeId(`${serial}/${packIndex}/${at}`);
        ids.push(id);
        m.storedSizes[id] = length;
        m.locations![id] = [packIndex, at];
      }
      at += length;
    }
    m.packs!.push({ id: hexOf(rand, 16), size: at + 100 + rand(200) });
  }
  if (ids.length === 0) return randomPackedManifest(rand, serial + 1000);
  // Every id at least once, then repeats and zero chunks.
  const order = [...ids, ...Array.from({ length: rand(10) }, () => ids[rand(ids.length)]!)].sort(() => rand(3) - 1);
  m.chunks = order.flatMap((id) => (rand(6) === 0 ? [null, id] : [id]));
  m.sizeBytes = m.chunks.length * m.chunkSize;
  return m;
}

describe('planReads (properties over 300 random manifests)', () => {
  it('reads every requested chunk exactly once, within runs of one pack no larger than maxBytes (but for a lone larger chunk)', () => {
    const rand = prng(0x91a);
    for (let n = 0; n < 300; n++) {
      const m = randomPackedManifest(rand, n);
      const referenced = Object.keys(m.storedSizes);
      const wanted = referenced.filter(() => rand(4) !== 0);
      const maxBytes = 1 + rand(12_000);
      const maxGap = rand(3) === 0 ? 0 : rand(5000);
      const runs = planReads(m, wanted, { maxBytes, maxGap });
      const label = `case ${n}, maxBytes ${maxBytes}, maxGap ${maxGap}`;

      const planned = runs.flatMap((r) => r.chunks.map((c) => c.id));
      expect(planned.slice().sort(), label).toEqual(wanted.slice().sort());
      expect(new Set(planned).size, label).toBe(planned.length);
      for (const run of runs) {
        expect(run.packed).toBe(true);
        if (run.chunks.length > 1) expect(run.length, label).toBeLessThanOrEqual(maxBytes);
        const pack = packIdOfKey(run.key);
        for (const c of run.chunks) {
          const loc = chunkLocation(m, c.id);
          expect(loc.pack!.id, `${label}: ${c.id} is in another pack than its run`).toBe(pack);
          expect(loc.key).toBe(run.key);
          // The chunk's bytes are exactly its location, inside the run.
          expect(c.at).toBeGreaterThanOrEqual(0);
          expect(c.at + c.length).toBeLessThanOrEqual(run.length);
          expect(run.offset + c.at).toBe(loc.offset);
          expect(c.length).toBe(loc.length);
        }
        expect(run.offset + run.length).toBeLessThanOrEqual(m.packs!.find((p) => p.id === pack)!.size);
      }
    }
  });

  it('groups neighbouring chunks of a pack into one run by default, and keeps format-1 chunks one object each', () => {
    const m = randomPackedManifest(prng(5), 1);
    const onePack = Object.keys(m.storedSizes).filter((id) => m.locations![id]![0] === 0);
    const runs = planReads(m, onePack);
    // Chunks of one pack within 64 KiB of each other, less than 4 MiB in all: one GET.
    expect(runs).toHaveLength(1);
    expect(runs[0]!.chunks).toHaveLength(onePack.length);

    const v1: Manifest = {
      version: 1,
      backupId: 'b',
      diskId: 'd',
      sizeBytes: 3 * 4096,
      chunkSize: 4096,
      chunks: [fakeId(1), fakeId(2), fakeId(1)],
      storedSizes: { [fakeId(1)]: 100, [fakeId(2)]: 200 },
    };
    const v1runs = planReads(v1, [fakeId(1), fakeId(2)]);
    const expected = [
      [objectKeys.chunk(fakeId(1)), false, 0, 100, 1],
      [objectKeys.chunk(fakeId(2)), false, 0, 200, 1],
    ];
    if (objectKeys.chunk(fakeId(2)) < objectKeys.chunk(fakeId(1))) expected.reverse();
    expect(v1runs.map((r) => [r.key, r.packed, r.offset, r.length, r.chunks.length])).toEqual(expected);
  });
});

/** A memory store whose put can fail, or wait, for keys under a prefix. */
class ControlledStore extends MemoryObjectStore {
  failPrefix: string | undefined;
  delayMs = 0;
  readonly putKeys: string[] = [];
  override async put(key: string, body: Uint8Array, checksum?: PutChecksum): Promise<void> {
    this.putKeys.push(key);
    if (this.delayMs) await new Promise((ok) => setTimeout(ok, this.delayMs));
    if (this.failPrefix !== undefined && key.startsWith(this.failPrefix)) throw new StorageUnavailable(`PUT s3://b/${key} failed: injected`);
    return super.put(key, body, checksum);
  }
}

/** Everything the store holds under `index/`, opened. */
async function indexObjects(store: MemoryObjectStore): Promise<Map<string, PackContents[]>> {
  const out = new Map<string, PackContents[]>();
  for await (const o of store.list('index/')) {
    const id = o.key.slice('index/'.length);
    out.set(id, await decodeIndexObject(keys, (await store.get(o.key))!, id));
  }
  return out;
}

/**
 * Places `plain` as chunk `id`, sealed on this thread straight into the pack buffer the
 * writer hands out (as a worker does), after `before`; the placement is reported after
 * `after` (as a worker's reply comes later, and not in the order of the reservations).
 */
function placeChunk(
  writer: PackWriter<PackBuffer>,
  id: string,
  plain: Buffer,
  o: { before?: () => Promise<unknown>; after?: () => Promise<unknown>; seen?: Placement[] } = {},
) {
  return writer.place(id, async (buf) => {
    await o.before?.();
    const placed = sealIntoPack(keys, plain, id, {}, buf);
    o.seen?.push(placed);
    await o.after?.();
    return placed;
  });
}

/** `n` chunks of 600 random bytes placed at once, every one handed a pack before any is sealed; then the writer finishes. */
async function placeAllAtOnce(writer: PackWriter<PackBuffer>, n: number, prefix: string) {
  const seen: Placement[] = [];
  let open!: () => void;
  const gate = new Promise<void>((ok) => (open = ok));
  const chunks = Array.from({ length: n }, (_, i) => ({ id: fakeId(`${prefix}${i}`), plain: randomBytes(600) }));
  const placing = chunks.map((c) => placeChunk(writer, c.id, c.plain, { before: () => gate, seen }));
  open();
  const at = await Promise.all(placing);
  return { chunks, at, seen, written: await writer.finish() };
}

/** Every pack the store holds: its trailer read back, and checked to list chunks back to back from byte 0. */
function storedPacks(store: MemoryObjectStore): Map<string, { body: Buffer; contents: PackContents; chunkBytes: number }> {
  const out = new Map<string, { body: Buffer; contents: PackContents; chunkBytes: number }>();
  for (const [key, body] of store.objects) {
    const packId = packIdOfKey(key);
    if (!packId) continue;
    const contents = readPackTrailer(keys, body, packId);
    let end = 0;
    for (const c of contents.chunks) {
      expect(c.offset).toBe(end);
      end += c.length;
    }
    out.set(packId, { body, contents, chunkBytes: end });
  }
  return out;
}

/** `plain` is stored as chunk `id` where `at` says. */
async function expectChunkAt(store: MemoryObjectStore, at: { packId: string; offset: number; length: number }, id: string, plain: Buffer) {
  const body = store.objects.get(objectKeys.pack(at.packId))!;
  expect((await open(keys, body.subarray(at.offset, at.offset + at.length), id)).equals(plain)).toBe(true);
}

describe('PackWriter', () => {
  it('closes a pack once targetBytes are reserved, writes index objects after the first packs, then every packsPerIndex and at finish, and every chunk opens where place said', async () => {
    const rand = prng(0x9ac);
    const store = new MemoryObjectStore();
    const targetBytes = 10_000;
    const maxChunkBytes = 3000 + 31;
    const writer = new PackWriter({ store, keys, targetBytes, maxChunkBytes, packsPerIndex: 3, newBuffer: newPackBuffer });
    const added: { id: string; plain: Buffer; packId: string; offset: number; length: number }[] = [];
    for (let n = 0; n < 120; n++) {
      const plain = bytesOf(rand, 100 + rand(3000 - 100)); // incompressible: sealed to its length + 31
      const id = fakeId(`w${n}`);
      added.push({ id, plain, ...(await placeChunk(writer, id, plain)) });
    }
    const written = await writer.finish();

    const packs = storedPacks(store);
    expect([...packs.keys()].sort()).toEqual(written.map((w) => w.pack.id).sort());
    expect(written.length).toBeGreaterThanOrEqual(8);
    const lastPack = added.at(-1)!.packId;
    for (const w of written) {
      const { contents, chunkBytes } = packs.get(w.pack.id)!;
      expect(contents).toEqual(w);
      // One chunk in flight at a time: closed by the chunk that reached the target (but the last pack).
      expect(chunkBytes - w.chunks.at(-1)!.length).toBeLessThan(targetBytes);
      if (w.pack.id !== lastPack) expect(chunkBytes).toBeGreaterThanOrEqual(targetBytes);
      expect(w.pack.size).toBeLessThanOrEqual(writer.capacity);
    }
    for (const a of added) {
      expect(a.length).toBe(a.plain.length + 31);
      await expectChunkAt(store, a, a.id, a.plain);
    }

    // Index objects after 1, 2, then every 2-3 packs (at most packsPerIndex, plus one more
    // pack that landed meanwhile), the rest at finish; together they list every pack once.
    const indexes = await indexObjects(store);
    expect([...indexes.keys()].sort()).toEqual(writer.indexes.slice().sort());
    const sizes = writer.indexes.map((id) => indexes.get(id)!.length);
    expect(sizes[0]).toBe(1);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(3 + 1);
    expect(indexes.size).toBeLessThanOrEqual(2 + Math.ceil(written.length / 2));
    expect(indexes.size).toBeGreaterThanOrEqual(Math.ceil(written.length / 4));
    expect(
      [...indexes.values()]
        .flat()
        .map((p) => p.pack.id)
        .sort(),
    ).toEqual(written.map((w) => w.pack.id).sort());

    // The repository's index finds every chunk where place said it is.
    const index = await RepositoryIndex.load(store, keys);
    expect(index.objects).toBe(indexes.size);
    for (const a of added) expect(index.get(a.id)).toMatchObject({ key: objectKeys.pack(a.packId), offset: a.offset, length: a.length });
    expect(writer.bytesWritten).toBe([...store.objects.values()].reduce((s, b) => s + b.length, 0));
  });

  it('closes a pack at maxChunks chunks however small they seal (its trailer within the room kept for it), and stores an index object once entriesPerIndex chunks are unindexed', async () => {
    const store = new MemoryObjectStore();
    const maxChunks = 50;
    const writer = new PackWriter({ store, keys, maxChunkBytes: 1000, maxChunks, entriesPerIndex: 120, packsPerIndex: 1000, newBuffer: newPackBuffer });
    expect(writer.capacity).toBe(8 * 1024 * 1024 + 1000 * 8 + trailerBytes(maxChunks));
    // Chunks of zeros and a number: each seals to a few dozen bytes, 8 MiB would hold ~200,000.
    const added: { id: string; plain: Buffer; packId: string; offset: number; length: number }[] = [];
    for (let n = 0; n < 1000; n++) {
      const plain = Buffer.alloc(1000);
      plain.writeUInt32BE(n);
      const id = fakeId(`tiny${n}`);
      added.push({ id, plain, ...(await placeChunk(writer, id, plain)) });
    }
    const written = await writer.finish();
    expect(written.map((w) => w.chunks.length)).toEqual(Array.from({ length: 20 }, () => maxChunks));
    const packs = storedPacks(store);
    for (const w of written) {
      const { body, chunkBytes } = packs.get(w.pack.id)!;
      expect(body.length - chunkBytes).toBeLessThanOrEqual(trailerBytes(maxChunks));
    }
    for (const a of added.filter((_, n) => n % 97 === 0)) await expectChunkAt(store, a, a.id, a.plain);
    // Index objects after 1, 2 and 4 packs (1, 1, 2 packs each), then every 3 packs (their 150 entries pass 120; packsPerIndex is far), the rest at finish.
    const indexes = await indexObjects(store);
    const entries = writer.indexes.map((id) => indexes.get(id)!.reduce((n, p) => n + p.chunks.length, 0));
    expect(entries.slice(0, 5)).toEqual([50, 50, 100, 150, 150]);
    expect(Math.max(...entries)).toBeLessThan(120 + maxChunks);
    expect(entries.reduce((a, b) => a + b)).toBe(1000);
  });

  it('with many chunks sealed at once, finishing in any order, while uploads are slow: packs hold their chunks back to back within capacity, the trailer lists exactly the chunks placed, and at most maxUploads + 1 buffers are made', async () => {
    const rand = prng(0x51);
    const store = new ControlledStore();
    store.delayMs = 5;
    const targetBytes = 2000;
    const maxInFlight = 8;
    let buffers = 0;
    const writer = new PackWriter({
      store,
      keys,
      targetBytes,
      maxChunkBytes: 631,
      maxInFlight,
      maxUploads: 1,
      newBuffer: (n) => (buffers++, newPackBuffer(n)),
    });
    const added: { id: string; plain: Buffer; packId: string; offset: number; length: number }[] = [];
    const seen: Placement[] = [];
    // Eight sealers at once, as the backup pipeline's chunks in flight: each takes a random
    // while before it reserves and after, so they are placed in another order than they reserved.
    await Promise.all(
      Array.from({ length: maxInFlight }, async (_, a) => {
        for (let n = 0; n < 12; n++) {
          const plain = randomBytes(100 + rand(500));
          const id = fakeId(`c${a}/${n}`);
          const pause = () => new Promise((ok) => setTimeout(ok, rand(4)));
          added.push({ id, plain, ...(await placeChunk(writer, id, plain, { before: pause, after: pause, seen })) });
        }
      }),
    );
    const written = await writer.finish();
    expect(seen.every((p) => p.fit)).toBe(true); // never more in flight than the buffers are sized for
    expect(buffers).toBeLessThanOrEqual(2);
    const packs = storedPacks(store);
    expect(packs.size).toBe(written.length);
    for (const w of written) {
      const { body, contents, chunkBytes } = packs.get(w.pack.id)!;
      expect(body.length).toBe(w.pack.size);
      expect(w.pack.size).toBeLessThanOrEqual(writer.capacity);
      expect(chunkBytes).toBeLessThanOrEqual(targetBytes - 1 + maxInFlight * 631);
      // Exactly the chunks placed in it, each once.
      const placedHere = added.filter((a) => a.packId === w.pack.id).map((a) => ({ id: a.id, offset: a.offset, length: a.length }));
      expect(contents.chunks).toEqual(placedHere.sort((x, y) => x.offset - y.offset));
      // Chunks past the target were in flight when it was reached: fewer than maxInFlight.
      expect(contents.chunks.filter((c) => c.offset >= targetBytes).length).toBeLessThan(maxInFlight);
    }
    expect(written.filter((w) => packs.get(w.pack.id)!.chunkBytes > targetBytes + 631).length).toBeGreaterThan(0); // sealed in parallel: packs overshoot by chunks in flight
    for (const a of added) await expectChunkAt(store, a, a.id, a.plain);
  });

  it('never hands out more than fits; a chunk that does not fit all the same (sealed bigger than maxChunkBytes said) is sealed again into the next pack, and every chunk opens where place said', async () => {
    const store = new MemoryObjectStore();
    // Sized for chunks of 300 bytes at most, but these seal to 631.
    const writer = new PackWriter({ store, keys, targetBytes: 1000, maxChunkBytes: 300, maxInFlight: 1, trailerRoom: 0, newBuffer: newPackBuffer });
    expect(writer.capacity).toBe(1300);
    const { chunks, at, seen, written } = await placeAllAtOnce(writer, 6, 'f');
    expect(seen.filter((p) => !p.fit).length).toBeGreaterThan(0);
    expect(seen.filter((p) => !p.fit).every((p) => p.sealedLength === 631)).toBe(true);
    expect(seen.filter((p) => p.fit)).toHaveLength(6);
    const packs = storedPacks(store);
    for (const w of written) {
      expect(packs.get(w.pack.id)!.contents).toEqual(w);
      expect(packs.get(w.pack.id)!.chunkBytes).toBeLessThanOrEqual(writer.capacity); // (no trailer room: the trailer is appended)
    }
    expect(written.flatMap((w) => w.chunks.map((c) => c.id)).sort()).toEqual(chunks.map((c) => c.id).sort());
    for (const [i, c] of chunks.entries()) await expectChunkAt(store, at[i]!, c.id, c.plain);
  });

  it('bounds a pack by its target plus maxHeadroomBytes whatever the chunk size: with large chunks, fewer go into one pack at once', async () => {
    const store = new MemoryObjectStore();
    const maxChunkBytes = 631;
    const writer = new PackWriter({
      store,
      keys,
      targetBytes: 1000,
      maxChunkBytes,
      maxInFlight: 8,
      maxHeadroomBytes: 700,
      trailerRoom: 0,
      newBuffer: newPackBuffer,
    });
    expect(writer.capacity).toBe(1000 + 700); // not 1000 + 8 x 631
    const { chunks, at, seen, written } = await placeAllAtOnce(writer, 8, 'h');
    expect(seen.every((p) => p.fit)).toBe(true); // the chunks in flight always fit
    const packs = storedPacks(store);
    expect(written.every((w) => w.chunks.length <= 2 && packs.get(w.pack.id)!.chunkBytes <= writer.capacity)).toBe(true);
    expect(written.flatMap((w) => w.chunks.map((c) => c.id)).sort()).toEqual(chunks.map((c) => c.id).sort());
    for (const [i, c] of chunks.entries()) await expectChunkAt(store, at[i]!, c.id, c.plain);
  });

  it('a chunk that reaches targetBytes closes its pack; a trailer with no room left is appended; a chunk larger than a pack buffer is refused', async () => {
    const store = new MemoryObjectStore();
    const writer = new PackWriter({ store, keys, targetBytes: 500, maxChunkBytes: 1531, maxInFlight: 1, trailerRoom: 0, newBuffer: newPackBuffer });
    const [small, big, next] = [randomBytes(100), randomBytes(1500), randomBytes(100)];
    const a = await placeChunk(writer, fakeId(1), small);
    const b = await placeChunk(writer, fakeId(2), big);
    const c = await placeChunk(writer, fakeId(3), next);
    expect([a.packId, a.offset, b.packId, b.offset]).toEqual([a.packId, 0, a.packId, 131]);
    expect([c.packId !== a.packId, c.offset]).toEqual([true, 0]);
    await expect(placeChunk(writer, fakeId(4), randomBytes(3000))).rejects.toThrow(RangeError);
    await writer.finish();
    // 131 + 1531 bytes of chunks in a 2031-byte buffer: the trailer (~120 bytes) fits; 1 + 1 chunks, too.
    for (const at of [a, b, c]) expect(store.objects.get(objectKeys.pack(at.packId))!.length).toBeLessThanOrEqual(writer.capacity);
    const tight = new PackWriter({ store, keys, targetBytes: 1, maxChunkBytes: 631, maxInFlight: 1, trailerRoom: 0, newBuffer: newPackBuffer });
    const plain = randomBytes(600);
    const d = await placeChunk(tight, fakeId(5), plain);
    const [w] = await tight.finish();
    expect(w!.pack.size).toBeGreaterThan(tight.capacity); // the trailer did not fit: appended by a copy
    expect(readPackTrailer(keys, store.objects.get(objectKeys.pack(d.packId))!, d.packId)).toEqual(w);
    await expectChunkAt(store, d, fakeId(5), plain);
  });

  it('a seal that fails after reserving its place fails the writer: its pack, with an unwritten gap, is never uploaded, finish rejects and abandon returns', async () => {
    const store = new ControlledStore();
    const writer = new PackWriter({ store, keys, targetBytes: 100_000, maxChunkBytes: 1031, newBuffer: newPackBuffer });
    const first = await placeChunk(writer, fakeId(1), randomBytes(1000));
    let release!: () => void;
    const gate = new Promise<void>((ok) => (release = ok));
    // One chunk is still being sealed into the pack when another fails mid-way.
    const after = placeChunk(writer, fakeId(3), randomBytes(1000), { before: () => gate });
    const crash = new Error('chunk worker 0 exited with code 1');
    await expect(
      writer.place(fakeId(2), (buf) => {
        Atomics.add(buf.cursor, 0, 900); // reserved, never written
        throw crash;
      }),
    ).rejects.toBe(crash);
    release();
    expect(await after).toMatchObject({ packId: first.packId, offset: 1031 + 900 });
    await expect(placeChunk(writer, fakeId(4), randomBytes(10))).rejects.toBe(crash);
    await expect(writer.finish()).rejects.toBe(crash);
    await writer.abandon();
    expect(store.putKeys).toEqual([]);
  });

  it('a failed pack upload surfaces from finish, and no index object lists the pack', async () => {
    const store = new ControlledStore();
    store.failPrefix = 'packs/';
    const writer = new PackWriter({ store, keys, maxChunkBytes: 1000, newBuffer: newPackBuffer });
    await placeChunk(writer, fakeId(1), randomBytes(500));
    await expect(writer.finish()).rejects.toMatchObject({ name: 'Mover.StorageUnavailable', message: expect.stringMatching(/^PUT s3:\/\/b\/packs\//) });
    expect(store.putKeys.filter((k) => k.startsWith('index/'))).toEqual([]);
  });

  it('a failed pack upload surfaces from a later place, then from finish; abandon waits for what is in flight', async () => {
    const store = new ControlledStore();
    store.failPrefix = 'packs/';
    const writer = new PackWriter({ store, keys, targetBytes: 1000, maxChunkBytes: 631, maxUploads: 1, newBuffer: newPackBuffer });
    let failedAt: number | undefined;
    let error: unknown;
    for (let n = 0; n < 10 && failedAt === undefined; n++) {
      await placeChunk(writer, fakeId(n), randomBytes(600)).catch((err: unknown) => {
        failedAt = n;
        error = err;
      });
    }
    // The first pack closes at the second chunk and its upload fails: a later place finds it.
    expect(failedAt).toBeGreaterThanOrEqual(2);
    expect(failedAt).toBeLessThan(10);
    expect(error).toMatchObject({ name: 'Mover.StorageUnavailable' });
    await expect(placeChunk(writer, fakeId(99), randomBytes(10))).rejects.toBe(error);
    await expect(writer.finish()).rejects.toBe(error);
    await writer.abandon();
    expect(store.putKeys.filter((k) => k.startsWith('index/'))).toEqual([]);
  });

  it('a failed index upload surfaces from finish', async () => {
    const store = new ControlledStore();
    store.failPrefix = 'index/';
    const writer = new PackWriter({ store, keys, maxChunkBytes: 1000, newBuffer: newPackBuffer });
    await placeChunk(writer, fakeId(1), randomBytes(500));
    await expect(writer.finish()).rejects.toMatchObject({ name: 'Mover.StorageUnavailable', message: expect.stringMatching(/index\//) });
  });

  it('a failed index upload every packsPerIndex packs surfaces from a later place or finish', async () => {
    const store = new ControlledStore();
    store.failPrefix = 'index/';
    const writer = new PackWriter({ store, keys, targetBytes: 1000, maxChunkBytes: 631, packsPerIndex: 2, maxUploads: 1, newBuffer: newPackBuffer });
    let error: unknown;
    for (let n = 0; n < 10 && !error; n++) await placeChunk(writer, fakeId(n), randomBytes(600)).catch((err: unknown) => void (error = err));
    error ??= await writer.finish().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toMatchObject({ name: 'Mover.StorageUnavailable', message: expect.stringMatching(/index\//) });
  });
});

/** Where each chunk is, as a plain Map from the same listings: every copy, in the order listed. */
function naiveIndex(objects: readonly PackContents[][]): Map<string, ChunkLocation[]> {
  const out = new Map<string, ChunkLocation[]>();
  for (const packs of objects) {
    for (const p of packs) {
      for (const c of p.chunks) {
        const loc = { pack: { id: p.pack.id, size: p.pack.size }, key: objectKeys.pack(p.pack.id), offset: c.offset, length: c.length };
        out.set(c.id, [...(out.get(c.id) ?? []), loc]);
      }
    }
  }
  return out;
}

/**
 * Index objects whose chunks repeat: ids are fresh, or taken again from `pool` (the same
 * chunk in another pack or object, or twice in one pack), or share their first 4 or 8
 * bytes with a pooled id (a different chunk the hash table must tell apart).
 */
function randomObjects(rand: (n: number) => number, pool: string[], maxObjects = 6): PackContents[][] {
  const id = () => {
    const r = pool.length === 0 ? 0 : rand(10);
    if (r >= 1 && r <= 3) return pool[rand(pool.length)]!;
    // A shared prefix of 4, 8 or 12 bytes: the same first slot, then the same fingerprint too (bytes 8-11).
    const prefix = r === 4 ? pool[rand(pool.length)]!.slice(0, 8 * (1 + rand(3))) : '';
    const fresh = prefix + hexOf(rand, 32).slice(prefix.length);
    pool.push(fresh);
    return fresh;
  };
  return Array.from({ length: rand(maxObjects + 1) }, () =>
    Array.from({ length: rand(4) }, () => {
      let at = 0;
      const chunks = Array.from({ length: rand(15) }, () => {
        const length = 1 + rand(4000);
        const c = { id: id(), offset: at, length };
        at += length;
        return c;
      });
      return { pack: { id: hexOf(rand, 16), size: at + rand(100) }, chunks };
    }),
  );
}

/** The index agrees with the naive Map: size, every copy in order, first copy by get; and absent ids (some sharing a prefix with present ones) are not found. */
function expectAgrees(index: RepositoryIndex, naive: Map<string, ChunkLocation[]>, rand: (n: number) => number, label: string, anyOrder = false): void {
  expect(index.size, label).toBe(naive.size);
  for (const [id, locs] of naive) {
    const all = index.all(id);
    if (anyOrder) {
      const text = (l: ChunkLocation[]) => l.map((x) => JSON.stringify([x.key, x.pack, x.offset, x.length])).sort();
      expect(text(all), `${label}: ${id}`).toEqual(text(locs));
      expect(index.get(id), `${label}: ${id}`).toEqual(all[0]);
    } else {
      expect(all, `${label}: ${id}`).toEqual(locs);
      expect(index.get(id), `${label}: ${id}`).toEqual(locs[0]);
    }
  }
  const present = [...naive.keys()];
  const absent = Array.from({ length: 20 }, (_, n) => (present.length > 0 && n % 2 === 0 ? present[rand(present.length)]!.slice(0, 8 + 8 * rand(7)) : '')).map(
    (prefix) => prefix + hexOf(rand, 32).slice(prefix.length),
  );
  for (const id of absent.filter((a) => !naive.has(a))) {
    expect(index.get(id), `${label}: absent ${id}`).toBeUndefined();
    expect(index.all(id), `${label}: absent ${id}`).toEqual([]);
  }
}

describe('RepositoryIndex', () => {
  it('agrees with a naive Map over random listings with repeated chunks and shared id prefixes (property, 300 cases)', () => {
    const rand = prng(0x1dea);
    let repeated = 0;
    for (let n = 0; n < 300; n++) {
      const objects = randomObjects(rand, []);
      const naive = naiveIndex(objects);
      repeated += [...naive.values()].filter((l) => l.length > 1).length;
      const label = `case ${n}`;
      const index = RepositoryIndex.of(objects);
      expect(index.objects, label).toBe(objects.length);
      expectAgrees(index, naive, rand, label);
      // The compact listings (as IndexCache keeps them) give the same index.
      expectAgrees(RepositoryIndex.of(objects.map((o) => IndexListing.of(o))), naive, rand, `${label} (listings)`);
    }
    expect(repeated).toBeGreaterThan(100);
  });

  it('holds many chunks, some listed many times (20,000 entries)', () => {
    const rand = prng(0xb16);
    const hot = Array.from({ length: 50 }, () => hexOf(rand, 32));
    const objects: PackContents[][] = Array.from({ length: 40 }, () =>
      Array.from({ length: 25 }, () => {
        const chunks = Array.from({ length: 20 }, (_, c) => ({ id: rand(4) === 0 ? hot[rand(hot.length)]! : hexOf(rand, 32), offset: c * 100, length: 100 }));
        return { pack: { id: hexOf(rand, 16), size: 2000 }, chunks };
      }),
    );
    const naive = naiveIndex(objects);
    const index = RepositoryIndex.of(objects);
    expect(Math.max(...hot.map((id) => index.all(id).length))).toBeGreaterThan(50);
    expectAgrees(index, naive, rand, 'large');
  });

  it('finds nothing for ids that are not 64 hex digits, and nothing in the empty index', () => {
    const id = fakeId(1);
    const index = RepositoryIndex.of([[{ pack: { id: 'ab'.repeat(16), size: 100 }, chunks: [{ id, offset: 0, length: 100 }] }]]);
    expect(index.get(id)).toMatchObject({ offset: 0, length: 100 });
    for (const bad of ['', id.slice(0, 63), `${id}0`, `${id.slice(0, 62)}zz`, `z${id.slice(1)}`]) {
      expect(index.get(bad), bad).toBeUndefined();
      expect(index.all(bad), bad).toEqual([]);
    }
    const empty = RepositoryIndex.empty();
    expect([empty.size, empty.objects, empty.get(id), empty.all(id)]).toEqual([0, 0, undefined, []]);
    const none = RepositoryIndex.of([[], [{ pack: { id: 'cd'.repeat(16), size: 0 }, chunks: [] }]]);
    expect([none.size, none.objects, none.get(id), none.all(id)]).toEqual([0, 2, undefined, []]);
  });
});

describe.each([
  { where: 'in memory', spill: false },
  { where: 'in a local folder', spill: true },
])('IndexCache, listings $where', ({ spill }) => {
  const dir = join(tmpdir(), `lifeboat-index-test-${process.pid}`);
  afterAll(() => rm(dir, { recursive: true, force: true }));
  /** A cache whose listings are kept as this round says (spilled to a temporary folder). */
  const cacheOf = (store: MemoryObjectStore, parallelism?: number) =>
    new IndexCache(store, keys, { ...(parallelism ? { parallelism } : {}), ...(spill ? { dir } : {}) });

  /** Counts GETs of index objects. */
  class CountingGets extends MemoryObjectStore {
    indexGets = 0;
    override async get(key: string, opts?: Parameters<MemoryObjectStore['get']>[1]) {
      if (key.startsWith('index/')) this.indexGets++;
      return super.get(key, opts);
    }
  }
  const writeIndex = async (store: MemoryObjectStore, indexId: string, packId: string, ids: string[]) =>
    store.put(
      objectKeys.index(indexId),
      await encodeIndexObject(keys, indexId, [{ pack: { id: packId, size: 1000 }, chunks: ids.map((id, i) => ({ id, offset: i * 10, length: 10 })) }]),
    );

  it('reads only index objects it has not read, and forgets those that are gone', async () => {
    const store = new CountingGets();
    const cache = cacheOf(store);
    await writeIndex(store, 'a'.repeat(32), '1'.repeat(32), [fakeId(1), fakeId(2)]);
    const first = await cache.refresh();
    expect([first.size, first.objects, store.indexGets, cache.lastRead]).toEqual([2, 1, 1, 1]);
    await writeIndex(store, 'b'.repeat(32), '2'.repeat(32), [fakeId(3)]);
    const second = await cache.refresh();
    expect([second.size, second.objects, store.indexGets, cache.lastRead]).toEqual([3, 2, 2, 1]);
    expect(second.get(fakeId(3))?.key).toBe(objectKeys.pack('2'.repeat(32)));
    // Garbage collection rewrote the first object without pack 1.
    store.objects.delete(objectKeys.index('a'.repeat(32)));
    const third = await cache.refresh();
    expect([third.size, third.get(fakeId(1)), store.indexGets, cache.lastRead]).toEqual([1, undefined, 2, 0]);
  });

  it('stays equal to the index of the objects listed, as objects come and go (property, 40 refreshes)', async () => {
    const rand = prng(0xcac4e);
    const store = new CountingGets();
    const cache = cacheOf(store);
    const live = new Map<string, PackContents[]>();
    const pool: string[] = [];
    let gets = 0;
    for (let step = 0; step < 40; step++) {
      const added: string[] = [];
      for (const packs of randomObjects(rand, pool, 3)) {
        const indexId = hexOf(rand, 16);
        added.push(indexId);
        live.set(indexId, packs);
        await store.put(objectKeys.index(indexId), await encodeIndexObject(keys, indexId, packs));
      }
      const gone = [...live.keys()].filter(() => rand(5) === 0);
      for (const indexId of gone) {
        live.delete(indexId);
        store.objects.delete(objectKeys.index(indexId));
      }
      const index = await cache.refresh();
      const label = `step ${step}`;
      // Only the new objects (those not dropped at once) are read.
      gets += cache.lastRead;
      expect([cache.lastRead, index.objects, store.indexGets], label).toEqual([added.filter((a) => live.has(a)).length, live.size, gets]);
      // Objects are indexed in the order the cache first read them: compare copies in any order.
      expectAgrees(index, naiveIndex([...live.values()]), rand, label, true);
    }
    expect(live.size).toBeGreaterThan(5);
  });

  /**
   * A store whose LIST and GET let a test act in the middle, as garbage collection does
   * beside a mover: `onList` runs after the LIST yielded its first key (the memory store's
   * LIST, like S3's pages, does not see keys written behind it and skips keys deleted
   * ahead of it), `onGet` before a GET of an index object reads it.
   */
  class RacingStore extends CountingGets {
    lists = 0;
    onList?: () => Promise<void>;
    onGet?: (key: string) => Promise<void>;
    override async *list(prefix: string) {
      this.lists++;
      let first = true;
      for await (const o of super.list(prefix)) {
        yield o;
        if (first && this.onList) {
          const hook = this.onList;
          this.onList = undefined;
          await hook();
        }
        first = false;
      }
    }
    override async get(key: string, opts?: Parameters<MemoryObjectStore['get']>[1]) {
      if (key.startsWith('index/') && this.onGet) await this.onGet(key);
      return super.get(key, opts);
    }
  }
  const pk = (n: number) => n.toString(16).padStart(32, '0');
  /** Index objects b, c, d (one pack of two chunks each), and what a merge of c and d into `merged` lists. */
  async function threeObjects(store: MemoryObjectStore) {
    const ids = { b: 'b'.repeat(32), c: 'c'.repeat(32), d: 'd'.repeat(32) };
    await writeIndex(store, ids.b, pk(1), [fakeId(1), fakeId(2)]);
    await writeIndex(store, ids.c, pk(2), [fakeId(3), fakeId(4)]);
    await writeIndex(store, ids.d, pk(3), [fakeId(5), fakeId(6)]);
    /** What garbage collection does: the merged object stored, then its sources deleted. */
    const merge = async (merged: string, sources: string[]) => {
      const packs = (await Promise.all(sources.map(async (id) => decodeIndexObject(keys, (await store.get(objectKeys.index(id)))!, id)))).flat();
      await store.put(objectKeys.index(merged), await encodeIndexObject(keys, merged, packs));
      for (const id of sources) store.objects.delete(objectKeys.index(id));
    };
    return { ids, merge };
  }
  const expectAllSix = (index: RepositoryIndex) => {
    expect(index.size).toBe(6);
    for (let n = 1; n <= 6; n++) expect(index.get(fakeId(n))?.key, `chunk ${n}`).toBe(objectKeys.pack(pk(Math.ceil(n / 2))));
  };

  it('lists again when objects were merged during its LIST: a first refresh misses neither the merged object nor the objects it replaced', async () => {
    const store = new RacingStore();
    const { ids, merge } = await threeObjects(store);
    // Mid-LIST (after b), c and d are merged into an object whose key the LIST has passed.
    store.onList = () => merge('0'.repeat(32), [ids.c, ids.d]);
    const cache = cacheOf(store);
    const index = await cache.refresh();
    expectAllSix(index);
    expect(index.objects).toBe(2);
    expect([store.lists, cache.lastLists]).toEqual([2, 2]);
  });

  it('lists again when an object it knew is gone: a warm cache finds the merged object that replaced it', async () => {
    const store = new RacingStore();
    const { ids, merge } = await threeObjects(store);
    const cache = cacheOf(store);
    expectAllSix(await cache.refresh());
    store.onList = () => merge('0'.repeat(32), [ids.c, ids.d]);
    const index = await cache.refresh();
    expectAllSix(index);
    expect(index.objects).toBe(2);
    expect(cache.lastRead).toBe(1); // the merged object only
  });

  it('lists again when a listed object is gone by its GET, and reads the object that replaced it', async () => {
    const store = new RacingStore();
    const { ids, merge } = await threeObjects(store);
    store.onGet = async (key) => {
      if (key !== objectKeys.index(ids.c)) return;
      store.onGet = undefined;
      await merge('e'.repeat(32), [ids.c, ids.d]);
    };
    const cache = cacheOf(store, 1);
    const index = await cache.refresh();
    expectAllSix(index);
    expect(index.objects).toBe(2);
    expect(cache.lastLists).toBe(3); // b c d; then b e (d gone); then b e again
  });

  it('keeps chunks listed twice harmless (a merged object stored, its sources not yet deleted): one chunk, its copy tried once', async () => {
    const store = new CountingGets();
    const b = 'b'.repeat(32);
    await writeIndex(store, b, pk(1), [fakeId(1), fakeId(2)]);
    await writeIndex(store, 'f'.repeat(32), pk(1), [fakeId(1), fakeId(2)]);
    // Chunk 1 is also in pack 2, which two objects list.
    await writeIndex(store, 'a'.repeat(32), pk(2), [fakeId(1)]);
    await writeIndex(store, 'e'.repeat(32), pk(2), [fakeId(1)]);
    const index = await cacheOf(store).refresh();
    expect([index.size, index.objects]).toEqual([2, 4]);
    const here = index.get(fakeId(2))!;
    expect(here.key).toBe(objectKeys.pack(pk(1)));
    expect(index.all(fakeId(2))).toHaveLength(2);
    expect(index.otherCopies(fakeId(2), here)).toEqual([]);
    // A reader whose copy of chunk 1 in pack 1 is damaged tries pack 2, once.
    expect(index.all(fakeId(1))).toHaveLength(4);
    expect(index.otherCopies(fakeId(1), { ...here, offset: 0 }).map((c) => c.key)).toEqual([objectKeys.pack(pk(2))]);
  });

  it('lists twice when nothing changes meanwhile, and reads nothing again', async () => {
    const store = new RacingStore();
    await threeObjects(store);
    const cache = cacheOf(store);
    await cache.refresh();
    await cache.refresh();
    expect([store.lists, store.indexGets, cache.lastRead, cache.lastLists]).toEqual([4, 3, 0, 2]);
  });

  it('shares a refresh asked for while one runs', async () => {
    const store = new CountingGets();
    await writeIndex(store, 'c'.repeat(32), '3'.repeat(32), [fakeId(4)]);
    const cache = cacheOf(store);
    const [a, b] = await Promise.all([cache.refresh(), cache.refresh()]);
    expect(a).toBe(b);
    expect(store.indexGets).toBe(1);
  });
});
