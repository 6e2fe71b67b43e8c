/**
 * Mover lifecycle commands: `lifeboat release keygen` and `lifeboat release publish`
 * (cli/release.ts does the work; `lifeboat movers` is a listing, cli/listings.ts). They reach a
 * repository bucket either through a running embedded stack (its endpoints file, written
 * by `lifeboat up`) or, with `--bucket`, S3 with the default AWS credentials.
 */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { ObjectStore } from '../core/object-store.ts';
import { parsePrivateKey } from '../core/release.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { isVersion, LIFEBOAT_VERSION } from '../core/version.ts';
import type { StackEndpoints } from '../local/stack.ts';
import { buildMoverRelease, keygen, publishRelease } from './release.ts';

interface Target {
  dataDir: string;
  bucket?: string;
  s3Endpoint?: string;
  region?: string;
}

async function repository(t: Target): Promise<{ store: ObjectStore; where: string }> {
  if (t.bucket) {
    const client = s3Client({ region: t.region ?? process.env.AWS_REGION ?? 'us-east-1', endpoint: t.s3Endpoint, forcePathStyle: !!t.s3Endpoint });
    return { store: new S3ObjectStore(client, t.bucket), where: `s3://${t.bucket}` };
  }
  const file = join(resolve(t.dataDir), 'endpoints.json');
  let e: StackEndpoints;
  try {
    e = JSON.parse(await readFile(file, 'utf8')) as StackEndpoints;
  } catch (err) {
    throw new Error(
      `cannot read the stack's endpoints from ${file} (${(err as Error).message}); start the stack with \`lifeboat up\`, or name a bucket with --bucket`,
    );
  }
  const client = s3Client({ region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  return { store: new S3ObjectStore(client, e.bucket), where: `s3://${e.bucket} at ${e.s3}` };
}

const targetOptions = (c: Command, dataDir: string) =>
  c
    .option('--data-dir <dir>', 'state folder of a running embedded stack', dataDir)
    .option('--bucket <name>', 'the repository bucket in S3 (default AWS credentials) instead of the embedded stack')
    .option('--s3-endpoint <url>', 'an S3-compatible endpoint for --bucket')
    .option('--region <region>', 'AWS region for --bucket');

export function registerLifecycleCommands(program: Command, defaultDataDir: string, io: { out(line: string): void }): void {
  const release = program.command('release').description("signed mover releases: movers older than a job's minimum version install them");

  release
    .command('keygen')
    .description('make an ed25519 release key pair: release.key (keep it with the publisher) and release.pub (install it on every mover)')
    .option('--out <dir>', "folder for release.key and release.pub (default: the embedded stack's data folder, whose movers then trust it)", defaultDataDir)
    .action(async (opts: { out: string }) => {
      const k = await keygen(resolve(opts.out));
      io.out(
        `release key ${k.keyId}\n  private: ${k.privateKeyFile} (mode 600; signs releases)\n  public:  ${k.publicKeyFile} (movers: LIFEBOAT_RELEASE_PUBLIC_KEY_FILE)`,
      );
    });

  targetOptions(
    release
      .command('publish')
      .description('bundle mover/main.ts (esbuild), sign it with the release key and put it in the repository bucket under releases/<version>/')
      .option('--key <file>', 'the ed25519 private key (default: <data-dir>/release.key)')
      .option('--version <version>', 'version to publish', LIFEBOAT_VERSION),
    defaultDataDir,
  ).action(async (opts: Target & { key?: string; version: string }) => {
    if (!isVersion(opts.version)) throw new Error(`--version ${opts.version} is not a version (expected major.minor.patch, e.g. 1.4.2)`);
    const keyFile = resolve(opts.key ?? join(opts.dataDir, 'release.key'));
    let pem: string;
    try {
      pem = await readFile(keyFile, 'utf8');
    } catch (err) {
      throw new Error(`cannot read the release private key ${keyFile} (${(err as Error).message}); make one with \`lifeboat release keygen\` or pass --key`);
    }
    const privateKey = parsePrivateKey(pem, keyFile);
    const repo = await repository(opts);
    const files = await buildMoverRelease(opts.version);
    const m = await publishRelease(repo.store, { version: opts.version, files, privateKey });
    io.out(`published mover ${m.version} to ${repo.where}, signed by key ${m.keyId}:`);
    for (const f of m.files) io.out(`  ${f.key}  ${f.size} bytes  sha256 ${f.sha256}`);
  });
}
