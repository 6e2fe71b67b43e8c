/**
 * The narrow storage interface the mover and the handlers depend on. Adapters (S3) and
 * wrappers (retry, limits) implement it; logic never sees an SDK type.
 */
export interface ObjectInfo {
  size: number;
  /** Base64 SHA-256 of the object as the store recorded it, where the store offers one. */
  sha256?: string;
}

export interface ObjectStore {
  /** Stores `body`; the store checks it against `sha256` (base64) on arrival where it can. */
  put(key: string, body: Uint8Array, sha256?: string): Promise<void>;
  /** The object's bytes, or undefined when it does not exist. */
  get(key: string): Promise<Buffer | undefined>;
  /** The object's size, or undefined when it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
}
