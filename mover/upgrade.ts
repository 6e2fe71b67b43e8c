/**
 * Self-update at job time. Every job names the oldest mover version allowed to run it
 * (`VmJob.minMoverVersion`). A mover older than that does not run the job with old code:
 *
 * 1. it fetches a signed release from the job's repository bucket (core/release.ts) —
 *    movers may already get objects there, so updating needs no new privilege;
 * 2. it checks the manifest's ed25519 signature against the public key it was installed
 *    with (LIFEBOAT_RELEASE_PUBLIC_KEY_FILE / LIFEBOAT_RELEASE_PUBLIC_KEY), then the
 *    artifact's size and SHA-256 against the signed manifest;
 * 3. it installs the release's files under its home folder (`versions/<version>/`, with
 *    its `release.json`) and switches the `current` symlink to it;
 * 4. it re-executes itself (`process.execve`: same pid, same stdio, so a supervisor sees
 *    no exit) as the new version, handing over the task token: the new program heartbeats
 *    and runs the task under the same token, so the job completes on the upgraded mover
 *    without a failure or a retry in the workflow.
 *
 * A release that does not verify is refused with `Mover.CannotUpgrade` naming the release
 * and the key; nothing is installed and the old mover goes on serving jobs it can run.
 * At start, a mover whose `current` install is newer than itself (a restarted appliance)
 * re-verifies it and re-executes into it.
 */
import type { KeyObject } from 'node:crypto';
import { mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CannotUpgrade } from '../contracts/errors.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { parsePublicKey, parseReleaseManifest, releaseKeyId, releaseKeys, verifyRelease, type ReleaseManifest } from '../core/release.ts';
import { compareVersions, isVersion } from '../core/version.ts';
import type { HandedOverTask, Logger } from './worker.ts';

/** The release public key a mover was installed with, and where it came from (for errors). */
export interface ReleasePublicKey {
  key: KeyObject;
  source: string;
  id: string;
}

/** Reads the release public key from LIFEBOAT_RELEASE_PUBLIC_KEY_FILE or LIFEBOAT_RELEASE_PUBLIC_KEY (PEM); undefined when neither is set. */
export function releasePublicKeyFromEnv(env: NodeJS.ProcessEnv): ReleasePublicKey | undefined {
  const file = env.LIFEBOAT_RELEASE_PUBLIC_KEY_FILE;
  const pem = env.LIFEBOAT_RELEASE_PUBLIC_KEY;
  let key: KeyObject;
  let source: string;
  if (file) {
    source = `LIFEBOAT_RELEASE_PUBLIC_KEY_FILE=${file}`;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new Error(`${source} cannot be read: ${(err as Error).message}`, { cause: err });
    }
    key = parsePublicKey(text, source);
  } else if (pem) {
    source = 'LIFEBOAT_RELEASE_PUBLIC_KEY';
    key = parsePublicKey(pem, source);
  } else {
    return undefined;
  }
  return { key, source, id: releaseKeyId(key) };
}

/** A release installed under the mover's home. */
export interface InstalledRelease {
  version: string;
  /** The program to run: `<home>/versions/<version>/<entry>`. */
  program: string;
}

export interface UpgraderOptions {
  /** The mover's home folder (LIFEBOAT_MOVER_HOME): `versions/` and the `current` link live here. */
  home: string;
  currentVersion: string;
  publicKey: ReleasePublicKey | undefined;
  logger: Logger;
}

/**
 * The minimum version a task's job names, when it is above `current`; otherwise undefined.
 * Releasing a snapshot that was never taken is a no-op any version can do: cleanup after a
 * failure (a refused upgrade among them) is never held up by the version gate.
 */
export function upgradeNeeded(input: unknown, current: string): string | undefined {
  const t = input as { task?: string; minMoverVersion?: unknown; job?: { minMoverVersion?: unknown; snapshot?: unknown } } | undefined;
  if (t?.task === 'releaseSnapshot' && !t.job?.snapshot) return undefined;
  // Backup tasks carry it in their VmJob; other task kinds may carry it at the top level.
  const min = t?.minMoverVersion ?? t?.job?.minMoverVersion;
  if (min === undefined || min === null) return undefined;
  if (!isVersion(min))
    throw new CannotUpgrade(
      `the job's minMoverVersion ${JSON.stringify(min)} is not a version (expected major.minor.patch); check the control plane's LIFEBOAT_MIN_MOVER_VERSION`,
    );
  return compareVersions(current, min) < 0 ? min : undefined;
}

export class Upgrader {
  private readonly o: UpgraderOptions;
  /** One download and install per target version, however many tasks ask at once. */
  private readonly installing = new Map<string, Promise<InstalledRelease>>();

  constructor(o: UpgraderOptions) {
    this.o = o;
  }

  /**
   * Finds a release at or above `minVersion` in the repository (`bucket` names it in
   * messages), verifies and installs it. Throws {@link CannotUpgrade} when there is none,
   * when it does not verify, or when it cannot be installed.
   */
  ensure(store: Pick<ObjectStore, 'get'>, bucket: string, minVersion: string): Promise<InstalledRelease> {
    let p = this.installing.get(minVersion);
    if (!p) {
      p = this.fetchAndInstall(store, bucket, minVersion);
      // A refusal is not cached: the operator may publish a good release meanwhile.
      p.catch(() => this.installing.delete(minVersion));
      this.installing.set(minVersion, p);
    }
    return p;
  }

  private async fetchAndInstall(store: Pick<ObjectStore, 'get'>, bucket: string, minVersion: string): Promise<InstalledRelease> {
    const { o } = this;
    const current = o.currentVersion;
    if (!o.publicKey) {
      throw new CannotUpgrade(
        `mover version ${current} is older than the job's minimum ${minVersion}, and it was installed without a release public key, so it cannot verify a release: ` +
          `set LIFEBOAT_RELEASE_PUBLIC_KEY_FILE to the publisher's release.pub ('lifeboat release keygen') and restart the mover, or install mover ${minVersion} by hand`,
      );
    }
    // The newest release first, then the one of exactly the minimum version: a bad newest
    // release (e.g. signed with the wrong key) does not block a good one that suffices.
    const candidates = await this.findReleases(store, bucket, minVersion);
    let refusal: unknown;
    for (const manifest of candidates) {
      const where = `s3://${bucket}/${releaseKeys.manifest(manifest.version)}`;
      o.logger.info('upgrade.found', { release: manifest.version, manifest: where, keyId: manifest.keyId });
      try {
        // The manifest is checked before any file is even downloaded.
        verifyRelease(manifest, o.publicKey, undefined, where);
        const files = new Map<string, Buffer>();
        for (const f of manifest.files) {
          const bytes = await store.get(f.key);
          if (!bytes)
            throw new CannotUpgrade(
              `release ${manifest.version}: its manifest ${where} is there but its file s3://${bucket}/${f.key} is missing; publish the release again`,
            );
          files.set(f.name, bytes);
        }
        verifyRelease(manifest, o.publicKey, files, where);
        const installed = await this.install(manifest, files);
        o.logger.info('upgrade.installed', { release: manifest.version, program: installed.program, files: manifest.files.length, keyId: o.publicKey.id });
        return installed;
      } catch (err) {
        if (!(err instanceof CannotUpgrade)) throw err;
        o.logger.error('upgrade.release_refused', { release: manifest.version, error: err.message });
        refusal ??= err;
      }
    }
    throw refusal;
  }

  /** Releases at or above `minVersion`: the newest (`latest.json`), then exactly `minVersion`. */
  private async findReleases(store: Pick<ObjectStore, 'get'>, bucket: string, minVersion: string): Promise<ReleaseManifest[]> {
    const found: ReleaseManifest[] = [];
    const latest = await store.get(releaseKeys.latest);
    if (latest) {
      const m = parseReleaseManifest(latest, `s3://${bucket}/${releaseKeys.latest}`);
      if (compareVersions(m.version, minVersion) >= 0) found.push(m);
    }
    const exact = await store.get(releaseKeys.manifest(minVersion));
    if (exact) {
      const m = parseReleaseManifest(exact, `s3://${bucket}/${releaseKeys.manifest(minVersion)}`);
      if (!found.some((f) => f.version === m.version && f.signature === m.signature)) found.push(m);
    }
    if (found.length) return found;
    throw new CannotUpgrade(
      `mover version ${this.o.currentVersion} is older than the job's minimum ${minVersion}, and s3://${bucket}/releases/ holds no release at or above ${minVersion}` +
        ` (looked at ${releaseKeys.latest} and ${releaseKeys.manifest(minVersion)}): publish one with 'lifeboat release publish --key <release.key>'`,
    );
  }

  private async install(m: ReleaseManifest, files: Map<string, Buffer>): Promise<InstalledRelease> {
    const { home } = this.o;
    const dir = join(home, 'versions', m.version);
    const program = join(dir, m.entry);
    try {
      await mkdir(join(home, 'versions'), { recursive: true });
      const tmp = `${dir}.tmp-${process.pid}`;
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp);
      for (const [name, bytes] of files) await writeFile(join(tmp, name), bytes, { mode: 0o644 });
      await writeFile(join(tmp, 'release.json'), JSON.stringify(m, null, 2));
      await rm(dir, { recursive: true, force: true });
      await rename(tmp, dir);
      // Switch `current` atomically: a new link beside it, renamed over it.
      const link = join(home, 'current');
      const tmpLink = `${link}.tmp-${process.pid}`;
      await rm(tmpLink, { force: true });
      await symlink(join('versions', m.version), tmpLink);
      await rename(tmpLink, link);
    } catch (err) {
      throw new CannotUpgrade(
        `release ${m.version} verified but could not be installed under ${home}: ${(err as Error).message}; check LIFEBOAT_MOVER_HOME is writable`,
        err,
      );
    }
    return { version: m.version, program };
  }
}

/**
 * The release `current` points to, when it is newer than `currentVersion` and still
 * verifies (signature and artifact checksum); otherwise undefined, with the reason logged.
 */
export async function installedUpgrade(
  home: string,
  currentVersion: string,
  publicKey: ReleasePublicKey | undefined,
  logger: Logger,
): Promise<InstalledRelease | undefined> {
  const dir = join(home, 'current');
  let manifestBytes: Buffer;
  try {
    manifestBytes = await readFile(join(dir, 'release.json'));
  } catch {
    return undefined; // nothing installed: run as we are
  }
  try {
    const m = parseReleaseManifest(manifestBytes, join(dir, 'release.json'));
    if (compareVersions(m.version, currentVersion) <= 0) return undefined;
    if (!publicKey)
      throw new CannotUpgrade(`installed release ${m.version} cannot be verified: no release public key is set (LIFEBOAT_RELEASE_PUBLIC_KEY_FILE)`);
    const files = new Map<string, Buffer>();
    for (const f of m.files) files.set(f.name, await readFile(join(dir, f.name)));
    verifyRelease(m, publicKey, files, join(dir, 'release.json'));
    return { version: m.version, program: join(dir, m.entry) };
  } catch (err) {
    logger.error('upgrade.installed_release_rejected', { home, error: (err as Error).message });
    return undefined;
  }
}

/**
 * Replaces this process with `release` (same pid and stdio). `handover` tasks are written
 * to a file the new program reads at start (LIFEBOAT_HANDOVER_FILE). Returns only by
 * throwing, when the exec itself fails.
 */
export function reexec(release: InstalledRelease, home: string, handover: HandedOverTask[], env: NodeJS.ProcessEnv = process.env): never {
  const next: NodeJS.ProcessEnv = { ...env };
  delete next.LIFEBOAT_HANDOVER_FILE;
  if (handover.length) {
    const file = join(home, `handover-${process.pid}-${Date.now()}.json`);
    writeFileSync(file, JSON.stringify(handover), { mode: 0o600 });
    next.LIFEBOAT_HANDOVER_FILE = file;
  }
  process.execve!(process.execPath, [process.execPath, ...process.execArgv, release.program], next as Record<string, string>);
  throw new Error('process.execve returned'); // unreachable: execve replaces the process or throws
}

/** Reads and removes the handover file named by LIFEBOAT_HANDOVER_FILE (set by {@link reexec}). */
export function takeHandover(env: NodeJS.ProcessEnv): HandedOverTask[] {
  const file = env.LIFEBOAT_HANDOVER_FILE;
  if (!file) return [];
  delete env.LIFEBOAT_HANDOVER_FILE;
  try {
    const tasks = JSON.parse(readFileSync(file, 'utf8')) as HandedOverTask[];
    unlinkSync(file);
    return tasks.filter((t) => typeof t?.taskToken === 'string' && typeof t.input === 'string');
  } catch {
    return [];
  }
}
