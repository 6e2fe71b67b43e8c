/**
 * The narrow storage interface the mover and the handlers depend on. Adapters (S3) and
 * wrappers (retry, limits) implement it; logic never sees an SDK type.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';

export interface ObjectInfo {
  size: number;
  /** Base64 SHA-256 of the object as the store recorded it, where the store offers one. */
  sha256?: string;
}

/** Settings of one `get`. */
export interface GetOptions {
  /** Read the object into this buffer when it fits. */
  into?: Uint8Array;
  /**
   * Only these bytes of the object (an HTTP Range request): a pack is read one run of
   * chunks at a time. A range past the object's end returns what there is; callers check
   * the length.
   */
  range?: { offset: number; length: number };
}

/** One object found by `list`. */
export interface ListedKey {
  key: string;
  size: number;
}

/**
 * A checksum of a body being stored (base64), which the store checks on arrival where it
 * can (S3 rejects a mismatch with BadDigest). SHA-256 where the store must keep it:
 * format-1 chunk objects, whose SHA-256 Verify compares with the manifest's. CRC-32
 * elsewhere (packs, index objects, manifests): it catches damage in transit at ~3x less
 * CPU than SHA-256 (zlib.crc32: ~5.5 GB/s here, SHA-256 ~1.6 GB/s), and what these objects
 * hold is authenticated by AES-GCM anyway, so the request's signature need not cover the
 * body (an S3 store sends them as UNSIGNED-PAYLOAD; TLS protects the body in transit).
 */
export type PutChecksum = { sha256: string } | { crc32: string };

export interface ObjectStore {
  /** Stores `body`; the store checks it against `checksum` on arrival where it can. */
  put(key: string, body: Uint8Array, checksum?: PutChecksum): Promise<void>;
  /**
   * The object's bytes, or undefined when it does not exist. With `into`, a store may read
   * the object into that buffer (when it fits) and return a view of it: pipelines read
   * chunks into reused shared slots so nothing chunk-sized is allocated per chunk. Callers
   * must accept a result that is not in `into`.
   */
  get(key: string, opts?: GetOptions): Promise<Buffer | undefined>;
  /** The object's size, or undefined when it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object under `prefix`, in key order (movers list only `index/`: repository/packs.ts). */
  list(prefix: string): AsyncIterable<ListedKey>;
}

/** Base64 SHA-256 of a stored object, the form S3's ChecksumSHA256 uses. */
export function objectSha256(body: Uint8Array): string {
  return createHash('sha256').update(body).digest('base64');
}

/** Base64 CRC-32 (big-endian, the form S3's ChecksumCRC32 uses) of a stored object. */
export function objectCrc32(body: Uint8Array): string {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(crc32(body));
  return out.toString('base64');
}
