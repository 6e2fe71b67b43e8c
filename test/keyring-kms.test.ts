/**
 * The KMS key wrapper against a KMS double (SDK-level mock, as STYLE allows for adapter
 * unit tests): real AES-GCM under a per-key secret, so a ciphertext only opens with the
 * same key id and encryption context, as in KMS.
 */
import { DecryptCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KmsKeyWrapper, loadMasterKey, type KmsClientLike } from '../repository/keyring.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';

class FakeKms implements KmsClientLike {
  readonly calls: (EncryptCommand | DecryptCommand)[] = [];
  private readonly secrets = new Map<string, Buffer>();
  failWith?: Error;

  async send(command: EncryptCommand | DecryptCommand) {
    this.calls.push(command);
    if (this.failWith) throw this.failWith;
    const keyId = command.input.KeyId!;
    let secret = this.secrets.get(keyId);
    if (!secret) this.secrets.set(keyId, (secret = randomBytes(32)));
    const aad = Buffer.from(JSON.stringify(Object.entries(command.input.EncryptionContext ?? {}).sort()));
    if (command instanceof EncryptCommand) {
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', secret, iv).setAAD(aad);
      const body = Buffer.concat([c.update(command.input.Plaintext!), c.final()]);
      return { CiphertextBlob: Buffer.concat([iv, body, c.getAuthTag()]), KeyId: keyId };
    }
    const blob = Buffer.from(command.input.CiphertextBlob!);
    try {
      const d = createDecipheriv('aes-256-gcm', secret, blob.subarray(0, 12)).setAAD(aad);
      d.setAuthTag(blob.subarray(blob.length - 16));
      return { Plaintext: Buffer.concat([d.update(blob.subarray(12, blob.length - 16)), d.final()]), KeyId: keyId };
    } catch {
      throw Object.assign(new Error('The ciphertext refers to a customer master key that does not exist'), {
        name: 'InvalidCiphertextException',
        $metadata: { httpStatusCode: 400 },
      });
    }
  }
}

const KEY = 'arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';

describe('KmsKeyWrapper', () => {
  it('round-trips a repository key under its key id with the repository-key encryption context', async () => {
    const kms = new FakeKms();
    const w = new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-a' });
    const master = randomBytes(32);
    const wrapped = await w.wrap(master);
    expect(wrapped.equals(master)).toBe(false);
    expect(await w.unwrap(wrapped)).toEqual(master);
    const [enc, dec] = kms.calls;
    expect(enc).toBeInstanceOf(EncryptCommand);
    expect(enc!.input).toMatchObject({ KeyId: KEY, EncryptionContext: { 'lifeboat:purpose': 'repository-key' } });
    expect(dec).toBeInstanceOf(DecryptCommand);
    expect(dec!.input).toMatchObject({ KeyId: KEY, EncryptionContext: { 'lifeboat:purpose': 'repository-key' } });
  });

  it('refuses a key object wrapped by another KMS key as Mover.Corrupt, naming the key and the repository', async () => {
    const kms = new FakeKms();
    const other = KEY.replace(/ab$/, 'cd');
    const wrapped = await new KmsKeyWrapper({ client: kms, keyId: other, repository: 'repo-a' }).wrap(randomBytes(32));
    const err = await new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-a' }).unwrap(wrapped).catch((e: Error) => e);
    expect(err).toMatchObject({ name: 'Mover.Corrupt' });
    expect((err as Error).message).toContain(KEY);
    expect((err as Error).message).toContain("'repo-a'");
  });

  it('unwraps a byte-for-byte copy of the key object in a DR repository (replication copies it)', async () => {
    const kms = new FakeKms();
    const master = randomBytes(32);
    const wrapped = await new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-a' }).wrap(master);
    expect(await new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-dr' }).unwrap(wrapped)).toEqual(master);
  });

  it('marks throttling and network failures retryable and access denied not', async () => {
    const kms = new FakeKms();
    const w = new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-a' });
    kms.failWith = Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } });
    await expect(w.unwrap(Buffer.alloc(60))).rejects.toMatchObject({ name: 'Mover.StorageUnavailable', retryable: true });
    kms.failWith = Object.assign(new Error('socket hang up'), { name: 'Error' });
    await expect(w.unwrap(Buffer.alloc(60))).rejects.toMatchObject({ name: 'Mover.StorageUnavailable', retryable: true });
    kms.failWith = Object.assign(new Error('not authorized to perform: kms:Decrypt'), { name: 'AccessDeniedException', $metadata: { httpStatusCode: 400 } });
    const denied = (await w.unwrap(Buffer.alloc(60)).then(
      () => undefined,
      (e: unknown) => e,
    )) as Error & { retryable: boolean };
    expect(denied.retryable).toBe(false);
    expect(denied.message).toContain('kms:Decrypt');
  });

  it('creates and reloads a repository key through loadMasterKey, stored wrapped as kind "kms"', async () => {
    const kms = new FakeKms();
    const store = new MemoryObjectStore();
    const w = new KmsKeyWrapper({ client: kms, keyId: KEY, repository: 'repo-a' });
    const created = await loadMasterKey(store, w, { create: true });
    const stored = JSON.parse((await store.get('keys/default'))!.toString('utf8')) as { wrapper: string; wrapped: string };
    expect(stored.wrapper).toBe('kms');
    expect(Buffer.from(stored.wrapped, 'base64').includes(created)).toBe(false);
    expect(await loadMasterKey(store, w)).toEqual(created);
  });

  it('rejects an empty key id with a message saying where to find it', () => {
    expect(() => new KmsKeyWrapper({ client: new FakeKms(), keyId: '', repository: 'r' })).toThrow(/RepositoryKeyArn/);
  });
});
