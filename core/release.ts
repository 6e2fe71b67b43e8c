/**
 * Signed mover releases, as they lie in the repository bucket:
 *
 *   releases/<version>/files/<name>   the artifact: the mover bundled into ES modules
 *                                     (`mover.mjs`, one file per worker thread entry)
 *   releases/<version>/release.json   its manifest, signed (ed25519) by the publisher
 *   releases/latest.json              a copy of the newest release's manifest
 *
 * The signature covers the format id, the version, the entry file and every file's name,
 * key, SHA-256 and size, so no file and not the version can be swapped without the
 * private key. Movers
 * are installed with the public key only; `lifeboat release keygen` makes the pair and
 * `lifeboat release publish` signs and uploads (cli/release.ts).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { CannotUpgrade } from '../contracts/errors.ts';
import { isVersion } from './version.ts';

export const RELEASE_FORMAT = 'lifeboat-mover-release/1';

export const releaseKeys = {
  manifest: (version: string) => `releases/${version}/release.json`,
  file: (version: string, name: string) => `releases/${version}/files/${name}`,
  latest: 'releases/latest.json',
} as const;

/** A file of a release: installed as `<name>` beside the others. */
export interface ReleaseFile {
  name: string;
  /** Object key in the same bucket. */
  key: string;
  /** Hex SHA-256. */
  sha256: string;
  size: number;
}

export interface ReleaseManifest {
  format: typeof RELEASE_FORMAT;
  version: string;
  /** The file to run (`node <entry>`). */
  entry: string;
  files: ReleaseFile[];
  createdAt: string;
  /** Id of the signing key (see {@link releaseKeyId}); informative, the signature decides. */
  keyId: string;
  /** Base64 ed25519 signature over {@link signedPayload}. */
  signature: string;
}

/** A file name stays inside its install folder: no separators, no dot-dot. */
export const isReleaseFileName = (name: unknown): name is string => typeof name === 'string' && /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name);

/** The bytes the publisher signs: every field that decides what gets installed. */
export function signedPayload(m: Pick<ReleaseManifest, 'version' | 'entry' | 'files'>): Buffer {
  const files = [...m.files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return Buffer.from(
    `${RELEASE_FORMAT}\nversion=${m.version}\nentry=${m.entry}\n${files.map((f) => `file=${f.name} key=${f.key} sha256=${f.sha256} size=${f.size}\n`).join('')}`,
  );
}

/** A short, stable id of a release key: SHA-256 of its public key (SPKI DER), 16 hex digits. */
export function releaseKeyId(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(pub.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

/** A new ed25519 key pair as PEM text (private: PKCS#8, public: SPKI). */
export function generateReleaseKeyPair(): { privateKeyPem: string; publicKeyPem: string; keyId: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: releaseKeyId(publicKey),
  };
}

/** Reads an ed25519 public key from PEM text; `source` names where it came from in errors. */
export function parsePublicKey(text: string, source: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(text.trim());
  } catch (err) {
    throw new Error(`${source} is not a PEM public key (expected the release.pub written by 'lifeboat release keygen'): ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${source} is a ${key.asymmetricKeyType} key; release keys are ed25519 ('lifeboat release keygen')`);
  return key;
}

/** Reads an ed25519 private key from PEM text; `source` names where it came from in errors. */
export function parsePrivateKey(text: string, source: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(text);
  } catch (err) {
    throw new Error(`${source} is not a PEM private key (expected the release.key written by 'lifeboat release keygen'): ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${source} is a ${key.asymmetricKeyType} key; release keys are ed25519 ('lifeboat release keygen')`);
  return key;
}

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Builds the signed manifest of `files` (name → bytes) as version `version`, run by `entry`. */
export function signRelease(opts: {
  version: string;
  entry: string;
  files: Map<string, Uint8Array>;
  privateKey: KeyObject;
  createdAt?: Date;
}): ReleaseManifest {
  if (!isVersion(opts.version)) throw new Error(`release version '${opts.version}' is not a version (expected major.minor.patch, e.g. 1.4.2)`);
  for (const name of opts.files.keys())
    if (!isReleaseFileName(name)) throw new Error(`release file name '${name}' is not allowed (letters, digits, '.', '-', '_'; no folders)`);
  if (!opts.files.has(opts.entry)) throw new Error(`release entry '${opts.entry}' is not one of its files (${[...opts.files.keys()].join(', ')})`);
  const body = {
    version: opts.version,
    entry: opts.entry,
    files: [...opts.files].map(([name, bytes]) => ({ name, key: releaseKeys.file(opts.version, name), sha256: sha256Hex(bytes), size: bytes.byteLength })),
  };
  return {
    format: RELEASE_FORMAT,
    ...body,
    createdAt: (opts.createdAt ?? new Date()).toISOString(),
    keyId: releaseKeyId(opts.privateKey),
    signature: sign(null, signedPayload(body), opts.privateKey).toString('base64'),
  };
}

/** Parses a manifest's bytes; `where` names the object in errors. */
export function parseReleaseManifest(bytes: Uint8Array, where: string): ReleaseManifest {
  let m: Partial<ReleaseManifest>;
  try {
    m = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<ReleaseManifest>;
  } catch (err) {
    throw new CannotUpgrade(`release manifest ${where} is not JSON: ${(err as Error).message}`, err);
  }
  const problems: string[] = [];
  if (m.format !== RELEASE_FORMAT) problems.push(`format is ${JSON.stringify(m.format)}, expected "${RELEASE_FORMAT}"`);
  if (!isVersion(m.version)) problems.push(`version ${JSON.stringify(m.version)} is not a version`);
  if (!Array.isArray(m.files) || m.files.length === 0) problems.push('files is missing');
  for (const f of Array.isArray(m.files) ? m.files : []) {
    if (!isReleaseFileName(f?.name)) problems.push(`file name ${JSON.stringify(f?.name)} is not allowed`);
    if (typeof f?.key !== 'string' || !f.key) problems.push(`file ${JSON.stringify(f?.name)} has no key`);
    if (typeof f?.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(f.sha256)) problems.push(`file ${JSON.stringify(f?.name)}: sha256 is not 64 hex digits`);
    if (!Number.isInteger(f?.size) || f.size < 0) problems.push(`file ${JSON.stringify(f?.name)}: size is not a whole number`);
  }
  if (!Array.isArray(m.files) || !m.files.some((f) => f?.name === m.entry)) problems.push(`entry ${JSON.stringify(m.entry)} is not one of the files`);
  if (typeof m.signature !== 'string' || !m.signature) problems.push('signature is missing');
  if (problems.length) throw new CannotUpgrade(`release manifest ${where} is malformed: ${problems.join('; ')}`);
  return m as ReleaseManifest;
}

/**
 * Checks the manifest's signature against `publicKey` and, when given, every file's size
 * and SHA-256 against the manifest. Throws {@link CannotUpgrade} naming the release, the
 * key and what to do.
 */
export function verifyRelease(
  m: ReleaseManifest,
  publicKey: { key: KeyObject; source: string },
  files?: Map<string, Uint8Array>,
  where = releaseKeys.manifest(m.version),
): void {
  const ourId = releaseKeyId(publicKey.key);
  let ok = false;
  try {
    ok = verify(null, signedPayload(m), publicKey.key, Buffer.from(m.signature, 'base64'));
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new CannotUpgrade(
      `release ${m.version} (${where}) has a bad signature: it does not verify with this mover's release public key ${ourId} (${publicKey.source})` +
        `${m.keyId && m.keyId !== ourId ? `; the manifest says it was signed by key ${m.keyId}` : ''}. ` +
        `Refusing to install it. Publish the release again with the private key that matches ${ourId} ('lifeboat release publish --key ...'), or install the publisher's public key on the mover.`,
    );
  }
  for (const f of files ? m.files : []) {
    const bytes = files!.get(f.name);
    const sha = bytes ? sha256Hex(bytes) : undefined;
    if (!bytes || bytes.byteLength !== f.size || sha !== f.sha256) {
      throw new CannotUpgrade(
        `release ${m.version}: file ${f.key} does not match its signed manifest ${where} (${bytes ? `size ${bytes.byteLength}, sha256 ${sha}` : 'missing'}; signed: size ${f.size}, sha256 ${f.sha256}). ` +
          `Refusing to install it: the release was changed or damaged after signing. Publish it again ('lifeboat release publish').`,
      );
    }
  }
}
