/**
 * The two storage steps of an instant recovery on a libvirt host: a qcow2 overlay whose
 * backing file is an NBD export of a backup's disk (reads of what the guest has not
 * written go to the export; the guest's writes stay in the overlay), and the live move of
 * a running domain's disk to its final image (`virsh blockcopy`: QEMU's drive-mirror copies
 * the whole chain, overlay and backing, into one image while the guest runs, mirrors the
 * guest's new writes, and pivots the domain onto the copy; libvirt updates the persistent
 * definition too). `--transient-job`: the job is not recovered if the VM stops; that is
 * the price of copying a persistent domain's disk (libvirt refuses otherwise).
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Virsh } from '../sources/libvirt/virsh.ts';

const run = promisify(execFile);

/**
 * Creates `path`, a qcow2 image of `sizeBytes` backed by the raw NBD export at `backingUri`
 * (not opened now: `-u`; QEMU opens it when the domain starts).
 */
export async function createOverlay(path: string, backingUri: string, sizeBytes: number, qemuImg = 'qemu-img'): Promise<void> {
  try {
    await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-u', '-b', backingUri, '-F', 'raw', path, String(sizeBytes)]);
  } catch (err) {
    throw new Error(`cannot create the overlay ${path} (backed by ${backingUri}): ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
  }
}

export interface BlockCopyOptions {
  format: 'raw' | 'qcow2';
  /** MiB/s (fractions allowed); absent: no cap. */
  bandwidthMiBs?: number;
  signal?: AbortSignal;
  /** Called every few seconds while the copy runs (the task's liveness). */
  onTick?: () => void;
}

/**
 * Copies the running domain's disk `target` (with its whole backing chain) to `dest`,
 * waits until source and copy are in step, and pivots the domain onto `dest`. On failure
 * (or abort) the job is cancelled, the domain stays on its old disk, and the error says
 * what libvirt said.
 */
export async function moveDisk(virsh: Virsh, domain: string, target: string, dest: string, o: BlockCopyOptions): Promise<void> {
  // A copy left by an earlier attempt is started over: blockcopy creates its destination.
  await rm(dest, { force: true });
  const tick = setInterval(() => o.onTick?.(), 5000);
  try {
    await virsh.run([
      'blockcopy', '--domain', domain, '--path', target, '--dest', dest, '--format', o.format,
      '--transient-job', '--pivot', ...(o.bandwidthMiBs ? ['--bandwidth', String(Math.max(1, Math.round(o.bandwidthMiBs * 2 ** 20))), '--bytes'] : []),
    ], { timeoutMs: 7 * 24 * 3600_000, ...(o.signal ? { signal: o.signal } : {}) });
  } catch (err) {
    // virsh killed (abort) or the copy failed: make sure no job is left on the disk.
    await virsh.run(['blockjob', '--domain', domain, '--path', target, '--abort']).catch(() => {});
    throw err;
  } finally {
    clearInterval(tick);
  }
}
