/**
 * The file-level restore scenario of bench/files.ts and bench/instant.ts: a VM disk (a GPT
 * and one ext4 partition filled with incompressible files, a few thousand small files in
 * folders, and one 1 MiB file to fetch) backed up on the embedded stack by its mover in
 * `site-a`; then the `files` task extracts the 1 MiB file, and lists and extracts a folder,
 * reading the disk by random access through the repository, every GET counted at the store.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { filesJob } from '../contracts/files-job.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder } from '../local/demo/vm-image.ts';
import { type EmbeddedStack, openRepository, repositoryStore } from '../local/stack.ts';
import { runFilesTask } from '../mover/files/files-task.ts';
import { extImage, partitionedDisk } from '../test/helpers/guest-disks.ts';

const MiB = 1024 * 1024;

/** The guest's tree: big incompressible files to fill the file system, folders of small files, the file to fetch. */
function guestTree(root: string, sizeMiB: number): Buffer {
  const bigFiles = Math.floor((sizeMiB * 0.8) / 64);
  mkdirSync(join(root, 'data'), { recursive: true });
  for (let i = 0; i < bigFiles; i++) writeFileSync(join(root, 'data', `blob-${i}.bin`), randomBytes(64 * MiB));
  for (let d = 0; d < 20; d++) {
    mkdirSync(join(root, 'etc', `conf-${d}`), { recursive: true });
    for (let f = 0; f < 100; f++)
      writeFileSync(join(root, 'etc', `conf-${d}`, `setting-${f}.conf`), `key${f} = ${randomBytes(24).toString('hex')}\n`.repeat(1 + (f % 40)));
  }
  mkdirSync(join(root, 'home/user/reports'), { recursive: true });
  const wanted = randomBytes(MiB);
  writeFileSync(join(root, 'home/user/reports/q4.bin'), wanted);
  return wanted;
}

/** The store with every GET's bytes and requests counted. */
function counting(store: ObjectStore): { store: ObjectStore; bytes: () => number; gets: () => number; reset: () => void } {
  let bytes = 0,
    gets = 0;
  const counted: ObjectStore = Object.create(store) as ObjectStore;
  counted.get = async (key, o) => {
    const b = await store.get(key, o);
    gets++;
    bytes += b?.length ?? 0;
    return b;
  };
  return {
    store: counted,
    bytes: () => bytes,
    gets: () => gets,
    reset: () => {
      bytes = 0;
      gets = 0;
    },
  };
}

export interface FilesFigures {
  /** The disk's stored bytes (its backup's). */
  stored: number;
  /** Bytes and GETs fetched to extract the one 1 MiB file. */
  oneFile: { bytes: number; gets: number; seconds: number };
  /** A table: operation, seconds, GETs, bytes fetched, share of stored, disk bytes read. */
  rows: string[][];
  /** How long making the disk and backing it up took. */
  madeSeconds: number;
  backupSeconds: number;
}

/** Makes the disk (`sizeMiB`, under `dir`), backs it up as VM `vmId`, and measures the extractions. */
export async function filesScenario(stack: EmbeddedStack, o: { dir: string; sizeMiB: number; vmId: string }): Promise<FilesFigures> {
  const e = stack.endpoints;
  const { dir, sizeMiB, vmId } = o;
  const t0 = performance.now();
  const tree = join(dir, 'tree');
  const wanted = guestTree(tree, sizeMiB);
  const vmDir = join(dir, 'vms', vmId);
  await createVmFolder(vmDir, { name: vmId, disks: [{ id: 'vda', sizeBytes: MiB }] });
  extImage(join(dir, 'part.img'), tree, sizeMiB - 2);
  await rm(tree, { recursive: true });
  await rm(join(vmDir, 'vda.raw'));
  partitionedDisk(join(vmDir, 'vda.raw'), sizeMiB, `label: gpt\nstart=2048, size=${(sizeMiB - 2) * 2048}, type=L\n`, { 1: join(dir, 'part.img') });
  await rm(join(dir, 'part.img'));
  const madeSeconds = (performance.now() - t0) / 1000;

  await stack.catalog.putVm({ vmId, host: 'esx-01', source: vmDir });
  await stack.catalog.putPolicy({ policyId: `p-${vmId}`, vmIds: [vmId], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
  const t1 = performance.now();
  const d = await runExecution(sfnClient(e), e.backupStateMachineArn, { policyId: `p-${vmId}` }, { pollMs: 200 });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup ${d.status}: ${d.error} ${d.cause}`);
  const backupSeconds = (performance.now() - t1) / 1000;
  const backup = (await stack.catalog.latestCommitted(vmId))!;
  const stored = backup.disks!.reduce((n, x) => n + x.stats.bytesStored, 0);

  const c = counting(repositoryStore(e));
  // The stack's repository, read through the counting store.
  const repository = (await openRepository(e)).on(c.store);
  const logger = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => process.stderr.write(`${event} ${JSON.stringify(f)}\n`) };
  const job = (op: Record<string, unknown>) =>
    filesJob.parse({ filesId: 'bench', vmId, backupId: backup.backupId, diskId: 'vda', moverGroup: 'site-a', repository: { bucket: e.bucket }, ...op });
  const rows: string[][] = [['operation', 'seconds', 'GETs', 'bytes fetched', 'of stored', 'disk bytes read by the reader']];
  const measure = async (name: string, op: Record<string, unknown>, check?: () => void) => {
    c.reset();
    const started = performance.now();
    const r = await runFilesTask(job(op), { repository, logger });
    const seconds = (performance.now() - started) / 1000;
    check?.();
    rows.push([
      name,
      seconds.toFixed(2),
      String(c.gets()),
      `${c.bytes()} (${(c.bytes() / MiB).toFixed(2)} MiB)`,
      `${((100 * c.bytes()) / stored).toFixed(3)}%`,
      String(r.bytesRead),
    ]);
    return { bytes: c.bytes(), gets: c.gets(), seconds };
  };
  const to = join(dir, 'extracted');
  const oneFile = await measure('get one 1 MiB file', { op: 'get', paths: ['/home/user/reports/q4.bin'], target: to }, () => {
    if (!readFileSync(join(to, 'q4.bin')).equals(wanted)) throw new Error('the extracted file differs from the one put in the guest');
  });
  await measure('ls a folder of 100 files', { op: 'ls', path: '/etc/conf-7' });
  await measure('get a folder of 100 files', { op: 'get', paths: ['/etc/conf-3'], target: join(dir, 'extracted-2') });
  return { stored, oneFile, rows, madeSeconds, backupSeconds };
}

/** The rows as aligned columns. */
export function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((x, i) => x.padEnd(widths[i]!)).join('  '));
}
