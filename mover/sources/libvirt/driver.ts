/**
 * The libvirt source driver: QEMU/KVM virtual machines through libvirt (see README.md).
 *
 * A running VM is backed up through a libvirt backup job in pull mode: one step freezes
 * the guest's file systems through its agent (when it has one), starts the job (QEMU
 * exports every disk over NBD as of that instant, copying blocks the guest overwrites to
 * a scratch file first, so guest writes never wait on the backup) and creates a checkpoint
 * (a dirty bitmap per disk), then thaws. Movers read the exports with block status:
 * `base:allocation` for holes, `qemu:dirty-bitmap:backup-<disk>` for the blocks written
 * since the parent backup's checkpoint. A VM that is shut off is read from its image files
 * through `qemu-nbd`, read-only.
 */
import { chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SourceUnavailable } from '../../../contracts/errors.ts';
import type { DiscoveredVm } from '../../../contracts/discovery.ts';
import type { ChangeTrackingOffer, DiskRef, SnapshotResult } from '../../../contracts/jobs.ts';
import { resolveExports, type LibvirtExports, type ResolvedExports } from '../../../contracts/libvirt-exports.ts';
import type { NbdTlsCredentials } from '../../nbd/tls.ts';
import { tcpNbdUri } from '../../nbd/uri.ts';
import type { DiskReader, SnapshotRequest, SourceDriver, VmInventory } from '../source.ts';
import { backedUpDisks, parseDomainXml, qemuOwner, type DomainDisk, type DomainInfo } from './domain-xml.ts';
import { checkpointXml, pullBackupXml, tcpBackupXml, tracksChanges, untrackedReason } from './backup-xml.ts';
import { checkpointName, deleteCheckpoint, listCheckpoints, pruneCheckpoints } from './checkpoints.ts';
import { abortLifeboatJob, cleanLeftovers } from './leftovers.ts';
import { openNbdDisk } from './nbd-disk.ts';
import { quiesced } from './quiesce.ts';
import { exportImages } from './shut-off.ts';
import { handleOf, nbdUri, parseHandle, readOwner, snapshotDir, stopQemuNbd, writeOwner } from './snapshot-folder.ts';
import { isNoDomain, Virsh, type VirshOptions } from './virsh.ts';

export interface LibvirtDriverOptions extends VirshOptions {
  /** libvirt connection URI of the host (`qemu:///system`, `qemu+ssh://host/system`). */
  uri: string;
  /**
   * Where snapshots keep their NBD sockets and scratch files, one folder per backup. On
   * the hypervisor host: QEMU writes the scratch files there (a copy of each block the guest
   * overwrites during the backup, so it needs room for what the guest writes meanwhile).
   */
  workDir: string;
  /** The qemu-nbd that exports a shut-off VM's images (default: on the PATH). */
  qemuNbd?: string;
  /** How long to wait for the guest agent to answer before taking a crash-consistent snapshot (default 10 s). */
  agentTimeoutSeconds?: number;
  /** How backup jobs export the disks (the host's `exports`; default: a unix socket in `workDir`). */
  exports?: LibvirtExports;
  /** TLS credentials for reading `nbds://` exports (LIFEBOAT_NBD_TLS_DIR). */
  nbdTls?: NbdTlsCredentials;
}

/** Attempts at a free port of the host's range before the backup fails. */
const PORT_ATTEMPTS = 16;

export class LibvirtDriver implements SourceDriver, VmInventory {
  private readonly virsh: Virsh;
  private readonly o: LibvirtDriverOptions;
  private readonly exports: ResolvedExports;

  constructor(o: LibvirtDriverOptions) {
    this.o = o;
    this.virsh = new Virsh(o.uri, o);
    this.exports = resolveExports(o.exports);
  }

  async snapshot(req: SnapshotRequest, opts: { signal?: AbortSignal } = {}): Promise<SnapshotResult> {
    const what = `VM '${req.source}' on ${this.o.uri}`;
    const state = await this.domainState(req.source, what, opts.signal);
    const xml = await this.virsh.run(['dumpxml', '--inactive', '--security-info', '--', req.source], opts);
    const info = parseDomainXml(xml, what);
    const disks = backedUpDisks(info, what);
    const dir = snapshotDir(this.o.workDir, info.uuid, req.backupId);
    await cleanLeftovers(this.virsh, this.o.workDir, info, req.backupId, opts.signal);
    // Only the parent's checkpoint is needed from now on: older ones, and those of backups
    // that failed, go (libvirt merges a deleted checkpoint's bitmap into its predecessor, so
    // the parent's record of changes stays complete). Offline, libvirt cannot merge bitmaps.
    if (state === 'running' || state === 'paused')
      await pruneCheckpoints(this.virsh, info.name, req.parentCheckpoint ? [req.parentCheckpoint] : [], opts.signal);
    // The work folder may be passed through (QEMU's user reaches its snapshot folder), not listed.
    await mkdir(this.o.workDir, { recursive: true, mode: 0o711 });
    await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await writeOwner(dir, { domain: info.uuid, backupId: req.backupId });
    const config = { driver: 'libvirt', name: info.name, uuid: info.uuid, domainXml: xml, state };
    try {
      if (state === 'shut off') {
        if (this.exports.transport === 'tcp' && !isLocalUri(this.o.uri)) {
          throw new SourceUnavailable(
            `${what} is shut off: its images are on the hypervisor, which this mover reaches only through libvirt and the backup jobs' TCP exports (a job needs a running VM). Start the VM, or back it up with a mover on the hypervisor host`,
          );
        }
        return await exportImages(this.virsh, this.o.qemuNbd, info, disks, dir, config, opts.signal);
      }
      if (state !== 'running' && state !== 'paused')
        throw new SourceUnavailable(
          `${what} is ${state}; the libvirt driver backs up running, paused and shut-off VMs: try again once it is running or shut off`,
        );
      return await this.beginBackupJob(req, info, disks, dir, config, opts.signal);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Every domain of the host with its state, disks (sizes and formats) and Lifeboat tags. */
  async discover(opts: { signal?: AbortSignal } = {}): Promise<DiscoveredVm[]> {
    const out: DiscoveredVm[] = [];
    for (const name of await this.vmNames(opts)) {
      const vm = await this.describeVm(name, opts);
      if (vm) out.push(vm);
    }
    return out;
  }

  /** The names of the host's domains, running or not (VmInventory). */
  async vmNames(opts: { signal?: AbortSignal } = {}): Promise<string[]> {
    return (await this.virsh.run(['list', '--all', '--name'], opts))
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  }

  /** One domain's state, disks and tags; undefined when it was undefined since it was listed (VmInventory). */
  async describeVm(name: string, opts: { signal?: AbortSignal } = {}): Promise<DiscoveredVm | undefined> {
    let xml: string;
    let state: string;
    try {
      state = (await this.virsh.run(['domstate', '--', name], opts)).trim();
      xml = await this.virsh.run(['dumpxml', '--inactive', '--', name], opts);
    } catch (err) {
      if (isNoDomain(err)) return undefined;
      throw err;
    }
    const info = parseDomainXml(xml, `VM '${name}' on ${this.o.uri}`);
    const disks = [];
    for (const d of info.disks.filter((x) => x.device === 'disk' || x.device === 'lun')) {
      const sizeBytes = await this.virsh.run(['domblkinfo', '--', name, d.target], opts).then(
        (o) => Number(/Capacity:\s+(\d+)/.exec(o)?.[1] ?? 0),
        () => 0,
      );
      disks.push({ target: d.target, type: d.type, format: d.format, sizeBytes, ...(d.source ? { source: d.source } : {}) });
    }
    return { name: info.name, uuid: info.uuid, state, tags: info.tags, agent: info.agentChannel, disks };
  }

  async openDisk(disk: DiskRef): Promise<DiskReader> {
    return openNbdDisk(disk, this.o.nbdTls ? { tls: this.o.nbdTls } : {});
  }

  async release(_req: { source: string }, snapshot: SnapshotResult): Promise<void> {
    const h = parseHandle(snapshot.handle);
    // The handle names a folder another mover of the group may have made: delete it only if it is that snapshot's.
    const owner = await readOwner(h.dir);
    if (owner && (owner.domain !== h.domain || snapshotDir(dirname(h.dir), owner.domain, owner.backupId) !== h.dir)) {
      throw new SourceUnavailable(`snapshot folder ${h.dir} does not belong to VM ${h.domain}; refusing to delete it`);
    }
    if (h.kind === 'job') await abortLifeboatJob(this.virsh, this.o.workDir, h.domain, { only: h.dir, foreign: 'ignore' });
    else await stopQemuNbd(h.dir);
    if (!owner) return; // already released
    await rm(h.dir, { recursive: true, force: true });
  }

  /**
   * Releases the snapshot of `backupId` without its handle (its Snapshot task never
   * returned): the job, if it is that backup's, and its folder in this mover's work folder.
   * Its checkpoint goes at the VM's next backup, with every other one but the parent's.
   */
  async releaseBackup(req: { source: string }, backupId: string): Promise<void> {
    let uuid: string;
    try {
      uuid = (await this.virsh.run(['domuuid', '--', req.source])).trim();
    } catch (err) {
      if (isNoDomain(err)) return; // nothing of it can be left on this host
      throw err;
    }
    const dir = snapshotDir(this.o.workDir, uuid, backupId);
    await abortLifeboatJob(this.virsh, this.o.workDir, uuid, { only: dir, foreign: 'ignore' });
    await stopQemuNbd(dir);
    await rm(dir, { recursive: true, force: true });
  }

  /** Deletes the domain's Lifeboat checkpoints but `keep` (after a backup committed: all but its own). */
  async pruneCheckpoints(domain: string, keep: string[], signal?: AbortSignal): Promise<string[]> {
    return pruneCheckpoints(this.virsh, domain, keep, signal);
  }

  // --- running VMs: a backup job in pull mode -------------------------------------------

  private async beginBackupJob(
    req: SnapshotRequest,
    info: DomainInfo,
    disks: DomainDisk[],
    dir: string,
    config: Record<string, unknown>,
    signal?: AbortSignal,
  ): Promise<SnapshotResult> {
    // QEMU keeps changed-block bitmaps only in qcow2 images: a VM without one gets no checkpoint.
    const checkpoint = disks.some(tracksChanges) ? checkpointName(req.backupId) : undefined;
    if (this.exports.transport === 'unix') await this.shareWithQemu(info.name, dir, signal);
    else if (!this.exports.scratchDir) {
      const block = disks.find((d) => d.type !== 'file' || !d.source);
      if (block)
        throw new SourceUnavailable(
          `disk ${block.target} of VM '${info.name}' is a ${block.type} device: its backup's scratch file cannot go beside it on the hypervisor; set the host's exports.scratchDir to a folder on the hypervisor`,
        );
    }
    const base = checkpoint ? await this.incrementalBase(req, info, signal) : { reason: untrackedReason(disks[0]!) };
    if (checkpoint) await writeFile(join(dir, 'checkpoint.xml'), checkpointXml(checkpoint, disks));
    let uriOf: (exportName: string) => string = () => '';
    const consistency = await quiesced(this.virsh, this.o.agentTimeoutSeconds, info, req.quiesce, signal, async () => {
      try {
        uriOf = await this.beginJob(info, disks, dir, base.since, !!checkpoint, signal);
        return base;
      } catch (err) {
        if (!base.since) throw err;
        // The parent's checkpoint is there but its bitmaps are not usable (an unclean
        // shutdown leaves them inconsistent, a resized disk invalidates them): read everything.
        if (checkpoint) await deleteCheckpoint(this.virsh, info.name, checkpoint, signal).catch(() => {});
        uriOf = await this.beginJob(info, disks, dir, undefined, !!checkpoint, signal);
        return { reason: `the checkpoint of the parent backup could not be used (${(err as Error).message.slice(0, 300)})` };
      }
    });
    const offer: ChangeTrackingOffer =
      consistency.base.since && req.parentBackupId
        ? { since: consistency.base.since, sinceBackupId: req.parentBackupId }
        : { unavailable: consistency.base.reason ?? 'no parent checkpoint' };
    let refs: DiskRef[];
    try {
      refs = await Promise.all(
        disks.map(
          async (d): Promise<DiskRef> => ({
            diskId: d.target,
            path: uriOf(d.target),
            sizeBytes: await this.capacity(info.name, d.target, signal),
            changeTracking: tracksChanges(d) ? offer : { unavailable: untrackedReason(d) },
          }),
        ),
      );
    } catch (err) {
      // Nothing may outlive a failed snapshot: the job ends, and its checkpoint goes (its bitmap merges into the parent's).
      await abortLifeboatJob(this.virsh, this.o.workDir, info.uuid, { only: dir, foreign: 'ignore' }).catch(() => {});
      if (checkpoint) await deleteCheckpoint(this.virsh, info.name, checkpoint).catch(() => {});
      throw err;
    }
    return {
      handle: handleOf({ domain: info.uuid, dir, kind: 'job' }),
      disks: refs,
      config,
      ...(checkpoint ? { checkpoint } : {}),
      consistency: consistency.level,
    };
  }

  /**
   * QEMU creates the NBD socket and opens the scratch files in the snapshot's folder, and
   * runs as its own user (libvirt's DAC label): the folder is handed to that user, and
   * stays closed to everyone else (the export is the guest's disk).
   */
  private async shareWithQemu(domain: string, dir: string, signal?: AbortSignal): Promise<void> {
    const owner = qemuOwner(await this.virsh.run(['dumpxml', '--security-info', '--', domain], { ...(signal ? { signal } : {}) }));
    if (!owner) return;
    await chown(dir, owner.uid, owner.gid).catch((err: NodeJS.ErrnoException) => {
      throw new SourceUnavailable(
        `the mover cannot give its snapshot folder ${dir} to QEMU's user ${owner.uid}:${owner.gid} (${err.code}): run the mover as root on the hypervisor host`,
        err,
      );
    });
  }

  /** The parent backup's checkpoint, when the domain still has it; else why not. */
  private async incrementalBase(req: SnapshotRequest, info: DomainInfo, signal?: AbortSignal): Promise<{ since?: string; reason?: string }> {
    if (!req.parentBackupId) return { reason: "this is the VM's first backup" };
    if (!req.parentCheckpoint) return { reason: 'the parent backup recorded no checkpoint (the VM was shut off, or it was taken by another driver)' };
    const names = await listCheckpoints(this.virsh, info.name, signal);
    if (!names.includes(req.parentCheckpoint))
      return { reason: `the parent backup's checkpoint ${req.parentCheckpoint} is gone from the VM (deleted by hand, or the VM was redefined)` };
    return { since: req.parentCheckpoint };
  }

  /**
   * Starts the job; returns each export's URI. A unix socket in the snapshot's folder; or
   * a TCP port of the host's range, starting at one picked by the snapshot (so concurrent
   * jobs on a host rarely collide) and moving on while QEMU finds the port taken.
   */
  private async beginJob(
    info: DomainInfo,
    disks: DomainDisk[],
    dir: string,
    since: string | undefined,
    withCheckpoint: boolean,
    signal?: AbortSignal,
  ): Promise<(exportName: string) => string> {
    const backupXml = join(dir, 'backup.xml');
    const begin = async (xml: string) => {
      await writeFile(backupXml, xml);
      await this.virsh.run(['backup-begin', '--', info.name, backupXml, ...(withCheckpoint ? [join(dir, 'checkpoint.xml')] : [])], {
        ...(signal ? { signal } : {}),
      });
    };
    const e = this.exports;
    if (e.transport === 'unix') {
      const socket = join(dir, 'nbd.sock');
      await begin(pullBackupXml(disks, dir, socket, since));
      return (name) => nbdUri(name, socket);
    }
    const [from, to] = e.ports;
    const count = to - from + 1;
    const first = Number.parseInt(basename(dir).slice(0, 8), 16) % count;
    const tried: number[] = [];
    for (let i = 0; i < Math.min(count, PORT_ATTEMPTS); i++) {
      const port = from + ((first + i) % count);
      try {
        await begin(tcpBackupXml(disks, { ...e, port, mark: basename(dir) }, since));
        return (name) => tcpNbdUri(e.address, port, name, e.tls);
      } catch (err) {
        if (!/address already in use|EADDRINUSE/i.test((err as Error).message)) throw err;
        tried.push(port);
      }
    }
    throw new SourceUnavailable(
      `no free port for VM '${info.name}'s backup exports on ${e.address}: ports ${tried.join(', ')} are in use; widen the host's exports.ports (${from}–${to})`,
    );
  }

  private async domainState(domain: string, what: string, signal?: AbortSignal): Promise<string> {
    try {
      return (await this.virsh.run(['domstate', '--', domain], { ...(signal ? { signal } : {}) })).trim();
    } catch (err) {
      if (isNoDomain(err))
        throw new SourceUnavailable(
          `${what} does not exist: was it renamed, moved to another host or deleted? Run discovery, or remove it from the policy`,
          err,
        );
      throw err;
    }
  }

  private async capacity(domain: string, target: string, signal?: AbortSignal): Promise<number> {
    const out = await this.virsh.run(['domblkinfo', '--', domain, target], { ...(signal ? { signal } : {}) });
    const m = /Capacity:\s+(\d+)/.exec(out);
    if (!m) throw new SourceUnavailable(`virsh domblkinfo gave no capacity for disk ${target} of VM '${domain}': ${out.trim().slice(0, 200)}`);
    return Number(m[1]);
  }
}

/** libvirt URIs without a host (`qemu:///system`) reach the libvirtd of the mover's own machine. */
function isLocalUri(uri: string): boolean {
  try {
    return new URL(uri).host === '';
  } catch {
    return false;
  }
}
