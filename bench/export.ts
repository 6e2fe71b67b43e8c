/**
 * Sequential read throughput of a backup served over NBD (mover/recovery/export.ts): a
 * VM disk is backed up on the embedded stack by a real mover, then `nbdcopy` reads the
 * whole export with read-ahead (the default) and without, alternating, and a full restore
 * of the same disk (restoreDisk into a file) runs in the same process for comparison.
 * Prints figures; asserts nothing.
 * Usage: npx node bench/export.ts   (BENCH_EXPORT_MIB sets the disk size, default 1024; BENCH_EXPORT_ROUNDS, default 2;
 * BENCH_EXPORT_READ_AHEAD: the read-ahead settings compared, chunks, default 16,0;
 * BENCH_RTT_MS=40 puts the repository that round trip away, a WAN emulated by bench/delayed-link.ts)
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { exportJob } from '../contracts/export-job.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover } from '../local/movers.ts';
import { EmbeddedStack, openRepository, repositoryStore } from '../local/stack.ts';
import { startDelayedLink } from './delayed-link.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { runExportTask } from '../mover/recovery/export-task.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_EXPORT_MIB ?? 1024);
const rounds = Number(process.env.BENCH_EXPORT_ROUNDS ?? 2);
const rttMs = Number(process.env.BENCH_RTT_MS ?? 0);
const readAheads = (process.env.BENCH_EXPORT_READ_AHEAD ?? '16,0').split(',').map(Number);
const dir = join(tmpdir(), `lifeboat-bench-export-${process.pid}`);
const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
const e = stack.endpoints;
const mover = startMover(e, {
  name: 'a-1',
  group: 'site-a',
  onLog: (l) => {
    if (l.level === 'error') process.stderr.write(`mover: ${JSON.stringify(l)}\n`);
  },
});
const out = (line: string) => process.stdout.write(`${line}\n`);
const quiet = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => out(`${event} ${JSON.stringify(f)}`) };

try {
  const vmDir = join(dir, 'vms', 'vm-e');
  await createVmFolder(vmDir, { name: 'vm-e', disks: [{ id: 'disk0', sizeBytes: sizeMiB * MiB }] }, seededRng(51));
  await stack.catalog.putVm({ vmId: 'vm-e', host: 'esx-01', source: vmDir });
  await stack.catalog.putPolicy({ policyId: 'p-e', vmIds: ['vm-e'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1 });
  const t0 = performance.now();
  const d = await runExecution(sfnClient(e), e.backupStateMachineArn, { policyId: 'p-e' }, { pollMs: 100 });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup ${d.status}: ${d.error} ${d.cause}`);
  const backupId = (await stack.catalog.latestCommitted('vm-e'))!.backupId;
  out(`disk ${sizeMiB} MiB, 1 MiB chunks; backup ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const { keys } = await openRepository(e);
  const link = rttMs > 0 ? await startDelayedLink(e.s3, rttMs) : undefined;
  const store = repositoryStore(link ? { ...e, s3: link.url } : e);
  out(`repository ${link ? `${rttMs} ms round trip away (emulated)` : 'on loopback'}`);

  const exportOnce = async (readAheadChunks: number, nbdcopyArgs: string[]) => {
    const socket = join(dir, `export-${readAheadChunks}.sock`);
    const job = exportJob.parse({
      exportId: 'bench',
      vmId: 'vm-e',
      backupId,
      repository: { bucket: e.bucket },
      diskIds: ['disk0'],
      listen: { socket },
      readAheadChunks,
    });
    const abort = new AbortController();
    let listening!: (u: Record<string, string>) => void;
    const uris = new Promise<Record<string, string>>((ok) => (listening = ok));
    const done = runExportTask(job, { store, keys, logger: quiet, signal: abort.signal, onListening: listening });
    const uri = (await uris).disk0!;
    const started = performance.now();
    await run('nbdcopy', [...nbdcopyArgs, uri, 'null:']);
    const seconds = (performance.now() - started) / 1000;
    abort.abort();
    const r = await done;
    return { seconds, r };
  };
  const restoreOnce = async () => {
    const target = join(dir, 'restored.raw');
    const started = performance.now();
    await restoreDisk({ store, keys, backupId, diskId: 'disk0', target });
    const seconds = (performance.now() - started) / 1000;
    await rm(target, { force: true });
    return seconds;
  };
  const qd1 = ['--connections=1', '--requests=1'];
  for (let i = 0; i < rounds; i++) {
    // Taking turns going first: on a shared machine the later runs pay for the earlier ones.
    const order = i % 2 ? [...readAheads].reverse() : readAheads;
    for (const [ra, args, how] of [...order.map((ra) => [ra, [], 'default']), ...order.map((ra) => [ra, qd1, 'qd1'])] as [number, string[], string][]) {
      const { seconds, r } = await exportOnce(ra, args);
      out(
        `nbdcopy ${how === 'qd1' ? '(1 connection, 1 request at a time: a sequential reader such as a booting guest)' : '(its defaults: several connections, many requests in flight)'}, read-ahead ${ra ? `${ra} chunks` : 'off'}: ${seconds.toFixed(2)} s = ${(sizeMiB / seconds).toFixed(0)} MiB/s of disk; data read (holes skipped by block status) ${(r.bytesServed / MiB).toFixed(0)} MiB = ${(r.bytesServed / MiB / seconds).toFixed(0)} MiB/s; downloaded ${(r.bytesDownloaded / MiB).toFixed(0)} MiB`,
      );
    }
    const s = await restoreOnce();
    out(`full restore (restoreDisk into a file, same process): ${s.toFixed(2)} s = ${(sizeMiB / s).toFixed(0)} MiB/s`);
  }
} finally {
  await mover.stop(true);
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
