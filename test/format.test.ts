import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Corrupt } from '../contracts/errors.ts';
import {
  chunkId,
  Cipher,
  Compression,
  deriveKeys,
  encodeManifest,
  FORMAT_VERSION,
  isZero,
  looksCompressible,
  objectKeys,
  open,
  seal,
  sealSync,
  type Manifest,
} from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { KeyFileWrapper, loadMasterKey, parseStoredKey } from '../repository/keyring.ts';
import type { ListedKey, ObjectInfo, ObjectStore } from '../core/object-store.ts';
import { prng } from './helpers/prng.ts';

const HEADER_BYTES = 15;
const TAG_BYTES = 16;

function randomBuffer(rand: (n: number) => number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = rand(256);
  return b;
}

/** Resolves to the error `p` rejected with; fails the test if it resolves. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection, but the promise resolved');
}

async function expectCorrupt(p: Promise<unknown>): Promise<Corrupt> {
  const err = await rejection(p);
  expect(err).toBeInstanceOf(Corrupt);
  expect((err as Error).name).toBe('Mover.Corrupt');
  return err as Corrupt;
}

/** An in-memory ObjectStore: the test double for the repository. */
class MemoryStore implements ObjectStore {
  readonly objects = new Map<string, Buffer>();
  async put(key: string, body: Uint8Array): Promise<void> {
    this.objects.set(key, Buffer.from(body));
  }
  async get(key: string): Promise<Buffer | undefined> {
    const b = this.objects.get(key);
    return b ? Buffer.from(b) : undefined;
  }
  async head(key: string): Promise<ObjectInfo | undefined> {
    const b = this.objects.get(key);
    return b ? { size: b.length } : undefined;
  }
  async *list(prefix: string): AsyncIterable<ListedKey> {
    for (const [key, b] of [...this.objects].filter(([k]) => k.startsWith(prefix)).sort()) yield { key, size: b.length };
  }
}

const repoKeys = deriveKeys(randomBytes(32));
const otherRepoKeys = deriveKeys(randomBytes(32));
const compressible = Buffer.from('lifeboat '.repeat(4096));

describe('seal and open', () => {
  it.each([
    ['empty', Buffer.alloc(0)],
    ['small', Buffer.from('hello, disk')],
    ['incompressible', randomBytes(64 * 1024)],
    ['compressible', compressible],
  ])('round-trips %s input', async (_label, plaintext) => {
    const purpose = chunkId(repoKeys, plaintext);
    const sealed = await seal(repoKeys, plaintext, purpose);
    expect(await open(repoKeys, sealed, purpose)).toEqual(plaintext);
  });

  it('stores compressible input zstd-compressed and smaller than the plaintext', async () => {
    const sealed = await seal(repoKeys, compressible, 'c');
    expect(sealed[0]).toBe(FORMAT_VERSION);
    expect(FORMAT_VERSION).toBe(1);
    expect(sealed[1]).toBe(Compression.zstd);
    expect(sealed[2]).toBe(Cipher.aes256gcm);
    expect(sealed.length).toBeLessThan(compressible.length / 10);
  });

  it('stores incompressible input uncompressed at plaintext size plus header and tag', async () => {
    const plaintext = randomBytes(4096);
    const sealed = await seal(repoKeys, plaintext, 'r');
    expect(sealed[0]).toBe(1);
    expect(sealed[1]).toBe(Compression.none);
    expect(sealed.length).toBe(HEADER_BYTES + plaintext.length + TAG_BYTES);
  });

  it('does not run zstd on a chunk whose samples do not compress, and does on one that is compressible anywhere it is sampled', async () => {
    const random = randomBytes(512 * 1024);
    expect(looksCompressible(random)).toBe(false);
    for (const sealed of [await seal(repoKeys, random, 'r'), sealSync(repoKeys, random, 'r')]) {
      expect(sealed[1]).toBe(Compression.none);
      expect((await open(repoKeys, sealed, 'r')).equals(random)).toBe(true);
    }
    // Text at the start, middle or end only: one sample shrinks enough to try zstd on the whole chunk.
    for (const at of [0, 256 * 1024 - 2048, 512 * 1024 - 4096]) {
      const mixed = Buffer.from(random);
      compressible.copy(mixed, at, 0, 4096);
      expect(looksCompressible(mixed), `text at ${at}`).toBe(true);
    }
    expect(looksCompressible(compressible)).toBe(true);
    expect(looksCompressible(randomBytes(60 * 1024))).toBe(true); // small chunks are always tried
  });

  it('sealSync into a destination asked for once the size is known writes the same bytes as seal, and nothing when it is declined', async () => {
    const nonce = randomBytes(12);
    for (const plaintext of [compressible, randomBytes(512 * 1024), randomBytes(1000)]) {
      const expected = await seal(repoKeys, plaintext, 'r', { nonce });
      const asked: number[] = [];
      const dest = Buffer.alloc(expected.length + 20, 0xee);
      const into = sealSync(repoKeys, plaintext, 'r', { nonce }, (size) => (asked.push(size), dest.subarray(7, 7 + size)));
      expect(asked).toEqual([expected.length]); // asked once, for exactly the sealed size
      expect(into!.equals(expected)).toBe(true);
      expect(into!.buffer).toBe(dest.buffer); // written there, not copied
      expect(dest.subarray(7, 7 + expected.length).equals(expected)).toBe(true);
      expect(dest.subarray(0, 7).every((b) => b === 0xee) && dest.subarray(7 + expected.length).every((b) => b === 0xee)).toBe(true);
      expect(sealSync(repoKeys, plaintext, 'r', { nonce }, () => undefined)).toBeUndefined();
      expect(() => sealSync(repoKeys, plaintext, 'r', { nonce }, (size) => dest.subarray(0, size - 1))).toThrow(RangeError);
    }
  });

  it('uses a fresh nonce each time, so equal plaintexts seal to different bytes', async () => {
    const a = await seal(repoKeys, compressible, 'p');
    const b = await seal(repoKeys, compressible, 'p');
    expect(a.subarray(3, 15).equals(b.subarray(3, 15))).toBe(false);
  });

  it('never repeats a nonce over many seals (past the refills of its pool of random bytes)', () => {
    const seen = new Set<string>();
    const small = Buffer.from('x');
    for (let i = 0; i < 2000; i++) seen.add(sealSync(repoKeys, small, 'p').subarray(3, 15).toString('hex'));
    expect(seen.size).toBe(2000);
  });

  it('opens a sealed object held in an unaligned subarray of a larger buffer', async () => {
    const sealed = await seal(repoKeys, Buffer.from('inner'), 'p');
    const outer = Buffer.concat([Buffer.from([9, 9, 9]), sealed, Buffer.from([9])]);
    expect((await open(repoKeys, outer.subarray(3, 3 + sealed.length), 'p')).toString()).toBe('inner');
  });
});

describe('open rejects damaged or foreign objects with Mover.Corrupt', () => {
  it('rejects an object with any single bit flipped (200 random positions)', async () => {
    const rand = prng(0x5eed);
    const samples = [Buffer.alloc(0), Buffer.from('abc'), randomBuffer(rand, 700), compressible];
    const sealed = await Promise.all(samples.map((s, i) => seal(repoKeys, s, `chunk-${i}`)));
    let tried = 0;
    for (let n = 0; n < 200; n++) {
      const which = n % sealed.length;
      const original = sealed[which]!;
      const damaged = Buffer.from(original);
      const bit = rand(damaged.length * 8);
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const err = await rejection(open(repoKeys, damaged, `chunk-${which}`));
      expect((err as Error).name, `object ${which}, bit ${bit}`).toBe('Mover.Corrupt');
      tried++;
    }
    expect(tried).toBe(200);
    // The undamaged originals still open: the failures above come from the flips.
    for (const [i, s] of sealed.entries()) expect(await open(repoKeys, s, `chunk-${i}`)).toEqual(samples[i]);
  });

  it('rejects a truncated object, whether the tag or the header is cut', async () => {
    const sealed = await seal(repoKeys, randomBytes(100), 'p');
    await expectCorrupt(open(repoKeys, sealed.subarray(0, sealed.length - 1), 'p'));
    await expectCorrupt(open(repoKeys, sealed.subarray(0, HEADER_BYTES + TAG_BYTES - 1), 'p'));
    await expectCorrupt(open(repoKeys, sealed.subarray(0, 10), 'p'));
    await expectCorrupt(open(repoKeys, Buffer.alloc(0), 'p'));
  });

  it('rejects a chunk stored under another chunk id (wrong purpose)', async () => {
    const a = Buffer.from('chunk A contents');
    const b = Buffer.from('chunk B contents');
    const sealedA = await seal(repoKeys, a, chunkId(repoKeys, a));
    expect(await open(repoKeys, sealedA, chunkId(repoKeys, a))).toEqual(a);
    await expectCorrupt(open(repoKeys, sealedA, chunkId(repoKeys, b)));
  });

  it("rejects an object sealed with another repository's keys", async () => {
    const sealed = await seal(otherRepoKeys, Buffer.from('foreign'), 'p');
    await expectCorrupt(open(repoKeys, sealed, 'p'));
  });

  it('rejects an unknown format version byte and names the version', async () => {
    const sealed = await seal(repoKeys, Buffer.from('future'), 'p');
    for (const v of [0, 2, 255]) {
      const edited = Buffer.from(sealed);
      edited[0] = v;
      const err = await expectCorrupt(open(repoKeys, edited, 'p'));
      expect(err.message).toContain(`format version ${v}`);
    }
  });

  it('rejects unknown cipher and compression ids', async () => {
    const sealed = await seal(repoKeys, Buffer.from('ids'), 'p');
    const badCipher = Buffer.from(sealed);
    badCipher[2] = 7;
    expect((await expectCorrupt(open(repoKeys, badCipher, 'p'))).message).toContain('cipher id 7');
    const badCompression = Buffer.from(sealed);
    badCompression[1] = 9;
    expect((await expectCorrupt(open(repoKeys, badCompression, 'p'))).message).toContain('compression id 9');
  });

  it('throws only Mover.Corrupt for 500 random byte strings (fuzz)', async () => {
    const rand = prng(0xf022);
    const outcomes = new Map<string, number>();
    for (let n = 0; n < 500; n++) {
      const input = randomBuffer(rand, rand(201));
      // Half start with a plausible header so the fuzz also reaches authentication.
      if (n % 2 === 1 && input.length >= 3) {
        input[0] = FORMAT_VERSION;
        input[1] = rand(2);
        input[2] = Cipher.aes256gcm;
      }
      let outcome: string;
      try {
        await open(repoKeys, input, 'fuzz');
        outcome = 'returned';
      } catch (err) {
        outcome = err instanceof Corrupt && err.name === 'Mover.Corrupt' ? 'corrupt' : `other: ${String(err)}`;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    }
    expect(Object.fromEntries(outcomes)).toEqual({ corrupt: 500 });
  });
});

describe('chunkId', () => {
  const data = Buffer.from('some disk block');

  it('is deterministic for the same keys and data', () => {
    expect(chunkId(repoKeys, data)).toBe(chunkId(repoKeys, Buffer.from(data)));
    expect(chunkId(deriveKeys(Buffer.alloc(32, 7)), data)).toBe(chunkId(deriveKeys(Buffer.alloc(32, 7)), data));
    expect(chunkId(repoKeys, data)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('differs between repositories with different master keys', () => {
    expect(chunkId(repoKeys, data)).not.toBe(chunkId(otherRepoKeys, data));
  });

  it('differs for different data', () => {
    expect(chunkId(repoKeys, data)).not.toBe(chunkId(repoKeys, Buffer.from('some disk blocK')));
  });

  it('is not the plain SHA-256 of the data', () => {
    expect(chunkId(repoKeys, data)).not.toBe(createHash('sha256').update(data).digest('hex'));
  });

  it('derives distinct encryption and id keys, and rejects a master key that is not 32 bytes', async () => {
    expect(repoKeys.encryption.equals(repoKeys.id)).toBe(false);
    expect(() => deriveKeys(randomBytes(16))).toThrow(Corrupt);
  });
});

describe('manifests', () => {
  const manifest: Manifest = {
    version: 1,
    backupId: 'b-001',
    diskId: 'disk-0',
    sizeBytes: 2.5 * 1024 * 1024,
    chunkSize: 1024 * 1024,
    chunks: ['a'.repeat(64), null, 'b'.repeat(64)],
    storedSizes: { ['a'.repeat(64)]: 1000, ['b'.repeat(64)]: 2000 },
    storedSha256: { ['a'.repeat(64)]: 'q83vEjRWeJA=' },
  };

  it('round-trips through encode and decode', async () => {
    const sealed = await encodeManifest(repoKeys, manifest);
    expect(await decodeManifest(repoKeys, sealed, 'b-001', 'disk-0')).toEqual(manifest);
  });

  it('rejects a manifest read under a different backupId or diskId', async () => {
    const sealed = await encodeManifest(repoKeys, manifest);
    await expectCorrupt(decodeManifest(repoKeys, sealed, 'b-002', 'disk-0'));
    await expectCorrupt(decodeManifest(repoKeys, sealed, 'b-001', 'disk-1'));
  });

  it('rejects a manifest whose chunk count does not match sizeBytes/chunkSize', async () => {
    const tooFew = await encodeManifest(repoKeys, { ...manifest, sizeBytes: 3 * 1024 * 1024 + 1 });
    await expectCorrupt(decodeManifest(repoKeys, tooFew, 'b-001', 'disk-0'));
    const tooMany = await encodeManifest(repoKeys, { ...manifest, sizeBytes: 2 * 1024 * 1024 });
    await expectCorrupt(decodeManifest(repoKeys, tooMany, 'b-001', 'disk-0'));
  });
});

describe('isZero', () => {
  it('is true for zero buffers of odd lengths', () => {
    for (const n of [0, 1, 7, 9, 15, 63, 4097]) expect(isZero(Buffer.alloc(n)), `length ${n}`).toBe(true);
  });

  it('is true for unaligned zero subarrays of a larger buffer', () => {
    const big = Buffer.alloc(128);
    for (const [s, e] of [
      [1, 20],
      [3, 3],
      [5, 128],
      [7, 16],
      [8, 17],
    ] as const) {
      expect(isZero(big.subarray(s, e)), `subarray(${s}, ${e})`).toBe(true);
    }
  });

  it('is false when any single byte is set, at the first, last or middle position', () => {
    const big = Buffer.alloc(160);
    for (const [s, len] of [
      [0, 64],
      [0, 61],
      [1, 61],
      [3, 100],
      [8, 17],
    ] as const) {
      for (const pos of [0, Math.floor(len / 2), len - 1]) {
        const view = big.subarray(s, s + len);
        view[pos] = 0x01;
        expect(isZero(view), `subarray(${s}, +${len}) byte ${pos}`).toBe(false);
        view[pos] = 0;
        expect(isZero(view)).toBe(true);
      }
    }
  });

  it('ignores non-zero bytes outside the subarray', () => {
    const big = Buffer.alloc(40, 0xff);
    big.fill(0, 3, 30);
    expect(isZero(big.subarray(3, 30))).toBe(true);
    expect(isZero(big.subarray(2, 30))).toBe(false);
  });
});

describe('KeyFileWrapper and loadMasterKey', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-keyring-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates a 0600 key file holding 64 hex digits, and a second load reads the same key', async () => {
    const path = join(dir, 'nested', 'create.key');
    const first = await KeyFileWrapper.load(path, { create: true });
    const st = await stat(path);
    expect(st.mode & 0o777).toBe(0o600);
    const text = await readFile(path, 'utf8');
    expect(text.trim()).toMatch(/^[0-9a-f]{64}$/);

    const second = await KeyFileWrapper.load(path, { create: true });
    expect(await readFile(path, 'utf8')).toBe(text);
    const master = randomBytes(32);
    expect(await second.unwrap(await first.wrap(master))).toEqual(master);
  });

  it('rejects a key file that does not hold 64 hex digits', async () => {
    const path = join(dir, 'bad.key');
    await writeFile(path, 'not a key\n');
    await expectCorrupt(KeyFileWrapper.load(path));
  });

  it('fails for a missing key file without create, naming the path', async () => {
    const path = join(dir, 'missing.key');
    const err = await rejection(KeyFileWrapper.load(path));
    expect((err as Error).name).toBe('Mover.SourceUnavailable');
    expect((err as Error).message).toContain(path);
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('creates the master key object once and returns the same key on later loads', async () => {
    const store = new MemoryStore();
    const wrapper = await KeyFileWrapper.load(join(dir, 'repo.key'), { create: true });
    const master = await loadMasterKey(store, wrapper, { create: true });
    expect(master.length).toBe(32);
    expect(store.objects.has(objectKeys.masterKey())).toBe(true);
    const stored = store.objects.get(objectKeys.masterKey())!;
    expect(stored.includes(master.toString('base64'))).toBe(false); // stored only wrapped

    expect(await loadMasterKey(store, wrapper, { create: true })).toEqual(master);
    const reloaded = await KeyFileWrapper.load(join(dir, 'repo.key'));
    expect(await loadMasterKey(store, reloaded)).toEqual(master);
    expect(store.objects.get(objectKeys.masterKey())).toEqual(stored);
  });

  it("fails with Mover.Corrupt when the repository's key is opened with a different key file", async () => {
    const store = new MemoryStore();
    await loadMasterKey(store, await KeyFileWrapper.load(join(dir, 'owner.key'), { create: true }), { create: true });
    const stranger = await KeyFileWrapper.load(join(dir, 'stranger.key'), { create: true });
    await expectCorrupt(loadMasterKey(store, stranger));
  });

  it('fails without create when the repository has no key object', async () => {
    const wrapper = await KeyFileWrapper.load(join(dir, 'empty-repo.key'), { create: true });
    const err = await rejection(loadMasterKey(new MemoryStore(), wrapper));
    expect((err as Error).name).toBe('Mover.SourceUnavailable');
  });
});

describe('parsers of stored bytes: manifests and the key object (fuzz)', () => {
  const keys = deriveKeys(randomBytes(32));
  const id = (n: number) => createHash('sha256').update(String(n)).digest('hex');
  const good = (): Record<string, unknown> => ({
    version: 1,
    backupId: 'b',
    diskId: 'd',
    sizeBytes: 5 * 4096 + 7,
    chunkSize: 4096,
    chunks: [id(1), null, id(2), id(1), null, id(3)],
    storedSizes: { [id(1)]: 100, [id(2)]: 200, [id(3)]: 50 },
    storedSha256: {},
  });
  /** A manifest JSON sealed properly (as a faulty writer would): only its content is wrong. */
  const sealedJson = (v: unknown) => seal(keys, Buffer.from(JSON.stringify(v) ?? 'undefined'), 'manifest:b/d');

  it('accepts a well-formed manifest, with or without storedSha256', async () => {
    expect((await decodeManifest(keys, await sealedJson(good()), 'b', 'd')).chunks).toHaveLength(6);
    const { storedSha256: _, ...older } = good();
    expect((await decodeManifest(keys, await sealedJson(older), 'b', 'd')).chunks).toHaveLength(6);
  });

  it('rejects every malformed manifest with Mover.Corrupt naming the manifest, never another error (300 mutations)', async () => {
    const junk = [null, 0, -1, 1.5, 'x', [], {}, true, 2 ** 60, 'f'.repeat(64)];
    const pick = <T>(a: readonly T[]) => a[Math.floor(Math.random() * a.length)]!;
    let rejected = 0;
    for (let trial = 0; trial < 300; trial++) {
      const m = good();
      const field = pick([
        'version',
        'backupId',
        'diskId',
        'sizeBytes',
        'chunkSize',
        'chunks',
        'storedSizes',
        'storedSha256',
        'chunk',
        'size',
        'whole',
      ] as const);
      let v: unknown = m;
      if (field === 'chunk') (m.chunks as unknown[])[Math.floor(Math.random() * 6)] = pick(junk);
      else if (field === 'size') (m.storedSizes as Record<string, unknown>)[id(1 + Math.floor(Math.random() * 3))] = pick(junk);
      else if (field === 'whole') v = pick(junk);
      else m[field] = pick(junk);
      try {
        await decodeManifest(keys, await sealedJson(v), 'b', 'd');
      } catch (err) {
        expect(err).toBeInstanceOf(Corrupt);
        expect((err as Error).message).toMatch(/^manifest b\/d /);
        rejected++;
      }
    }
    // A few mutations leave a valid manifest (a junk chunk id that is 64 hex digits with a size, a null chunk): most are rejected.
    expect(rejected).toBeGreaterThan(200);
  });

  /** A well-formed format-2 manifest: chunks in two packs, at [pack, offset]. */
  const packA = 'a1'.repeat(16);
  const packB = 'b2'.repeat(16);
  const goodV2 = (): Record<string, unknown> => ({
    version: 2,
    backupId: 'b',
    diskId: 'd',
    sizeBytes: 5 * 4096 + 7,
    chunkSize: 4096,
    chunks: [id(1), null, id(2), id(1), null, id(3)],
    storedSizes: { [id(1)]: 100, [id(2)]: 200, [id(3)]: 50 },
    packs: [
      { id: packA, size: 400 },
      { id: packB, size: 90 },
    ],
    locations: { [id(1)]: [0, 0], [id(2)]: [0, 100], [id(3)]: [1, 40] },
  });
  const rejectV2 = async (edit: (m: Record<string, unknown>) => void) => {
    const m = goodV2();
    edit(m);
    return (await expectCorrupt(decodeManifest(keys, await sealedJson(m), 'b', 'd'))).message;
  };

  it('accepts a well-formed format-2 manifest, and round-trips one through encode and decode', async () => {
    expect((await decodeManifest(keys, await sealedJson(goodV2()), 'b', 'd')).locations).toEqual(goodV2().locations);
    const m = goodV2() as unknown as Manifest;
    expect(await decodeManifest(keys, await encodeManifest(keys, m), 'b', 'd')).toEqual(m);
  });

  it('rejects a format-2 location past the end of its pack, naming the chunk, the pack and its size', async () => {
    expect(
      await rejectV2((m) => {
        (m.locations as Record<string, unknown>)[id(3)] = [1, 41];
      }),
    ).toBe(`manifest b/d is inconsistent: chunk 5 (${id(3)}) ends at 91, past the end of pack ${packB} (90 bytes)`);
    expect(
      await rejectV2((m) => {
        (m.packs as { size: number }[])[0]!.size = 299;
      }),
    ).toMatch(new RegExp(`chunk 2 \\(${id(2)}\\) ends at 300, past the end of pack ${packA} \\(299 bytes\\)`));
    // Exactly at the end is fine.
    const m = goodV2();
    (m.locations as Record<string, unknown>)[id(3)] = [1, 40];
    expect((await decodeManifest(keys, await sealedJson(m), 'b', 'd')).chunks).toHaveLength(6);
  });

  it('rejects a format-2 location naming an unknown pack, or not [pack, offset], naming the chunk and its location', async () => {
    expect(
      await rejectV2((m) => {
        (m.locations as Record<string, unknown>)[id(2)] = [2, 0];
      }),
    ).toBe(`manifest b/d is inconsistent: chunk 2 (${id(2)}) has location [2,0], not [pack, offset]`);
    for (const bad of [undefined, [0], [0, 0, 0], [-1, 0], [0, -5], [0.5, 0], ['0', 0], { 0: 0, 1: 0 }]) {
      expect(
        await rejectV2((m) => {
          (m.locations as Record<string, unknown>)[id(1)] = bad;
        }),
        JSON.stringify(bad),
      ).toMatch(new RegExp(`chunk 0 \\(${id(1)}\\) has location .*not \\[pack, offset\\]$`));
    }
  });

  it('rejects a format-2 pack whose id is not 32 hex digits, or whose size is not a count, naming the pack', async () => {
    for (const bad of ['A1'.repeat(16), 'a1'.repeat(15), 'a1'.repeat(17), `packs/a1/${packA}`, 'z'.repeat(32), 42, null]) {
      expect(
        await rejectV2((m) => {
          (m.packs as { id: unknown }[])[1]!.id = bad;
        }),
        String(bad),
      ).toMatch(/^manifest b\/d is inconsistent: pack 1 is .*, not \{ id, size \}$/);
    }
    expect(
      await rejectV2((m) => {
        (m.packs as { size: unknown }[])[0]!.size = -1;
      }),
    ).toMatch(/pack 0 is .*not \{ id, size \}/);
    expect(
      await rejectV2((m) => {
        (m.packs as unknown[])[0] = null;
      }),
    ).toMatch(/pack 0 is null, not \{ id, size \}/);
  });

  it('rejects a format-2 manifest without packs or locations, naming the field', async () => {
    expect(
      await rejectV2((m) => {
        delete m.packs;
      }),
    ).toMatch(/packs is not a list$/);
    expect(
      await rejectV2((m) => {
        m.packs = {};
      }),
    ).toMatch(/packs is not a list$/);
    expect(
      await rejectV2((m) => {
        delete m.locations;
      }),
    ).toMatch(/locations is not an object$/);
    expect(
      await rejectV2((m) => {
        m.locations = [[0, 0]];
      }),
    ).toMatch(/locations is not an object$/);
  });

  it('rejects every malformed format-2 manifest with Mover.Corrupt naming the manifest, never another error (300 mutations)', async () => {
    const rand = prng(0x2f2);
    const junk = [null, 0, -1, 1.5, 'x', [], {}, true, 2 ** 60, 'f'.repeat(32), [0, 0], [1, 40], [2, 0], [0, 2 ** 53]];
    const pick = <T>(a: readonly T[]) => a[rand(a.length)]!;
    let rejected = 0;
    for (let trial = 0; trial < 300; trial++) {
      const m = goodV2();
      const field = pick(['packs', 'locations', 'pack', 'packId', 'packSize', 'location', 'size'] as const);
      if (field === 'pack') (m.packs as unknown[])[rand(2)] = pick(junk);
      else if (field === 'packId') (m.packs as Record<string, unknown>[])[rand(2)]!.id = pick(junk);
      else if (field === 'packSize') (m.packs as Record<string, unknown>[])[rand(2)]!.size = pick(junk);
      else if (field === 'location') (m.locations as Record<string, unknown>)[id(1 + rand(3))] = pick(junk);
      else if (field === 'size') (m.storedSizes as Record<string, unknown>)[id(1 + rand(3))] = pick(junk);
      else m[field] = pick(junk);
      try {
        await decodeManifest(keys, await sealedJson(m), 'b', 'd');
      } catch (err) {
        expect(err).toBeInstanceOf(Corrupt);
        expect((err as Error).message).toMatch(/^manifest b\/d /);
        rejected++;
      }
    }
    // A few mutations leave a valid manifest (a location moved within its pack, a larger pack size): most are rejected.
    expect(rejected).toBeGreaterThan(200);
  });

  it('reads a key object back, and rejects malformed ones with Mover.Corrupt naming the object (fuzz)', () => {
    const ok = { version: 1, wrapper: 'keyfile', wrapped: randomBytes(60).toString('base64') };
    expect(parseStoredKey(Buffer.from(JSON.stringify(ok)), 'keys/default')).toEqual(ok);
    const samples: Buffer[] = [
      Buffer.from('not json'),
      Buffer.from('null'),
      Buffer.from('[]'),
      Buffer.from(JSON.stringify({ ...ok, version: 2 })),
      Buffer.from(JSON.stringify({ ...ok, wrapped: 'not base64!' })),
      Buffer.from(JSON.stringify({ version: 1 })),
    ];
    for (let i = 0; i < 200; i++) samples.push(randomBytes(Math.floor(Math.random() * 200)));
    for (const s of samples) {
      expect(() => parseStoredKey(s, 'keys/default')).toThrow(Corrupt);
      try {
        parseStoredKey(s, 'keys/default');
      } catch (err) {
        expect((err as Error).message).toMatch(/^repository key object 'keys\/default' /);
      }
    }
  });
});
