/**
 * A shut-off VM's snapshot: each disk's image exported read-only by `qemu-nbd` on a unix
 * socket in the snapshot's folder (started with `--fork` and a pid file, so any later
 * release stops it). No checkpoint: libvirt cannot merge bitmaps offline.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SourceUnavailable } from '../../../contracts/errors.ts';
import type { DiskRef, SnapshotResult } from '../../../contracts/jobs.ts';
import type { DomainDisk, DomainInfo } from './domain-xml.ts';
import { openNbdDisk } from './nbd-disk.ts';
import { handleOf, nbdUri } from './snapshot-folder.ts';
import type { Virsh } from './virsh.ts';

const run = promisify(execFile);

export async function exportImages(
  virsh: Virsh,
  qemuNbd: string | undefined,
  info: DomainInfo,
  disks: DomainDisk[],
  dir: string,
  config: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<SnapshotResult> {
  const refs: DiskRef[] = [];
  for (const d of disks) {
    // A volume's file is where its pool says, now (the pool may have moved since the domain was defined).
    const source = d.volume ? (await virsh.run(['vol-path', '--pool', d.volume.pool, '--vol', d.volume.name], signal ? { signal } : {})).trim() : d.source;
    if (!source) throw new SourceUnavailable(`disk ${d.target} of VM '${info.name}' has no source file`);
    const socket = join(dir, `${d.target}.sock`);
    // --fork returns once the socket listens; the pid file lets any later release stop it.
    await run(
      qemuNbd ?? 'qemu-nbd',
      [
        '--read-only',
        '--persistent',
        '--shared=16',
        '--fork',
        `--format=${d.format}`,
        `--socket=${socket}`,
        `--export-name=${d.target}`,
        `--pid-file=${join(dir, `${d.target}.pid`)}`,
        '--',
        source,
      ],
      { timeout: 60_000, ...(signal ? { signal } : {}) },
    ).catch((err: { stderr?: string; code?: string }) => {
      throw new SourceUnavailable(
        err.code === 'ENOENT'
          ? 'qemu-nbd is not installed on this mover (Debian: apt-get install qemu-utils); it reads the images of shut-off VMs'
          : `disk ${d.target} of shut-off VM '${info.name}' (${source}) cannot be exported: ${err.stderr?.trim() ?? String(err)}`,
        err,
      );
    });
    refs.push({
      diskId: d.target,
      path: nbdUri(d.target, socket),
      sizeBytes: 0,
      changeTracking: { unavailable: 'the VM was shut off: its images are read whole and compared with the parent backup' },
    });
  }
  for (const r of refs)
    r.sizeBytes = await openNbdDisk(r).then(async (rd) => {
      const s = rd.sizeBytes;
      await rd.close();
      return s;
    });
  return {
    handle: handleOf({ domain: info.uuid, dir, kind: 'qemu-nbd' }),
    disks: refs,
    config,
    consistency: { level: 'filesystem', reason: 'the VM was shut off' },
  };
}
