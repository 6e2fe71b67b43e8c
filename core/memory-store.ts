import { objectSha256 } from './format.ts';
import type { ObjectInfo, ObjectStore } from './object-store.ts';

/**
 * An in-memory ObjectStore that behaves like real S3 with checksums: it rejects a body
 * whose SHA-256 does not match the one sent, and HEAD returns the recorded SHA-256.
 * Used by tests; `objects` is open so a test can damage what is stored.
 */
export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, Buffer>();
  keepChecksums: boolean;
  constructor(opts: { keepChecksums?: boolean } = {}) {
    this.keepChecksums = opts.keepChecksums ?? true;
  }

  async put(key: string, body: Uint8Array, sha256?: string): Promise<void> {
    const copy = Buffer.from(body);
    if (sha256 && objectSha256(copy) !== sha256) throw new Error(`BadDigest: body of ${key} does not match its SHA-256`);
    this.objects.set(key, copy);
  }
  async get(key: string): Promise<Buffer | undefined> {
    const b = this.objects.get(key);
    return b ? Buffer.from(b) : undefined;
  }
  async head(key: string): Promise<ObjectInfo | undefined> {
    const b = this.objects.get(key);
    if (!b) return undefined;
    return this.keepChecksums ? { size: b.length, sha256: objectSha256(b) } : { size: b.length };
  }
}
