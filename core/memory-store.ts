import { objectCrc32, objectSha256, type GetOptions, type ListedKey, type ObjectInfo, type ObjectStore, type PutChecksum } from './object-store.ts';

/**
 * An in-memory ObjectStore that behaves like real S3 with checksums: it rejects a body
 * whose SHA-256 or CRC-32 does not match the one sent, and HEAD returns the SHA-256.
 * Used by tests; `objects` is open so a test can damage what is stored.
 */
export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, Buffer>();
  keepChecksums: boolean;
  constructor(opts: { keepChecksums?: boolean } = {}) {
    this.keepChecksums = opts.keepChecksums ?? true;
  }

  async put(key: string, body: Uint8Array, checksum?: PutChecksum): Promise<void> {
    const copy = Buffer.from(body);
    if (checksum && 'sha256' in checksum && objectSha256(copy) !== checksum.sha256) throw new Error(`BadDigest: body of ${key} does not match its SHA-256`);
    if (checksum && 'crc32' in checksum && objectCrc32(copy) !== checksum.crc32) throw new Error(`BadDigest: body of ${key} does not match its CRC-32`);
    this.objects.set(key, copy);
  }
  async get(key: string, opts: GetOptions = {}): Promise<Buffer | undefined> {
    const whole = this.objects.get(key);
    if (!whole) return undefined;
    const b = opts.range ? whole.subarray(opts.range.offset, opts.range.offset + opts.range.length) : whole;
    if (opts.into && opts.into.byteLength >= b.length) {
      const view = Buffer.from(opts.into.buffer, opts.into.byteOffset, b.length);
      b.copy(view);
      return view;
    }
    return Buffer.from(b);
  }
  async *list(prefix: string): AsyncIterable<ListedKey> {
    for (const key of [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort()) {
      const b = this.objects.get(key);
      if (b) yield { key, size: b.length };
    }
  }
  async head(key: string): Promise<ObjectInfo | undefined> {
    const b = this.objects.get(key);
    if (!b) return undefined;
    return this.keepChecksums ? { size: b.length, sha256: objectSha256(b) } : { size: b.length };
  }
}
