/**
 * One Lifeboat phase in its own process (so /usr/bin/time measures it alone, as it does
 * restic): node bench/lifeboat-child.ts <full|incr|restore> <endpoint> <bucket> <keyFile> <image|target>
 */
import { readFile } from 'node:fs/promises';
import { deriveKeys, keys as objectKeys } from '../core/format.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from '../core/s3-store.ts';
import { withConcurrencyLimit, withRetry } from '../core/store-wrappers.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { defaultPoolSize } from '../mover/pipeline/chunk-pool.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { FolderDriver } from '../mover/sources/folder.ts';
import { stat } from 'node:fs/promises';

const [phase, endpoint, bucket, keyFile, path] = process.argv.slice(2);
if (!phase || !endpoint || !bucket || !keyFile || !path) throw new Error('usage: lifeboat-child.ts <full|incr|restore> <endpoint> <bucket> <keyFile> <path>');
// As the mover builds its store (mover/main.ts): retries, at most 16 requests at once.
const client = s3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
const store = withConcurrencyLimit(withRetry(new S3ObjectStore(client, bucket)), 16);
const keys = deriveKeys(await readFile(keyFile));
const diskId = 'disk0';
let out: unknown;
if (phase === 'full' || phase === 'incr') {
  const disk = { diskId, path, sizeBytes: (await stat(path)).size };
  const reader = await new FolderDriver().openDisk(disk);
  const r = await backupDisk({
    store, keys, reader, disk, backupId: `bench-${phase}`, chunkSize: Number(process.env.BENCH_CHUNK_KIB ?? 512) * 1024, parallelism: 8,
    ...(phase === 'incr' ? { parentManifestKey: objectKeys.manifest('bench-full', diskId), parentBackupId: 'bench-full' } : {}),
  });
  await reader.close();
  out = { ...r.stats, chunkWorkers: defaultPoolSize() };
} else if (phase === 'restore') {
  out = await restoreDisk({ store, keys, backupId: 'bench-incr', diskId, target: path, parallelism: 8 });
} else throw new Error(`unknown phase ${phase}`);
process.stdout.write(JSON.stringify(out) + '\n');
