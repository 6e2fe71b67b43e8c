/**
 * Repository format, version 1 (specified in core/REPOSITORY-FORMAT.md).
 *
 * Every stored object is an envelope: a 15-byte header (format version, compression id,
 * cipher id, 12-byte nonce) followed by the AES-256-GCM ciphertext of the (maybe
 * compressed) plaintext and the 16-byte tag. The header and a purpose string (the chunk
 * id, or the object kind) are authenticated as associated data, so a swapped or edited
 * object fails to open.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { zstdCompress, zstdDecompress } from 'node:zlib';
import { Corrupt } from './errors.ts';

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

/** A chunk's id: HMAC-SHA256 of its plaintext under the repository's id key, hex. */
export function chunkId(keys: RepositoryKeys, plaintext: Uint8Array): string {
  return createHmac('sha256', keys.id).update(plaintext).digest('hex');
}

/** Compress (when it pays) and encrypt `plaintext`, binding it to `purpose`. */
export async function seal(keys: RepositoryKeys, plaintext: Uint8Array, purpose: string): Promise<Buffer> {
  const packed = await compress(plaintext);
  const useZstd = packed.length < plaintext.length;
  const body = useZstd ? packed : plaintext;
  const header = Buffer.alloc(HEADER_BYTES);
  header[0] = FORMAT_VERSION;
  header[1] = useZstd ? Compression.zstd : Compression.none;
  header[2] = Cipher.aes256gcm;
  randomBytes(12).copy(header, 3);
  const cipher = createCipheriv('aes-256-gcm', keys.encryption, header.subarray(3, 15));
  cipher.setAAD(Buffer.concat([header, Buffer.from(purpose)]));
  return Buffer.concat([header, cipher.update(body), cipher.final(), cipher.getAuthTag()]);
}

/** Authenticate, decrypt and decompress an envelope written by `seal` for `purpose`. */
export async function open(keys: RepositoryKeys, sealed: Uint8Array, purpose: string): Promise<Buffer> {
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (buf.length < HEADER_BYTES + TAG_BYTES) throw new Corrupt(`object for ${purpose} is ${buf.length} bytes, shorter than an envelope`);
  const header = buf.subarray(0, HEADER_BYTES);
  if (header[0] !== FORMAT_VERSION) throw new Corrupt(`object for ${purpose} has format version ${header[0]}, this mover reads version ${FORMAT_VERSION}`);
  if (header[2] !== Cipher.aes256gcm) throw new Corrupt(`object for ${purpose} uses unknown cipher id ${header[2]}`);
  const compression = header[1];
  if (compression !== Compression.none && compression !== Compression.zstd) throw new Corrupt(`object for ${purpose} uses unknown compression id ${compression}`);
  let body: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', keys.encryption, header.subarray(3, 15));
    decipher.setAAD(Buffer.concat([header, Buffer.from(purpose)]));
    decipher.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
    body = Buffer.concat([decipher.update(buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES)), decipher.final()]);
  } catch (err) {
    throw new Corrupt(`object for ${purpose} failed authentication (damaged, or not this repository's)`, err);
  }
  if (compression === Compression.none) return body;
  try {
    return await decompress(body);
  } catch (err) {
    throw new Corrupt(`object for ${purpose} authenticated but does not decompress (written by a faulty encoder?)`, err);
  }
}

/** Base64 SHA-256 of a stored object, the form S3's ChecksumSHA256 uses. */
export function objectSha256(body: Uint8Array): string {
  return createHash('sha256').update(body).digest('base64');
}

/** Object keys: chunks spread over 256 hashed prefixes. */
export const keys = {
  chunk: (id: string) => `chunks/${id.slice(0, 2)}/${id}`,
  manifest: (backupId: string, diskId: string) => `manifests/${backupId}/${diskId}.manifest`,
  vmConfig: (backupId: string) => `manifests/${backupId}/vm-config`,
  masterKey: (name = 'default') => `keys/${name}`,
} as const;

/** One disk of one backup: every chunk in disk order, `null` for an all-zero chunk. */
export interface Manifest {
  version: 1;
  backupId: string;
  diskId: string;
  sizeBytes: number;
  chunkSize: number;
  chunks: (string | null)[];
  /** Stored size of each referenced chunk, by id, for Verify's size check. */
  storedSizes: Record<string, number>;
  /** Base64 SHA-256 of each stored chunk object, by id, where known: Verify compares it with the store's checksum. */
  storedSha256: Record<string, string>;
}

export function encodeManifest(keys_: RepositoryKeys, m: Manifest): Promise<Buffer> {
  return seal(keys_, Buffer.from(JSON.stringify(m)), `manifest:${m.backupId}/${m.diskId}`);
}

export async function decodeManifest(keys_: RepositoryKeys, sealed: Uint8Array, backupId: string, diskId: string): Promise<Manifest> {
  let m: Manifest;
  try {
    m = JSON.parse((await open(keys_, sealed, `manifest:${backupId}/${diskId}`)).toString('utf8')) as Manifest;
  } catch (err) {
    if (err instanceof Corrupt) throw err;
    throw new Corrupt(`manifest ${backupId}/${diskId} is not valid JSON`, err);
  }
  const expected = Math.ceil(m.sizeBytes / m.chunkSize);
  if (m.version !== 1 || m.chunks.length !== expected || m.backupId !== backupId || m.diskId !== diskId) {
    throw new Corrupt(`manifest ${backupId}/${diskId} is inconsistent (version ${m.version}, ${m.chunks.length} chunks for ${m.sizeBytes} bytes)`);
  }
  return m;
}

/** True when every byte of `buf` is zero (checked 8 bytes at a time). */
export function isZero(buf: Buffer): boolean {
  const words = Math.floor(buf.length / 8);
  // A BigUint64Array view needs an 8-aligned start offset; unaligned buffers go byte by byte.
  if (buf.byteOffset % 8 === 0) {
    const view = new BigUint64Array(buf.buffer, buf.byteOffset, words);
    for (let i = 0; i < words; i++) if (view[i] !== 0n) return false;
    for (let i = words * 8; i < buf.length; i++) if (buf[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
