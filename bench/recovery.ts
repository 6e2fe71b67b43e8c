/**
 * Figures of the recovery workflows on the embedded stack with real movers: a VM is
 * backed up, restored (write + re-hash), deep-verified, changed by 2% and backed up
 * again, replicated to the DR repository with a standby replica (full, then the
 * incremental), failed over, pruned and garbage-collected.
 * Usage: npx node bench/recovery.ts   (BENCH_RECOVERY_MIB sets the disk size, default 256)
 */
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runExecution, sfnClient } from '../local/client.ts';
import { sha256File } from '../local/demo/demo.ts';
import { changeDisk, createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startMover } from '../local/movers.ts';
import { EmbeddedStack } from '../local/stack.ts';

const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_RECOVERY_MIB ?? 256);
const dir = join(tmpdir(), `lifeboat-bench-recovery-${process.pid}`);
const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
const e = stack.endpoints;
const movers = [startMover(e, { name: 'a-1', group: 'site-a' }), startMover(e, { name: 'dr-1', group: 'dr' })];
const sfn = sfnClient(e);
const out = (line: string) => process.stdout.write(`${line}\n`);
const mb = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

async function run(name: string, input: unknown) {
  const started = performance.now();
  const d = await runExecution(sfn, e.stateMachines[name] ?? e.backupStateMachineArn, input, { pollMs: 100 });
  const seconds = (performance.now() - started) / 1000;
  if (d.status !== 'SUCCEEDED') throw new Error(`${name} ${d.status}: ${d.error} ${d.cause}`);
  return { output: JSON.parse(d.output!) as Record<string, any>, seconds };
}

try {
  const vmDir = join(dir, 'vms', 'vm-b');
  await createVmFolder(vmDir, { name: 'vm-b', disks: [{ id: 'disk0', sizeBytes: sizeMiB * MiB }] }, seededRng(41));
  await stack.catalog.putVm({ vmId: 'vm-b', host: 'esx-01', source: vmDir });
  await stack.catalog.putPolicy({
    policyId: 'p-b',
    vmIds: ['vm-b'],
    bucket: e.bucket,
    chunkSize: MiB,
    slotLimit: 1,
    retention: { keepLast: 1 },
    replicateTo: { repositoryId: 'dr', ...e.repositories.dr! },
  });
  const full = await run('Backup', { policyId: 'p-b' });
  out(`disk ${sizeMiB} MiB; full backup ${full.seconds.toFixed(1)} s, stored ${mb(full.output.totals.bytesStored)}`);

  const restore = await run('Restore', { vmId: 'vm-b', target: join(dir, 'restored'), moverGroup: 'site-a' });
  const same = restore.output.disks[0].sha256 === (await sha256File(join(vmDir, 'disk0.raw')));
  out(`restore (write + re-hash of every chunk): ${restore.seconds.toFixed(1)} s = ${(sizeMiB / restore.seconds).toFixed(0)} MiB/s; byte-identical: ${same}`);
  const verify = await run('DeepVerify', { vmId: 'vm-b', moverGroup: 'site-a' });
  out(
    `deep verify (all ${verify.output.chunksChecked} chunks): ${verify.seconds.toFixed(1)} s, read ${mb(verify.output.bytesRead)}, damaged: ${verify.output.damaged}`,
  );

  const replicaDir = join(dir, 'dr-site');
  const rep1 = await run('Replicate', { vmId: 'vm-b', moverGroup: 'dr', replicaDir });
  out(
    `replicate full: ${rep1.seconds.toFixed(1)} s, ${rep1.output.replication.chunksCopied} chunks, ${mb(rep1.output.replication.bytesCopied)} copied; standby written ${mb(rep1.output.standby[0].bytesWritten)}`,
  );

  const changed = await changeDisk(join(vmDir, 'disk0.raw'), sizeMiB * MiB, 0.02, 4, seededRng(42));
  const incr = await run('Backup', { policyId: 'p-b' });
  out(`changed ${mb(changed)} in 4 extents; incremental stored ${mb(incr.output.totals.bytesStored)} (${incr.output.totals.uploadedChunks} chunks)`);
  const rep2 = await run('Replicate', { vmId: 'vm-b', moverGroup: 'dr', replicaDir });
  const s = rep2.output.standby[0];
  out(
    `replicate incremental: ${rep2.seconds.toFixed(1)} s, ${rep2.output.replication.chunksCopied} chunks, ${mb(rep2.output.replication.bytesCopied)} copied (${(rep2.output.replication.bytesCopied / incr.output.totals.bytesStored).toFixed(3)} x what the incremental stored); standby wrote ${s.chunksWritten} chunks = ${mb(s.bytesWritten)}, replica equals disk: ${s.sha256 === (await sha256File(join(vmDir, 'disk0.raw')))}`,
  );
  const fo = await run('Failover', { vmId: 'vm-b', moverGroup: 'dr', replicaDir });
  out(
    `failover: ${fo.seconds.toFixed(1)} s (replica already current: ${fo.output.disks[0].chunksWritten} chunks written), recovery point ${fo.output.recoveryPoint}, age ${fo.output.recoveryPointAgeSeconds} s`,
  );

  const prune = await run('Prune', { policyId: 'p-b' });
  const gc = await run('Gc', { bucket: e.bucket, graceHours: 0 });
  out(
    `prune: ${prune.output.pruned} backup(s), ${prune.seconds.toFixed(1)} s; gc: ${gc.output.packs.deleted} of ${gc.output.packs.total} packs and ${gc.output.chunks.deleted} of ${gc.output.chunks.total} format-1 chunk objects deleted, ${mb(gc.output.bytesFreed)} freed, ${gc.seconds.toFixed(1)} s`,
  );
} finally {
  await Promise.all(movers.map((m) => m.stop()));
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
