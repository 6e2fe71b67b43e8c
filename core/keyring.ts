/**
 * The repository's master key is random and stored only wrapped. A KeyWrapper turns it
 * into stored bytes and back: a local key file in the embedded stack, KMS in AWS.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Corrupt, SourceUnavailable } from './errors.ts';
import { keys as objectKeys } from './format.ts';
import type { ObjectStore } from './object-store.ts';

export interface KeyWrapper {
  readonly kind: string;
  wrap(masterKey: Buffer): Promise<Buffer>;
  unwrap(wrapped: Buffer): Promise<Buffer>;
}

/** Wraps with AES-256-GCM under a 32-byte key kept in a file (mode 0600). */
export class KeyFileWrapper implements KeyWrapper {
  readonly kind = 'keyfile';
  private readonly kek: Buffer;
  private constructor(kek: Buffer) {
    this.kek = kek;
  }

  /** Reads the key file; with `create`, makes one when it does not exist. */
  static async load(path: string, opts: { create?: boolean } = {}): Promise<KeyFileWrapper> {
    try {
      const hex = (await readFile(path, 'utf8')).trim();
      if (!/^[0-9a-f]{64}$/.test(hex)) throw new Corrupt(`key file ${path} must hold 64 hex digits (a 32-byte key)`);
      return new KeyFileWrapper(Buffer.from(hex, 'hex'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!opts.create) throw new SourceUnavailable(`repository key file ${path} does not exist; copy it from the control plane's data folder`, err);
      const kek = randomBytes(32);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, kek.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
      return new KeyFileWrapper(kek);
    }
  }

  async wrap(masterKey: Buffer): Promise<Buffer> {
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.kek, nonce);
    return Buffer.concat([nonce, c.update(masterKey), c.final(), c.getAuthTag()]);
  }

  async unwrap(wrapped: Buffer): Promise<Buffer> {
    try {
      const d = createDecipheriv('aes-256-gcm', this.kek, wrapped.subarray(0, 12));
      d.setAuthTag(wrapped.subarray(wrapped.length - 16));
      return Buffer.concat([d.update(wrapped.subarray(12, wrapped.length - 16)), d.final()]);
    } catch (err) {
      throw new Corrupt('the repository key does not unwrap with this key file (wrong key file for this repository?)', err);
    }
  }
}

interface StoredKey {
  version: 1;
  wrapper: string;
  wrapped: string;
}

/** Loads the repository's master key, creating it on first use when `create` is set. */
export async function loadMasterKey(store: ObjectStore, wrapper: KeyWrapper, opts: { create?: boolean } = {}): Promise<Buffer> {
  const key = objectKeys.masterKey();
  const existing = await store.get(key);
  if (existing) {
    const stored = JSON.parse(existing.toString('utf8')) as StoredKey;
    if (stored.wrapper !== wrapper.kind) throw new Corrupt(`repository key is wrapped by '${stored.wrapper}', not '${wrapper.kind}'`);
    return wrapper.unwrap(Buffer.from(stored.wrapped, 'base64'));
  }
  if (!opts.create) throw new SourceUnavailable(`repository has no key object '${key}'; initialise the repository first`);
  const master = randomBytes(32);
  const stored: StoredKey = { version: 1, wrapper: wrapper.kind, wrapped: (await wrapper.wrap(master)).toString('base64') };
  await store.put(key, Buffer.from(JSON.stringify(stored)));
  return master;
}
