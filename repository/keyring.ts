/**
 * The repository's master key is random and stored only wrapped. A KeyWrapper turns it
 * into stored bytes and back: a local key file in the embedded stack, KMS in AWS.
 */
import type { DecryptCommandOutput, EncryptCommandOutput } from '@aws-sdk/client-kms';
import { DecryptCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Corrupt, SourceUnavailable, StorageUnavailable } from '../contracts/errors.ts';
import { objectKeys } from './format.ts';
import type { ObjectStore } from '../core/object-store.ts';

export interface KeyWrapper {
  readonly kind: string;
  wrap(masterKey: Buffer): Promise<Buffer>;
  unwrap(wrapped: Buffer): Promise<Buffer>;
}

/** Wraps with AES-256-GCM under a 32-byte key kept in a file (mode 0600). */
export class KeyFileWrapper implements KeyWrapper {
  readonly kind = 'keyfile';
  private readonly kek: Buffer;
  /** The file it came from, named when it does not open the repository. */
  private readonly path: string | undefined;
  private constructor(kek: Buffer, path?: string) {
    this.kek = kek;
    this.path = path;
  }

  /** Reads the key file; with `create`, makes one when it does not exist. */
  static async load(path: string, opts: { create?: boolean } = {}): Promise<KeyFileWrapper> {
    try {
      const hex = (await readFile(path, 'utf8')).trim();
      if (!/^[0-9a-f]{64}$/.test(hex)) throw new Corrupt(`key file ${path} must hold 64 hex digits (a 32-byte key)`);
      return new KeyFileWrapper(Buffer.from(hex, 'hex'), path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!opts.create) throw new SourceUnavailable(`repository key file ${path} does not exist; copy it from the control plane's data folder`, err);
      const kek = randomBytes(32);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, kek.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
      return new KeyFileWrapper(kek, path);
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
      throw new Corrupt(
        `the repository key (keys/default) does not unwrap with key file ${this.path ?? '(in memory)'}: the file was replaced, or belongs to another repository; ` +
          'put back the key file this repository was created with (from your copy of it); a new key file cannot open existing backups',
        err,
      );
    }
  }
}

/** The two KMS calls the wrapper makes: a KMSClient fits, and so does a test double. */
export interface KmsClientLike {
  send(command: EncryptCommand | DecryptCommand): Promise<Partial<EncryptCommandOutput & DecryptCommandOutput>>;
}

/** KMS errors that a later attempt may not meet again (throttling, KMS-side failures). */
const TRANSIENT_KMS_ERRORS = new Set([
  'ThrottlingException',
  'KMSInternalException',
  'DependencyTimeoutException',
  'KeyUnavailableException',
  'LimitExceededException',
]);

/**
 * Wraps with AWS KMS: `Encrypt`/`Decrypt` of the 32-byte master key under one KMS key,
 * with the encryption context `lifeboat:purpose=repository-key` (IAM policies allow direct
 * Decrypt only with it). Every Decrypt names the key, so a ciphertext wrapped by another
 * key fails. The context does not name the bucket: a DR repository holds a byte-for-byte
 * copy of its source's key object (functions/replicate/replicate.ts), which must unwrap there too.
 * Callers need kms:Encrypt (initialising the repository) or kms:Decrypt on the key.
 */
export class KmsKeyWrapper implements KeyWrapper {
  readonly kind = 'kms';
  private readonly client: KmsClientLike;
  readonly keyId: string;
  readonly context: Record<string, string>;
  readonly repository: string;

  /** `repository` (its bucket) is named in errors. */
  constructor(opts: { client: KmsClientLike; keyId: string; repository: string }) {
    if (!opts.keyId) throw new Error('KmsKeyWrapper: keyId is empty; set the KMS key id or ARN (the stack output RepositoryKeyArn)');
    if (!opts.repository) throw new Error('KmsKeyWrapper: repository is empty; pass the repository bucket name');
    this.client = opts.client;
    this.keyId = opts.keyId;
    this.repository = opts.repository;
    this.context = { [KMS_CONTEXT_PURPOSE]: 'repository-key' };
  }

  async wrap(masterKey: Buffer): Promise<Buffer> {
    const out = await this.call('Encrypt', new EncryptCommand({ KeyId: this.keyId, Plaintext: masterKey, EncryptionContext: this.context }));
    if (!out.CiphertextBlob) throw new StorageUnavailable(`KMS Encrypt with key ${this.keyId} returned no ciphertext`);
    return Buffer.from(out.CiphertextBlob);
  }

  async unwrap(wrapped: Buffer): Promise<Buffer> {
    // KeyId pins the key: a ciphertext made under another key fails instead of being decrypted by it.
    const out = await this.call('Decrypt', new DecryptCommand({ KeyId: this.keyId, CiphertextBlob: wrapped, EncryptionContext: this.context }));
    if (!out.Plaintext || out.Plaintext.length !== 32) throw new Corrupt(`KMS Decrypt with key ${this.keyId} did not return a 32-byte repository key`);
    return Buffer.from(out.Plaintext);
  }

  private async call(op: string, command: EncryptCommand | DecryptCommand) {
    try {
      return await this.client.send(command);
    } catch (err) {
      const name = (err as Error)?.name ?? '';
      const where = `KMS ${op} with key ${this.keyId} for repository '${this.repository}'`;
      if (name === 'InvalidCiphertextException' || name === 'IncorrectKeyException') {
        throw new Corrupt(
          `${where}: the stored repository key does not unwrap (${name}); it was wrapped by another KMS key (LIFEBOAT_KMS_KEY_ID / REPOSITORY_KMS_KEY_ID must be the key that created the repository)`,
          err,
        );
      }
      const meta = (err as { $metadata?: { httpStatusCode?: number } }).$metadata;
      if (TRANSIENT_KMS_ERRORS.has(name) || (meta?.httpStatusCode ?? 0) >= 500 || !meta) {
        throw new StorageUnavailable(`${where} failed (${name || 'network error'}): ${(err as Error).message}`, err);
      }
      throw new SourceUnavailable(
        `${where} was refused (${name}): ${(err as Error).message}; check the key policy, that the key is enabled, and the caller's kms:${op} permission`,
        err,
      );
    }
  }
}

/** Encryption context key of a wrapped repository key (the IAM policies condition on it). */
export const KMS_CONTEXT_PURPOSE = 'lifeboat:purpose';

/** The key object `keys/default` (repository/REPOSITORY-FORMAT.md, "Keys"). */
export interface StoredKey {
  version: 1;
  wrapper: string;
  wrapped: string;
}

/** The key object's JSON, checked: anything else fails as Mover.Corrupt naming the object. */
export function parseStoredKey(bytes: Uint8Array, key: string): StoredKey {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new Corrupt(`repository key object '${key}' is not valid JSON`, err);
  }
  const o = (typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {}) as Record<string, unknown>;
  if (o.version !== 1) throw new Corrupt(`repository key object '${key}' has version ${JSON.stringify(o.version)}, this version reads 1`);
  if (typeof o.wrapper !== 'string' || typeof o.wrapped !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(o.wrapped)) {
    throw new Corrupt(`repository key object '${key}' is malformed: it needs a 'wrapper' name and a base64 'wrapped' key`);
  }
  return { version: 1, wrapper: o.wrapper, wrapped: o.wrapped };
}

/** Loads the repository's master key, creating it on first use when `create` is set. */
export async function loadMasterKey(store: ObjectStore, wrapper: KeyWrapper, opts: { create?: boolean } = {}): Promise<Buffer> {
  const key = objectKeys.masterKey();
  const existing = await store.get(key);
  if (existing) {
    const stored = parseStoredKey(existing, key);
    if (stored.wrapper !== wrapper.kind) throw new Corrupt(`repository key is wrapped by '${stored.wrapper}', not '${wrapper.kind}'`);
    return wrapper.unwrap(Buffer.from(stored.wrapped, 'base64'));
  }
  if (!opts.create) throw new SourceUnavailable(`repository has no key object '${key}'; initialise the repository first`);
  const master = randomBytes(32);
  const stored: StoredKey = { version: 1, wrapper: wrapper.kind, wrapped: (await wrapper.wrap(master)).toString('base64') };
  await store.put(key, Buffer.from(JSON.stringify(stored)));
  return master;
}
