/**
 * The narrow storage interface the mover and the handlers depend on. Adapters (S3) and
 * wrappers (retry, limits) implement it; logic never sees an SDK type.
 */
export interface ObjectInfo {
  size: number;
}

export interface ObjectStore {
  put(key: string, body: Uint8Array): Promise<void>;
  /** The object's bytes, or undefined when it does not exist. */
  get(key: string): Promise<Buffer | undefined>;
  /** The object's size, or undefined when it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
}
