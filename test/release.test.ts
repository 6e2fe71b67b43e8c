/**
 * Signed mover releases (core/release.ts) and the mover's installer (mover/upgrade.ts)
 * against an in-memory repository and a real folder: what is installed, what is refused,
 * and what the refusal says.
 */
import { createPublicKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CannotUpgrade } from '../contracts/errors.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { generateReleaseKeyPair, parsePrivateKey, parseReleaseManifest, releaseKeyId, releaseKeys, signRelease, verifyRelease } from '../core/release.ts';
import { compareVersions, minMoverVersion, MIN_MOVER_VERSION } from '../core/version.ts';
import { publishRelease } from '../cli/release.ts';
import { installedUpgrade, Upgrader, upgradeNeeded, type ReleasePublicKey } from '../mover/upgrade.ts';
import type { Logger } from '../mover/worker.ts';

const logger: Logger = { info: () => {}, error: () => {} };
const files = () =>
  new Map<string, Uint8Array>([
    ['mover.mjs', Buffer.from('console.log("mover 0.2.0")\n')],
    ['chunk-worker.ts', Buffer.from('export {};\n')],
  ]);

function keyPair() {
  const k = generateReleaseKeyPair();
  const privateKey = parsePrivateKey(k.privateKeyPem, 'test');
  const pub = createPublicKey(k.publicKeyPem);
  const publicKey: ReleasePublicKey = { key: pub, source: 'test key file', id: releaseKeyId(pub) };
  return { privateKey, publicKey, keyId: k.keyId };
}

describe('versions', () => {
  it('orders versions as semver does, prereleases before their release', () => {
    const sorted = ['1.0.0', '0.10.0', '0.2.0', '0.2.0-rc.1', '0.2.0-rc.10', '0.2.0-rc.2', '0.2.0-beta', '0.1.9'].sort(compareVersions);
    expect(sorted).toEqual(['0.1.9', '0.2.0-beta', '0.2.0-rc.1', '0.2.0-rc.2', '0.2.0-rc.10', '0.2.0', '0.10.0', '1.0.0']);
    expect(() => compareVersions('1.2', '1.2.0')).toThrow(/'1.2' is not a version/);
  });

  it('takes the minimum mover version from LIFEBOAT_MIN_MOVER_VERSION, and rejects a bad one by name', () => {
    expect(minMoverVersion({})).toBe(MIN_MOVER_VERSION);
    expect(minMoverVersion({ LIFEBOAT_MIN_MOVER_VERSION: '0.3.1' })).toBe('0.3.1');
    expect(() => minMoverVersion({ LIFEBOAT_MIN_MOVER_VERSION: 'latest' })).toThrow(/LIFEBOAT_MIN_MOVER_VERSION=latest is not a version/);
  });

  it('asks for an upgrade only when the job needs a newer mover, never to release a snapshot that was not taken', () => {
    const job = (minMoverVersion: unknown, snapshot: unknown = null) => ({ job: { minMoverVersion, snapshot } });
    expect(upgradeNeeded({ task: 'snapshot', ...job('0.2.0') }, '0.1.0')).toBe('0.2.0');
    expect(upgradeNeeded({ task: 'dispatch', ...job('0.1.0') }, '0.1.0')).toBeUndefined();
    expect(upgradeNeeded({ task: 'dispatch', ...job(undefined) }, '0.1.0')).toBeUndefined();
    expect(upgradeNeeded({ task: 'releaseSnapshot', ...job('0.2.0') }, '0.1.0')).toBeUndefined();
    expect(upgradeNeeded({ task: 'releaseSnapshot', ...job('0.2.0', { handle: 'h' }) }, '0.1.0')).toBe('0.2.0');
    expect(() => upgradeNeeded({ task: 'snapshot', ...job('new') }, '0.1.0')).toThrow(CannotUpgrade);
    expect(upgradeNeeded({ task: 'restoreDisk', minMoverVersion: '0.2.0' }, '0.1.0')).toBe('0.2.0');
  });
});

describe('release signatures', () => {
  it('verifies a release signed with the matching key, files included', () => {
    const { privateKey, publicKey } = keyPair();
    const m = signRelease({ version: '0.2.0', entry: 'mover.mjs', files: files(), privateKey });
    expect(m.files.map((f) => f.key)).toEqual([releaseKeys.file('0.2.0', 'mover.mjs'), releaseKeys.file('0.2.0', 'chunk-worker.ts')]);
    expect(() => verifyRelease(parseReleaseManifest(Buffer.from(JSON.stringify(m)), 'x'), publicKey, files())).not.toThrow();
  });

  it('refuses a release signed by another key, naming the release, both keys and what to do', () => {
    const ours = keyPair();
    const theirs = keyPair();
    const m = signRelease({ version: '0.2.0', entry: 'mover.mjs', files: files(), privateKey: theirs.privateKey });
    let err: unknown;
    try {
      verifyRelease(m, ours.publicKey, undefined, 's3://b/releases/0.2.0/release.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CannotUpgrade);
    const e = err as CannotUpgrade;
    expect(e.name).toBe('Mover.CannotUpgrade');
    expect(e.retryable).toBe(false);
    expect(e.message).toContain('release 0.2.0 (s3://b/releases/0.2.0/release.json) has a bad signature');
    expect(e.message).toContain(`release public key ${ours.keyId} (test key file)`);
    expect(e.message).toContain(`signed by key ${theirs.keyId}`);
    expect(e.message).toContain('lifeboat release publish');
  });

  it('refuses a manifest whose version or file list was edited after signing', () => {
    const { privateKey, publicKey } = keyPair();
    const m = signRelease({ version: '0.2.0', entry: 'mover.mjs', files: files(), privateKey });
    expect(() => verifyRelease({ ...m, version: '9.0.0' }, publicKey)).toThrow(/release 9.0.0 .* has a bad signature/);
    expect(() => verifyRelease({ ...m, files: m.files.slice(0, 1) }, publicKey)).toThrow(/bad signature/);
  });

  it('refuses a file changed after signing, naming the file', () => {
    const { privateKey, publicKey } = keyPair();
    const m = signRelease({ version: '0.2.0', entry: 'mover.mjs', files: files(), privateKey });
    const changed = files();
    changed.set('mover.mjs', Buffer.from('console.log("evil")\n'));
    expect(() => verifyRelease(m, publicKey, changed)).toThrow(/file releases\/0.2.0\/files\/mover.mjs does not match its signed manifest/);
  });

  it('rejects malformed manifests with every problem listed, and file names that leave the install folder', () => {
    expect(() => parseReleaseManifest(Buffer.from('{"format":"x","files":[{"name":"../evil"}]}'), 's3://b/m')).toThrow(
      /release manifest s3:\/\/b\/m is malformed: format is "x".*version undefined is not a version.*file name "..\/evil" is not allowed/,
    );
    const { privateKey } = keyPair();
    expect(() => signRelease({ version: '0.2.0', entry: 'a', files: new Map([['../a', Buffer.from('')]]), privateKey })).toThrow(/'..\/a' is not allowed/);
  });
});

describe('the mover installer', () => {
  let home: string;
  beforeEach(async () => {
    home = await mkdtemp(join(tmpdir(), 'lifeboat-home-'));
  });
  afterEach(async () => {
    await rm(home, { recursive: true, force: true });
  });

  it('installs the newest good release and points current at it; a restarted mover finds it', async () => {
    const { privateKey, publicKey } = keyPair();
    const store = new MemoryObjectStore();
    await publishRelease(store, { version: '0.2.0', files: files(), privateKey });
    const installed = await new Upgrader({ home, currentVersion: '0.1.0', publicKey, logger }).ensure(store, 'bucket', '0.2.0');
    expect(installed).toEqual({ version: '0.2.0', program: join(home, 'versions', '0.2.0', 'mover.mjs') });
    expect(await readFile(installed.program, 'utf8')).toBe('console.log("mover 0.2.0")\n');
    expect(await readlink(join(home, 'current'))).toBe(join('versions', '0.2.0'));
    expect(await installedUpgrade(home, '0.1.0', publicKey, logger)).toEqual({ version: '0.2.0', program: join(home, 'current', 'mover.mjs') });
    // Already that version: nothing to switch to.
    expect(await installedUpgrade(home, '0.2.0', publicKey, logger)).toBeUndefined();
    // An installed file changed on disk is not run.
    await writeFile(join(home, 'versions', '0.2.0', 'mover.mjs'), 'tampered');
    const errors: string[] = [];
    expect(await installedUpgrade(home, '0.1.0', publicKey, { info: () => {}, error: (_e, f) => errors.push(String(f?.error)) })).toBeUndefined();
    expect(errors.join()).toMatch(/does not match its signed manifest/);
  });

  it('installs nothing from a release with a bad signature, and says which release and key', async () => {
    const ours = keyPair();
    const theirs = keyPair();
    const store = new MemoryObjectStore();
    await publishRelease(store, { version: '0.3.0', files: files(), privateKey: theirs.privateKey });
    await expect(new Upgrader({ home, currentVersion: '0.1.0', publicKey: ours.publicKey, logger }).ensure(store, 'bucket', '0.3.0')).rejects.toThrow(
      new RegExp(`release 0.3.0 \\(s3://bucket/releases/0.3.0/release.json\\) has a bad signature.*${ours.keyId}`),
    );
    expect(existsSync(join(home, 'current'))).toBe(false);
    expect(existsSync(join(home, 'versions', '0.3.0'))).toBe(false);
  });

  it('falls back to the release of exactly the minimum version when the newest one does not verify', async () => {
    const ours = keyPair();
    const theirs = keyPair();
    const store = new MemoryObjectStore();
    await publishRelease(store, { version: '0.2.0', files: files(), privateKey: ours.privateKey });
    await publishRelease(store, { version: '0.3.0', files: files(), privateKey: theirs.privateKey });
    const installed = await new Upgrader({ home, currentVersion: '0.1.0', publicKey: ours.publicKey, logger }).ensure(store, 'bucket', '0.2.0');
    expect(installed.version).toBe('0.2.0');
    await expect(new Upgrader({ home, currentVersion: '0.2.0', publicKey: ours.publicKey, logger }).ensure(store, 'bucket', '0.3.0')).rejects.toThrow(
      /release 0.3.0 .* bad signature/,
    );
  });

  it('says so when no release is recent enough, or when the mover has no public key', async () => {
    const { privateKey, publicKey } = keyPair();
    const store = new MemoryObjectStore();
    await publishRelease(store, { version: '0.2.0', files: files(), privateKey });
    await expect(new Upgrader({ home, currentVersion: '0.1.0', publicKey, logger }).ensure(store, 'bucket', '0.4.0')).rejects.toThrow(
      /mover version 0.1.0 is older than the job's minimum 0.4.0, and s3:\/\/bucket\/releases\/ holds no release at or above 0.4.0/,
    );
    await expect(new Upgrader({ home, currentVersion: '0.1.0', publicKey: undefined, logger }).ensure(store, 'bucket', '0.2.0')).rejects.toThrow(
      /installed without a release public key.*LIFEBOAT_RELEASE_PUBLIC_KEY_FILE/,
    );
  });

  it('keeps latest.json on the newest release when an older one is published', async () => {
    const { privateKey } = keyPair();
    const store = new MemoryObjectStore();
    await publishRelease(store, { version: '0.3.0', files: files(), privateKey });
    await publishRelease(store, { version: '0.2.5', files: files(), privateKey });
    expect(parseReleaseManifest((await store.get(releaseKeys.latest))!, 'latest').version).toBe('0.3.0');
    expect(await store.get(releaseKeys.manifest('0.2.5'))).toBeDefined();
  });
});
