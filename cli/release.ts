/**
 * The publisher's side of mover self-update (the mover's side is mover/upgrade.ts):
 * `keygen` makes an ed25519 key pair; `buildMoverRelease` bundles mover/main.ts with
 * esbuild into one ES module with its version compiled in, plus one module per worker
 * thread it starts (`new Worker(new URL('./x.ts', import.meta.url))`, found in the
 * bundled sources and emitted under the same name beside the entry); `publishRelease`
 * signs the files and puts them in a repository bucket.
 */
import { build } from 'esbuild';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObjectStore } from '../core/object-store.ts';
import { generateReleaseKeyPair, parseReleaseManifest, releaseKeys, signRelease, type ReleaseManifest } from '../core/release.ts';
import { compareVersions } from '../core/version.ts';
import type { KeyObject } from 'node:crypto';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const MOVER_ENTRY = join(ROOT, 'mover', 'main.ts');
/** Name of the release's entry file. */
export const RELEASE_ENTRY = 'mover.mjs';

/** Writes `release.key` (private, mode 600) and `release.pub` into `dir`; refuses to overwrite a key. */
export async function keygen(dir: string): Promise<{ privateKeyFile: string; publicKeyFile: string; keyId: string }> {
  await mkdir(dir, { recursive: true });
  const pair = generateReleaseKeyPair();
  const privateKeyFile = join(dir, 'release.key');
  const publicKeyFile = join(dir, 'release.pub');
  try {
    await writeFile(privateKeyFile, pair.privateKeyPem, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw new Error(`${privateKeyFile} exists already; move it away first (movers installed with its public key would refuse releases signed by a new one)`);
    throw err;
  }
  await writeFile(publicKeyFile, pair.publicKeyPem);
  return { privateKeyFile, publicKeyFile, keyId: pair.keyId };
}

const ESM_BANNER = "import { createRequire as __lifeboatCreateRequire } from 'node:module'; const require = __lifeboatCreateRequire(import.meta.url);";
const WORKER_URL = /new URL\(\s*['"](\.\/[A-Za-z0-9._-]+)['"]\s*,\s*import\.meta\.url\s*\)/g;

async function bundle(entry: string, version: string): Promise<{ code: Uint8Array; inputs: string[] }> {
  const out = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    write: false,
    metafile: true,
    define: { LIFEBOAT_BUILD_VERSION: JSON.stringify(version) },
    banner: { js: ESM_BANNER },
    logLevel: 'silent',
    outfile: 'out.mjs',
  });
  const file = out.outputFiles.find((f) => f.path.endsWith('.mjs'));
  if (!file) throw new Error(`esbuild produced no bundle for ${entry}`);
  return { code: file.contents, inputs: Object.keys(out.metafile.inputs).map((p) => resolve(process.cwd(), p)) };
}

/**
 * Bundles the mover as version `version`: the entry, plus every worker thread module its
 * sources start by relative URL (bundled too, under the name the URL asks for).
 */
export async function buildMoverRelease(version: string, entry = MOVER_ENTRY): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  const main = await bundle(entry, version);
  files.set(RELEASE_ENTRY, main.code);
  const pending = [...main.inputs];
  const seen = new Set<string>();
  while (pending.length) {
    const input = pending.pop()!;
    if (seen.has(input) || input.includes('node_modules') || !/\.[cm]?[jt]s$/.test(input)) continue;
    seen.add(input);
    const text = await readFile(input, 'utf8').catch(() => '');
    for (const m of text.matchAll(WORKER_URL)) {
      const workerEntry = resolve(dirname(input), m[1]!);
      const name = basename(workerEntry);
      if (files.has(name)) continue;
      const w = await bundle(workerEntry, version);
      files.set(name, w.code);
      pending.push(...w.inputs);
    }
  }
  // Worker files keep their .ts names (the URL in the code says so): Node loads them as
  // modules of this folder, so the folder says it holds ES modules.
  files.set('package.json', Buffer.from(JSON.stringify({ type: 'module', private: true, version }) + '\n'));
  return files;
}

/**
 * Signs `files` as `version` and puts them and the manifest in `store`; also as
 * `releases/latest.json` unless a newer release is there already.
 */
export async function publishRelease(
  store: Pick<ObjectStore, 'put' | 'get'>,
  opts: { version: string; files: Map<string, Uint8Array>; privateKey: KeyObject },
): Promise<ReleaseManifest> {
  const manifest = signRelease({ version: opts.version, entry: RELEASE_ENTRY, files: opts.files, privateKey: opts.privateKey });
  // Files first, the manifest after them, `latest` last: a reader never sees a manifest whose files are not there yet.
  for (const f of manifest.files) await store.put(f.key, opts.files.get(f.name)!);
  const text = Buffer.from(JSON.stringify(manifest, null, 2));
  await store.put(releaseKeys.manifest(opts.version), text);
  const latest = await store.get(releaseKeys.latest);
  let newer = false;
  try {
    newer = !!latest && compareVersions(parseReleaseManifest(latest, releaseKeys.latest).version, opts.version) > 0;
  } catch {
    newer = false; // an unreadable latest.json is replaced
  }
  if (!newer) await store.put(releaseKeys.latest, text);
  return manifest;
}
