/**
 * Repository format, version 1 (specified in repository/REPOSITORY-FORMAT.md).
 *
 * Every stored object is an envelope: a 15-byte header (format version, compression id,
 * cipher id, 12-byte nonce) followed by the AES-256-GCM ciphertext of the (maybe
 * compressed) plaintext and the 16-byte tag. The header and a purpose string (the chunk
 * id, or the object kind) are authenticated as associated data, so a swapped or edited
 * object fails to open.
 */
import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hkdfSync, randomFillSync, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { constants as zlibConstants, zstdCompress, zstdDecompress, zstdDecompressSync } from 'node:zlib';
import { zstdBound, zstdCompressInto, zstdDecompressToCallers } from './zstd.ts';
import { Corrupt } from '../contracts/errors.ts';

export const FORMAT_VERSION = 1;
/** Stable algorithm ids: stored in every header, never reused for something else. */
export const Compression = { none: 0, zstd: 1 } as const;
export const Cipher = { aes256gcm: 1 } as const;
const HEADER_BYTES = 15;
const TAG_BYTES = 16;

const compress = promisify(zstdCompress);
const decompress = promisify(zstdDecompress);

/** The keys derived from a repository's master key. */
export interface RepositoryKeys {
  /** Encrypts chunk and manifest payloads. */
  readonly encryption: Buffer;
  /** Keys the chunk-id HMAC, so ids reveal nothing about content. */
  readonly id: Buffer;
}

export function deriveKeys(masterKey: Buffer): RepositoryKeys {
  if (masterKey.length !== 32) throw new Corrupt(`repository master key must be 32 bytes, got ${masterKey.length}`);
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', masterKey, Buffer.alloc(0), info, 32));
  return Object.freeze({ encryption: derive('lifeboat/v1/encryption'), id: derive('lifeboat/v1/chunk-id') });
}

/**
 * The keys as KeyObjects, made once per RepositoryKeys: a raw key buffer is imported anew
 * by every createHmac/createCipheriv (~12 µs each, measured), a KeyObject is not.
 */
const keyObjects = new WeakMap<RepositoryKeys, { encryption: KeyObject; id: KeyObject }>();
function keyObjectsOf(keys: RepositoryKeys): { encryption: KeyObject; id: KeyObject } {
  let k = keyObjects.get(keys);
  if (!k) keyObjects.set(keys, (k = { encryption: createSecretKey(keys.encryption), id: createSecretKey(keys.id) }));
  return k;
}

/** A chunk's id: HMAC-SHA256 of its plaintext under the repository's id key, hex. */
export function chunkId(keys: RepositoryKeys, plaintext: Uint8Array): string {
  return createHmac('sha256', keyObjectsOf(keys).id).update(plaintext).digest('hex');
}

/** Settings of `seal` and `sealSync`. */
export interface SealOptions {
  /** The 12-byte GCM nonce; random by default. Only tests fix it (a nonce must never repeat under one key). */
  nonce?: Uint8Array;
  /** zstd level (default: zstd's default, 3; measured in REPOSITORY-FORMAT.md). */
  level?: number;
}

/**
 * Where `sealSync` writes the sealed object, asked once its size is known (after
 * compression, before encryption): `size` bytes to write it into, or undefined to write
 * nothing (sealSync then returns undefined). The chunk pool's workers reserve the bytes of
 * a shared pack buffer here, so a sealed chunk is written straight where it is uploaded
 * from (repository/pack-buffer.ts).
 */
export type SealInto = (size: number) => Uint8Array | undefined;

/** The most bytes sealing `plaintextLength` bytes can produce (compressed only when smaller). */
export function sealedCapacity(plaintextLength: number): number {
  return HEADER_BYTES + plaintextLength + TAG_BYTES;
}

/** The size is pledged so the async (libuv pool) and sync (worker thread) compressors write the same frame. */
const zstdOptions = (level: number | undefined, size: number) => ({
  pledgedSrcSize: size,
  // One output buffer for the whole frame (zlib's default is 16 KiB pieces, copied together after).
  chunkSize: Math.max(16 * 1024, size + 1024),
  ...(level === undefined ? {} : { params: { [zlibConstants.ZSTD_c_compressionLevel]: level } }),
});

/** Random bytes for nonces, drawn from the CSPRNG 256 nonces at a time (one call per chunk cost ~40 µs, profiled); each is used once. */
const noncePool = Buffer.alloc(12 * 256);
let nonceAt = noncePool.length;
function freshNonce(into: Uint8Array): void {
  if (nonceAt === noncePool.length) {
    randomFillSync(noncePool);
    nonceAt = 0;
  }
  into.set(noncePool.subarray(nonceAt, nonceAt + 12));
  nonceAt += 12;
}

/**
 * The envelope around `body` (the compressed payload, or the plaintext itself when
 * `compressed` is false). Written where `into` says once the size is known (undefined when
 * it declines), else into one buffer that owns its ArrayBuffer (never a slice of Node's
 * shared pool, so a caller may keep it or hand it to another thread).
 */
function envelope(keys: RepositoryKeys, body: Uint8Array, compressed: boolean, purpose: string, nonce: Uint8Array | undefined): Buffer;
function envelope(
  keys: RepositoryKeys,
  body: Uint8Array,
  compressed: boolean,
  purpose: string,
  nonce: Uint8Array | undefined,
  into: SealInto | undefined,
): Buffer | undefined;
function envelope(
  keys: RepositoryKeys,
  body: Uint8Array,
  compressed: boolean,
  purpose: string,
  nonce: Uint8Array | undefined,
  into?: SealInto,
): Buffer | undefined {
  if (nonce && nonce.length !== 12) throw new RangeError(`nonce must be 12 bytes, got ${nonce.length}`);
  const size = HEADER_BYTES + body.length + TAG_BYTES;
  let out: Buffer;
  if (into) {
    const dest = into(size);
    if (!dest) return undefined;
    if (dest.byteLength < size) throw new RangeError(`sealing needs ${size} bytes, the output buffer has ${dest.byteLength}`);
    out = Buffer.from(dest.buffer, dest.byteOffset, size);
  } else {
    out = Buffer.from(new ArrayBuffer(size));
  }
  out[0] = FORMAT_VERSION;
  out[1] = compressed ? Compression.zstd : Compression.none;
  out[2] = Cipher.aes256gcm;
  if (nonce) out.set(nonce, 3);
  else freshNonce(out.subarray(3, 15));
  const header = out.subarray(0, HEADER_BYTES);
  const cipher = createCipheriv('aes-256-gcm', keyObjectsOf(keys).encryption, header.subarray(3, 15));
  cipher.setAAD(Buffer.concat([header, Buffer.from(purpose)]));
  let at = HEADER_BYTES;
  at += cipher.update(body).copy(out, at);
  at += cipher.final().copy(out, at);
  cipher.getAuthTag().copy(out, at);
  return out;
}

const PROBE_BYTES = 4096;
const PROBE_LEVEL = 1;
/** A sample's frame (room for zstd's bound: a frame that does not fit would cost its context). */
const probeScratch = Buffer.allocUnsafeSlow(zstdBound(PROBE_BYTES));

/**
 * Whether zstd is worth running on `plaintext`: three 4 KiB samples (start, middle, end)
 * compressed at level 1 must shrink by 3% or more. Encrypted or already compressed data
 * (random to zstd) then costs ~0.04 ms per 512 KiB chunk instead of ~0.8 ms of a
 * compression that saves nothing (measured); it is stored uncompressed, as zstd's output
 * would not have been smaller anyway. A chunk compressible only between the samples is
 * stored uncompressed too: on the bench image that costs nothing measurable
 * (REPOSITORY-FORMAT.md, Compression).
 */
export function looksCompressible(plaintext: Uint8Array): boolean {
  if (plaintext.length < 16 * PROBE_BYTES) return true;
  let packed = 0;
  for (const at of [0, (plaintext.length - PROBE_BYTES) >> 1, plaintext.length - PROBE_BYTES]) {
    packed += zstdCompressInto(plaintext.subarray(at, at + PROBE_BYTES), probeScratch, PROBE_LEVEL) ?? probeScratch.length;
  }
  return packed < 3 * PROBE_BYTES * 0.97;
}

/** Compress (when it pays) and encrypt `plaintext`, binding it to `purpose`. */
export async function seal(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string, opts: SealOptions = {}): Promise<Buffer> {
  if (!looksCompressible(plaintext)) return envelope(keys, plaintext, false, purpose, opts.nonce);
  const packed = await compress(plaintext, zstdOptions(opts.level, plaintext.length));
  const useZstd = packed.length < plaintext.length;
  return envelope(keys, useZstd ? packed : plaintext, useZstd, purpose, opts.nonce);
}

/** This thread's buffer for compressed bodies on their way into an envelope (consumed before sealSync returns). */
let packedScratch = Buffer.alloc(0);

/**
 * `seal` on the calling thread: the same bytes for the same nonce (worker threads use it).
 * zstd runs through this thread's reused context into a reused buffer (repository/zstd.ts). With
 * `into`, the sealed object is written where `into` says (and is a view of it), or nowhere
 * (undefined) when `into` declines its size.
 */
export function sealSync(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string, opts?: SealOptions): Buffer;
export function sealSync(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string, opts: SealOptions, into: SealInto): Buffer | undefined;
export function sealSync(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string, opts: SealOptions = {}, into?: SealInto): Buffer | undefined {
  if (!looksCompressible(plaintext)) return envelope(keys, plaintext, false, purpose, opts.nonce, into);
  // Room for zstd's worst case: a frame cut short would cost the thread's context (repository/zstd.ts).
  if (packedScratch.length < zstdBound(plaintext.length)) packedScratch = Buffer.allocUnsafeSlow(zstdBound(plaintext.length));
  const packed = zstdCompressInto(plaintext, packedScratch, opts.level);
  return packed === undefined || packed >= plaintext.length
    ? envelope(keys, plaintext, false, purpose, opts.nonce, into)
    : envelope(keys, packedScratch.subarray(0, packed), true, purpose, opts.nonce, into);
}

/** Checks the header and authenticates and decrypts the body; the body may still be compressed. */
function unseal(keys: RepositoryKeys, sealed: Uint8Array, purpose: string): { compression: number; body: Buffer } {
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (buf.length < HEADER_BYTES + TAG_BYTES) throw new Corrupt(`object for ${purpose} is ${buf.length} bytes, shorter than an envelope`);
  const header = buf.subarray(0, HEADER_BYTES);
  if (header[0] !== FORMAT_VERSION) throw new Corrupt(`object for ${purpose} has format version ${header[0]}, this mover reads version ${FORMAT_VERSION}`);
  if (header[2] !== Cipher.aes256gcm) throw new Corrupt(`object for ${purpose} uses unknown cipher id ${header[2]}`);
  const compression = header[1]!;
  if (compression !== Compression.none && compression !== Compression.zstd)
    throw new Corrupt(`object for ${purpose} uses unknown compression id ${compression}`);
  try {
    const decipher = createDecipheriv('aes-256-gcm', keyObjectsOf(keys).encryption, header.subarray(3, 15));
    decipher.setAAD(Buffer.concat([header, Buffer.from(purpose)]));
    decipher.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
    const body = decipher.update(buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES));
    decipher.final();
    return { compression, body };
  } catch (err) {
    throw new Corrupt(`object for ${purpose} failed authentication (damaged, or not this repository's)`, err);
  }
}

const undecodable = (purpose: string, err: unknown) =>
  new Corrupt(`object for ${purpose} authenticated but does not decompress (written by a faulty encoder?)`, err);

/** Authenticate, decrypt and decompress an envelope written by `seal` for `purpose`. */
export async function open(keys: RepositoryKeys, sealed: Uint8Array, purpose: string): Promise<Buffer> {
  const { compression, body } = unseal(keys, sealed, purpose);
  if (compression === Compression.none) return body;
  try {
    return await decompress(body);
  } catch (err) {
    throw undecodable(purpose, err);
  }
}

export interface OpenSyncOptions {
  /** The plaintext's length when the caller knows it (a chunk): sizes the output; not checked here. */
  expectedLength?: number;
  /**
   * Decompress into this buffer (give it at least one byte more than `expectedLength`) and
   * return a view of it, instead of a new buffer; the result is then valid only until
   * `into` is reused. A plaintext longer than `into` comes back as all of `into` (so it
   * never matches the expected length). Ignored for bodies stored uncompressed.
   */
  into?: Uint8Array;
  /**
   * With `into`: a buffer of exactly `expectedLength` bytes to decompress straight into
   * when the frame declares that size (the copy out of `into` is then saved; the result is
   * a view of `exactInto`). Its bytes are undefined when the result is not a view of it.
   */
  exactInto?: Uint8Array;
}

/** `open` on the calling thread (worker threads use it); zstd through this thread's reused context (repository/zstd.ts) when given `into`. */
export function openSync(keys: RepositoryKeys, sealed: Uint8Array, purpose: string, opts: OpenSyncOptions = {}): Buffer {
  const { compression, body } = unseal(keys, sealed, purpose);
  if (compression === Compression.none) return body;
  try {
    const inPlace = zstdDecompressToCallers(body, opts);
    if (inPlace) return inPlace;
    // A buffer a little larger than the plaintext: one exactly filled makes zlib concatenate a second (2-3x slower).
    return zstdDecompressSync(body, opts.expectedLength ? { chunkSize: Math.max(16 * 1024, opts.expectedLength + 4096) } : {});
  } catch (err) {
    throw undecodable(purpose, err);
  }
}

/** Object keys: chunks (format 1) and packs (format 2) spread over 256 hashed prefixes. */
export const objectKeys = {
  chunk: (id: string) => `chunks/${id.slice(0, 2)}/${id}`,
  pack: (packId: string) => `packs/${packId.slice(0, 2)}/${packId}`,
  index: (indexId: string) => `index/${indexId}`,
  manifest: (backupId: string, diskId: string) => `manifests/${backupId}/${diskId}.manifest`,
  vmConfig: (backupId: string) => `manifests/${backupId}/vm-config`,
  /** A libvirt host's networks, pools and domain definitions (repository/host-config.ts), one object per host per run. */
  hostConfig: (hostId: string, backupId: string) => `host-config/${hostId}/${backupId}`,
  masterKey: (name = 'default') => `keys/${name}`,
} as const;

const CHUNK_KEY = /^chunks\/[0-9a-f]{2}\/([0-9a-f]{64})$/;

/** The chunk id of a `chunks/<xx>/<id>` object key (the inverse of `objectKeys.chunk`), or undefined for any other key (a manifest). */
export function chunkIdOfKey(key: string): string | undefined {
  return CHUNK_KEY.exec(key)?.[1];
}

const PACK_KEY = /^packs\/[0-9a-f]{2}\/([0-9a-f]{32})$/;

/** The pack id of a `packs/<xx>/<packId>` object key (the inverse of `objectKeys.pack`), or undefined. */
export function packIdOfKey(key: string): string | undefined {
  return PACK_KEY.exec(key)?.[1];
}

/** The JSON manifest version written last (format 2: chunks in packs); format 3 (manifest/) is what movers write now. */
export const MANIFEST_VERSION = 2;

/** A pack a format-2 manifest's chunks are in, and its whole size (Verify checks it with HEAD). */
export interface PackRef {
  id: string;
  size: number;
}

/** One disk of one backup: every chunk in disk order, `null` for an all-zero chunk. */
export interface Manifest {
  /** 1: each chunk is its own object under `chunks/`; 2: chunks are in packs (`packs`, `locations`); 3: a format-3 manifest read whole (manifest/reader.ts `decodeManifest`). */
  version: 1 | 2 | 3;
  backupId: string;
  diskId: string;
  sizeBytes: number;
  chunkSize: number;
  chunks: (string | null)[];
  /** Stored (sealed) size of each referenced chunk, by id. */
  storedSizes: Record<string, number>;
  /** Version 1: base64 SHA-256 of each stored chunk object, by id, where known (Verify compares it with the store's checksum). */
  storedSha256?: Record<string, string>;
  /** Version 2: the packs holding the referenced chunks. */
  packs?: PackRef[];
  /** Version 2: where each referenced chunk is, by id: [index into `packs`, byte offset in the pack]; its length is `storedSizes[id]`. */
  locations?: Record<string, [number, number]>;
}

export function encodeManifest(keys_: RepositoryKeys, m: Manifest): Promise<Buffer> {
  // One JSON document is a version-2 manifest: a format-3 manifest read whole holds all a version 2 has.
  const doc = m.version === 3 ? { ...m, version: 2 } : m;
  return seal(keys_, Buffer.from(JSON.stringify(doc)), `manifest:${m.backupId}/${m.diskId}`);
}

/** A version-1 or -2 manifest document, already opened and parsed, checked (manifest/reader.ts reads every version). */
export function decodeManifestDocument(doc: unknown, backupId: string, diskId: string): Manifest {
  checkManifest(doc, backupId, diskId);
  return doc;
}

const CHUNK_ID = /^[0-9a-f]{64}$/;
const PACK_ID = /^[0-9a-f]{32}$/;
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/**
 * The shape of an opened manifest, checked field by field (a plain loop: a 2 TiB disk's
 * manifest lists millions of chunks). An authenticated manifest is malformed only if a
 * faulty writer made it; it then fails as Mover.Corrupt naming the field, never as a
 * TypeError somewhere downstream.
 */
function checkManifest(m: unknown, backupId: string, diskId: string): asserts m is Manifest {
  const bad = (what: string) => new Corrupt(`manifest ${backupId}/${diskId} is inconsistent: ${what}`);
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad('not a JSON object');
  const o = m as Record<string, unknown>;
  if (o.version !== 1 && o.version !== 2) throw bad(`version ${JSON.stringify(o.version)}, this mover reads versions 1 and 2`);
  if (o.backupId !== backupId || o.diskId !== diskId) throw bad(`it names ${JSON.stringify(o.backupId)}/${JSON.stringify(o.diskId)}`);
  if (!isCount(o.sizeBytes)) throw bad(`sizeBytes ${JSON.stringify(o.sizeBytes)}`);
  if (!isCount(o.chunkSize) || o.chunkSize === 0) throw bad(`chunkSize ${JSON.stringify(o.chunkSize)}`);
  if (!Array.isArray(o.chunks) || o.chunks.length !== Math.ceil(o.sizeBytes / o.chunkSize)) {
    throw bad(`${Array.isArray(o.chunks) ? o.chunks.length : 'no'} chunks for ${o.sizeBytes} bytes of ${o.chunkSize}-byte chunks`);
  }
  const sizes = o.storedSizes;
  const shas = o.storedSha256;
  if (typeof sizes !== 'object' || sizes === null || Array.isArray(sizes)) throw bad('storedSizes is not an object');
  if (shas !== undefined && (typeof shas !== 'object' || shas === null || Array.isArray(shas))) throw bad('storedSha256 is not an object');
  let packs: PackRef[] | undefined;
  let locations: Record<string, unknown> | undefined;
  if (o.version === 2) {
    if (!Array.isArray(o.packs)) throw bad('packs is not a list');
    for (const [i, p] of (o.packs as unknown[]).entries()) {
      const r = p as Record<string, unknown> | null;
      if (typeof r !== 'object' || r === null || typeof r.id !== 'string' || !PACK_ID.test(r.id) || !isCount(r.size))
        throw bad(`pack ${i} is ${JSON.stringify(p)?.slice(0, 80)}, not { id, size }`);
    }
    packs = o.packs as PackRef[];
    if (typeof o.locations !== 'object' || o.locations === null || Array.isArray(o.locations)) throw bad('locations is not an object');
    locations = o.locations as Record<string, unknown>;
  }
  for (let i = 0; i < o.chunks.length; i++) {
    const id = o.chunks[i];
    if (id === null) continue;
    if (typeof id !== 'string' || !CHUNK_ID.test(id)) throw bad(`chunk ${i} is ${JSON.stringify(id)?.slice(0, 80)}, not a chunk id`);
    const size = (sizes as Record<string, unknown>)[id];
    if (!isCount(size)) throw bad(`chunk ${i} (${id}) has no stored size`);
    if (packs && locations) {
      const at = locations[id];
      if (!Array.isArray(at) || at.length !== 2 || !isCount(at[0]) || !isCount(at[1]) || at[0] >= packs.length)
        throw bad(`chunk ${i} (${id}) has location ${JSON.stringify(at)?.slice(0, 80)}, not [pack, offset]`);
      if (at[1] + size > packs[at[0]]!.size)
        throw bad(`chunk ${i} (${id}) ends at ${at[1] + size}, past the end of pack ${packs[at[0]]!.id} (${packs[at[0]]!.size} bytes)`);
    }
  }
  for (const [id, sha] of Object.entries(shas ?? {})) {
    if (typeof sha !== 'string') throw bad(`storedSha256 of ${id.slice(0, 80)} is not a string`);
  }
}

const ZEROS = Buffer.alloc(64 * 1024);

/** True when every byte of `buf` is zero (compared with a zero block by memcmp, 64 KiB at a time). */
export function isZero(buf: Uint8Array): boolean {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let at = 0; at < b.length; at += ZEROS.length) {
    const end = Math.min(b.length, at + ZEROS.length);
    if (!b.subarray(at, end).equals(end - at === ZEROS.length ? ZEROS : ZEROS.subarray(0, end - at))) return false;
  }
  return true;
}
