/**
 * File-level restore straight from the repository: how many bytes it downloads. A VM disk
 * (default 2 GiB: a GPT and one ext4 partition filled with incompressible files, a few
 * thousand small files in folders, and one 1 MiB file to fetch) is backed up on the
 * embedded stack by a real mover; then the `files` task extracts the 1 MiB file, and lists
 * a folder, reading the disk by random access through the repository. Every GET is
 * counted at the store; the figure is the bytes fetched against the disk's stored bytes
 * (the target: under 2%). Prints figures; asserts nothing.
 * Usage: npm run bench:files   (BENCH_FILES_MIB sets the disk size, default 2048)
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { filesJob } from '../contracts/files-job.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder } from '../local/demo/vm-image.ts';
import { startMover } from '../local/movers.ts';
import { EmbeddedStack, openRepository, repositoryStore } from '../local/stack.ts';
import { runFilesTask } from '../mover/files/files-task.ts';
import { extImage, partitionedDisk } from '../test/helpers/guest-disks.ts';

const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_FILES_MIB ?? 2048);
const dir = join(tmpdir(), `lifeboat-bench-files-${process.pid}`);
const out = (line: string) => process.stdout.write(`${line}\n`);
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

/** The guest's tree: big incompressible files to fill the file system, folders of small files, the file to fetch. */
function guestTree(root: string): Buffer {
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

const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
const e = stack.endpoints;
const mover = startMover(e, {
  name: 'f-1',
  group: 'site-a',
  onLog: (l) => {
    if (l.level === 'error') process.stderr.write(`mover: ${JSON.stringify(l)}\n`);
  },
});
try {
  out(`load before: ${load()}`);
  const t0 = performance.now();
  const tree = join(dir, 'tree');
  const wanted = guestTree(tree);
  const vmDir = join(dir, 'vms', 'vm-b');
  await createVmFolder(vmDir, { name: 'vm-b', disks: [{ id: 'vda', sizeBytes: MiB }] });
  extImage(join(dir, 'part.img'), tree, sizeMiB - 2);
  await rm(tree, { recursive: true });
  await rm(join(vmDir, 'vda.raw'));
  partitionedDisk(join(vmDir, 'vda.raw'), sizeMiB, `label: gpt\nstart=2048, size=${(sizeMiB - 2) * 2048}, type=L\n`, { 1: join(dir, 'part.img') });
  await rm(join(dir, 'part.img'));
  out(
    `guest disk ${sizeMiB} MiB (GPT, ext4 filled to ~80% with incompressible files, 2,000 small files): made in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );

  await stack.catalog.putVm({ vmId: 'vm-b', host: 'esx-01', source: vmDir });
  await stack.catalog.putPolicy({ policyId: 'p-b', vmIds: ['vm-b'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
  const t1 = performance.now();
  const d = await runExecution(sfnClient(e), e.backupStateMachineArn, { policyId: 'p-b' }, { pollMs: 200 });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup ${d.status}: ${d.error} ${d.cause}`);
  const backup = (await stack.catalog.latestCommitted('vm-b'))!;
  const stored = backup.disks!.reduce((n, x) => n + x.stats.bytesStored, 0);
  out(`backup ${((performance.now() - t1) / 1000).toFixed(1)} s, 1 MiB chunks; the disk's stored bytes: ${stored} (${(stored / MiB).toFixed(1)} MiB)`);

  const { keys } = await openRepository(e);
  const c = counting(repositoryStore(e));
  const logger = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => out(`${event} ${JSON.stringify(f)}`) };
  const job = (op: Record<string, unknown>) =>
    filesJob.parse({ filesId: 'bench', vmId: 'vm-b', backupId: backup.backupId, diskId: 'vda', moverGroup: 'site-a', repository: { bucket: e.bucket }, ...op });
  const rows: string[][] = [['operation', 'seconds', 'GETs', 'bytes fetched', 'of stored', 'disk bytes read by the reader']];
  const measure = async (name: string, op: Record<string, unknown>, check?: () => void) => {
    c.reset();
    const started = performance.now();
    const r = await runFilesTask(job(op), { store: c.store, keys, logger });
    check?.();
    rows.push([
      name,
      ((performance.now() - started) / 1000).toFixed(2),
      String(c.gets()),
      `${c.bytes()} (${(c.bytes() / MiB).toFixed(2)} MiB)`,
      `${((100 * c.bytes()) / stored).toFixed(3)}%`,
      String(r.bytesRead),
    ]);
  };
  const to = join(dir, 'extracted');
  await measure('get one 1 MiB file', { op: 'get', paths: ['/home/user/reports/q4.bin'], target: to }, () => {
    const got = readFileSync(join(to, 'q4.bin'));
    if (!got.equals(wanted)) throw new Error('the extracted file differs from the one put in the guest');
  });
  await measure('ls a folder of 100 files', { op: 'ls', path: '/etc/conf-7' });
  await measure('get a folder of 100 files', { op: 'get', paths: ['/etc/conf-3'], target: join(dir, 'extracted-2') });
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) out(r.map((x, i) => x.padEnd(widths[i]!)).join('  '));
  out(`target: extracting one 1 MiB file downloads < 2% of the disk's stored bytes (${((stored * 0.02) / MiB).toFixed(1)} MiB here)`);
  out(`load after: ${load()}`);
  out(
    `sha256 of the extracted file: ${createHash('sha256')
      .update(readFileSync(join(to, 'q4.bin')))
      .digest('hex')}`,
  );
} finally {
  await mover.stop(true);
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
