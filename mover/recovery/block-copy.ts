/**
 * The two storage steps of an instant recovery on a libvirt host: a qcow2 overlay whose
 * backing file is an NBD export of a backup's disk (reads of what the guest has not
 * written go to the export; the guest's writes stay in the overlay), and the live move of
 * a running domain's disk to its final image (`virsh blockcopy`: QEMU's drive-mirror copies
 * the whole chain, overlay and backing, into one image while the guest runs, mirrors the
 * guest's new writes, and the domain is pivoted onto the copy once both are in step; libvirt
 * updates the persistent definition too). `--transient-job`: the job is not recovered if the
 * VM stops; that is the price of copying a persistent domain's disk (libvirt refuses otherwise).
 *
 * The copy is a job of libvirt, not of this process: it is started, then watched. A mover
 * that dies leaves it running, and the resumed task watches the same job (see
 * {@link watchCopy}); nothing is copied twice.
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Virsh } from '../sources/libvirt/virsh.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

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
  /** The copy fails when what it still has to copy has not shrunk for this long (default 300 s). */
  stallSeconds?: number;
  signal?: AbortSignal;
  /** Called every poll while the copy runs (the task's liveness). */
  onTick?: () => void;
  /** How often the job is looked at (default 1000 ms). */
  pollMs?: number;
}

/** A running copy job, as `virsh blockjob --info --raw` reports it. */
export interface CopyJob {
  cur: number;
  end: number;
}

/** The disk's block job, or undefined when it has none. */
export async function copyJob(virsh: Virsh, domain: string, disk: string): Promise<CopyJob | undefined> {
  const text = await virsh.run(['blockjob', '--domain', domain, '--path', disk, '--info', '--raw']);
  const cur = /cur=(\d+)/.exec(text);
  const end = /end=(\d+)/.exec(text);
  return cur && end ? { cur: Number(cur[1]), end: Number(end[1]) } : undefined;
}

/** The disk's current source file (from `domblklist`). */
export async function diskSource(virsh: Virsh, domain: string, disk: string): Promise<string | undefined> {
  const text = await virsh.run(['domblklist', '--domain', domain]);
  for (const line of text.split('\n')) {
    const [target, ...source] = line.trim().split(/\s+/);
    if (target === disk) return source.join(' ');
  }
  return undefined;
}

/**
 * Watches the bytes a copy still has to copy: it stalls when they have not reached a new low
 * for `windowMs` (a copy slower than the guest's writes never gets in step: each pass finds as
 * much to copy as the last).
 */
export class StallWatch {
  private best = Number.POSITIVE_INFINITY;
  private bestAt = 0;
  private readonly windowMs: number;
  constructor(windowMs: number) {
    this.windowMs = windowMs;
  }

  /** Records a sample; answers the milliseconds without progress when that is over the window. */
  sample(remaining: number, now: number): number | undefined {
    if (remaining < this.best) {
      this.best = remaining;
      this.bestAt = now;
      return undefined;
    }
    return now - this.bestAt >= this.windowMs ? now - this.bestAt : undefined;
  }

  get lowest(): number {
    return this.best;
  }
}

/** A move that does not get in step with the guest (its remaining bytes not shrinking). */
export class CopyStalled extends Error {}

/**
 * Starts copying the running domain's disk `disk` (with its whole backing chain) to `dest`
 * (created anew: a copy left by an earlier attempt is started over). Returns once libvirt
 * has the job; {@link watchCopy} sees it through.
 */
export async function startCopy(
  virsh: Virsh,
  domain: string,
  disk: string,
  dest: string,
  o: Pick<BlockCopyOptions, 'format' | 'bandwidthMiBs'>,
): Promise<void> {
  await rm(dest, { force: true });
  await virsh.run([
    'blockcopy',
    '--domain',
    domain,
    '--path',
    disk,
    '--dest',
    dest,
    '--format',
    o.format,
    '--transient-job',
    ...(o.bandwidthMiBs ? ['--bandwidth', String(Math.max(1, Math.round(o.bandwidthMiBs * MiB))), '--bytes'] : []),
  ]);
}

/**
 * Waits until the copy job of `disk` is in step and pivots the domain onto `dest`. Resolves
 * at once when the disk already runs on `dest` (a mover that died after the pivot). On
 * failure (the job ended without pivot, it stalled, or abort) the job is cancelled, the
 * domain stays on its old disk, and the error says why.
 */
export async function watchCopy(virsh: Virsh, domain: string, disk: string, dest: string, o: BlockCopyOptions): Promise<void> {
  const stall = new StallWatch((o.stallSeconds ?? 300) * 1000);
  const pollMs = o.pollMs ?? 1000;
  try {
    for (;;) {
      o.signal?.throwIfAborted();
      o.onTick?.();
      const job = await copyJob(virsh, domain, disk);
      if (!job) {
        if ((await diskSource(virsh, domain, disk)) === dest) return;
        throw new Error(
          `the block copy of disk ${disk} to ${dest} stopped without finishing: QEMU's mirror failed (usually the target is full or cannot be written, or the backup's export could not be read); libvirt's log of the domain (/var/log/libvirt/qemu/${domain}.log) may say more`,
        );
      }
      if (job.end > 0 && job.cur === job.end) {
        // In step (libvirt keeps cur below end until the mirror is ready): pivot; not ready after all → poll on.
        const pivoted = await virsh.run(['blockjob', '--domain', domain, '--path', disk, '--pivot']).then(
          () => true,
          () => false,
        );
        if (pivoted) return;
      }
      const stuck = stall.sample(job.end - job.cur, performance.now());
      if (stuck !== undefined) {
        throw new CopyStalled(
          `the move of disk ${disk} to ${dest} makes no progress: ${((job.end - job.cur) / MiB).toFixed(1)} MiB still to copy and no less than ${(stall.lowest / MiB).toFixed(1)} MiB for ${Math.round(stuck / 1000)} s` +
            `${o.bandwidthMiBs ? `, with the move capped at ${o.bandwidthMiBs} MiB/s: the guest writes faster than that; resume with a higher cap (--move-bandwidth) or none` : ': the guest writes faster than the target takes the copy; resume when it writes less or onto faster storage'}`,
        );
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  } catch (err) {
    if (!o.signal?.aborted) await virsh.run(['blockjob', '--domain', domain, '--path', disk, '--abort']).catch(() => {});
    throw err;
  }
}

/**
 * Has QEMU's NBD clients of `domain` (the overlays' backings) connect again now, after their
 * export process was started again: QEMU 7.2's client without `reconnect-delay` reconnects in
 * the background on the first request after a lost connection and fails that request, which
 * would fail a block copy's read (or pause the VM on a guest's). Reads of each NBD node through
 * the monitor (`qemu-io`, HMP; it prints to QEMU's own output, not the monitor's, so success is
 * not seen here) take that first failure instead: three, half a second apart.
 */
export async function reconnectBackings(virsh: Virsh, domain: string): Promise<void> {
  const nodes = (
    JSON.parse(await virsh.run(['qemu-monitor-command', '--', domain, '{"execute":"query-named-block-nodes","arguments":{"flat":true}}'])) as {
      return: { drv: string; 'node-name': string }[];
    }
  ).return
    .filter((n) => n.drv === 'nbd')
    .map((n) => n['node-name']);
  for (let i = 0; i < 3; i++) {
    for (const node of nodes) await virsh.run(['qemu-monitor-command', '--hmp', '--', domain, `qemu-io ${node} "read 0 512"`]);
    await new Promise((r) => setTimeout(r, 500));
  }
}
