/**
 * The chunk-size table of repository/REPOSITORY-FORMAT.md: for each chunk size, back up the
 * bench image (bench/image.ts) and its changed copy through the real pipeline into a
 * store that keeps only object sizes, and count bytes stored, objects and requests.
 * No network and no timing: the figures are exact and repeatable.
 * Usage: node bench/chunk-sizes.ts   (BENCH_SIZE_MIB=256 for a quick run; BENCH_CHUNK_SIZES_KIB=256,512,1024,4096; BENCH_PACK_MIB=8)
 */
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { objectKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import type { ListedKey, ObjectInfo, ObjectStore } from '../core/object-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { FolderDriver } from '../mover/sources/folder.ts';
import { benchImages } from './image.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Remembers each object's size only (enough for the pipeline's HEAD and for counting). */
class SizeOnlyStore implements ObjectStore {
  readonly sizes = new Map<string, number>();
  puts = 0;
  heads = 0;
  gets = 0;
  private readonly manifests = new Map<string, Buffer>();
  async put(key: string, body: Uint8Array): Promise<void> {
    this.puts++;
    this.sizes.set(key, body.byteLength);
    // The incremental reads its parent's manifest and the repository's index.
    if (key.startsWith('manifests/') || key.startsWith('index/')) this.manifests.set(key, Buffer.from(body));
  }
  async get(key: string): Promise<Buffer | undefined> {
    this.gets++;
    return this.manifests.get(key);
  }
  async *list(prefix: string): AsyncIterable<ListedKey> {
    for (const [key, size] of [...this.sizes].filter(([k]) => k.startsWith(prefix)).sort()) yield { key, size };
  }
  async head(key: string): Promise<ObjectInfo | undefined> {
    this.heads++;
    const size = this.sizes.get(key);
    return size === undefined ? undefined : { size };
  }
  bytes(): number {
    let n = 0;
    for (const s of this.sizes.values()) n += s;
    return n;
  }
}

const root = fileURLToPath(new URL('..', import.meta.url));
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 2048);
const chunkKiBs = (process.env.BENCH_CHUNK_SIZES_KIB ?? '256,512,1024,4096').split(',').map(Number);
const img = await benchImages(join(root, '.lifeboat', 'bench'), sizeMiB);
const masterKey = randomBytes(32);
const driver = new FolderDriver();
const imageGiB = img.sizeBytes / GiB;

const packMiB = Number(process.env.BENCH_PACK_MIB ?? 8);
const rows: string[][] = [
  [
    'chunk',
    'full stored MiB',
    'objects / GiB',
    'full requests / GiB',
    'index KiB / GiB',
    'incr new chunks',
    'incr uploaded MiB',
    'incr stored MiB',
    'amplification',
  ],
];
for (const kib of chunkKiBs) {
  const chunkSize = kib * 1024;
  const store = new SizeOnlyStore();
  const run = async (path: string, backupId: string, parent?: string) => {
    const disk = { diskId: 'disk0', path, sizeBytes: (await stat(path)).size };
    const reader = await driver.openDisk(disk);
    try {
      return await backupDisk({
        repository: new Repository(store, masterKey),
        reader,
        disk,
        backupId,
        chunkSize,
        packBytes: packMiB * MiB,
        ...(parent ? { parentBackupId: parent, parentManifestKey: objectKeys.manifest(parent, 'disk0') } : {}),
      });
    } finally {
      await reader.close();
    }
  };
  const full = await run(img.base, 'full');
  const fullBytes = store.bytes();
  const fullObjects = store.sizes.size;
  const fullRequests = store.puts + store.heads + store.gets;
  let indexBytes = 0;
  for (const [key, size] of store.sizes) if (key.startsWith('index/')) indexBytes += size;
  const incr = await run(img.changed, 'incr', 'full');
  const incrBytes = store.bytes() - fullBytes;
  rows.push([
    `${kib} KiB`,
    (fullBytes / MiB).toFixed(1),
    (fullObjects / imageGiB).toFixed(0),
    (fullRequests / imageGiB).toFixed(0),
    (indexBytes / 1024 / imageGiB).toFixed(0),
    String(incr.stats.uploadedChunks),
    (incr.stats.bytesUploaded / MiB).toFixed(1),
    (incrBytes / MiB).toFixed(1),
    // Plaintext uploaded per byte actually changed in the copy.
    (incr.stats.bytesUploaded / img.changedBytes).toFixed(1) + 'x',
  ]);
  process.stderr.write(`${kib} KiB done (full ${full.stats.uploadedChunks} chunks)\n`);
}
console.log(
  `${packMiB} MiB packs; ${sizeMiB} MiB image (zero ${(img.mix.zero / MiB).toFixed(0)} MiB, text ${(img.mix.text / MiB).toFixed(0)} MiB, random ${(img.mix.random / MiB).toFixed(0)} MiB); copy with ${(img.changedBytes / MiB).toFixed(1)} MiB changed`,
);
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
for (const [n, r] of rows.entries()) {
  console.log('| ' + r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |');
  if (n === 0) console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
}
