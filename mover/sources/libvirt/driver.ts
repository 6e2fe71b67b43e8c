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
import { execFile } from 'node:child_process';
import { chown, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SourceUnavailable } from '../../../core/errors.ts';
import type { ChangeTrackingOffer, Consistency, DiscoveredVm, DiskRef, SnapshotResult } from '../../../core/jobs.ts';
import type { DiskReader, SnapshotRequest, SourceDriver, VmInventory } from '../source.ts';
import { backedUpDisks, parseDomainXml, qemuOwner, type DomainDisk, type DomainInfo } from './domain-xml.ts';
import { openNbdDisk } from './nbd-disk.ts';
import { isNoDomain, Virsh, type VirshOptions } from './virsh.ts';

const run = promisify(execFile);

/** Checkpoints this driver creates are named after the backup: `lifeboat-<backupId>`. */
export const CHECKPOINT_PREFIX = 'lifeboat-';
export const checkpointName = (backupId: string) => `${CHECKPOINT_PREFIX}${backupId}`;

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
}

/** What `snapshot` returns as its handle: enough for any mover of the group to release it. */
interface Handle {
  domain: string;
  dir: string;
  /** `job`: a libvirt backup job; `qemu-nbd`: exports of a shut-off VM's images. */
  kind: 'job' | 'qemu-nbd';
}

export class LibvirtDriver implements SourceDriver, VmInventory {
  private readonly virsh: Virsh;
  private readonly o: LibvirtDriverOptions;

  constructor(o: LibvirtDriverOptions) {
    this.o = o;
    this.virsh = new Virsh(o.uri, o);
  }

  async snapshot(req: SnapshotRequest, opts: { signal?: AbortSignal } = {}): Promise<SnapshotResult> {
    const what = `VM '${req.source}' on ${this.o.uri}`;
    const state = await this.domainState(req.source, what, opts.signal);
    const xml = await this.virsh.run(['dumpxml', '--inactive', '--security-info', '--', req.source], opts);
    const info = parseDomainXml(xml, what);
    const disks = backedUpDisks(info, what);
    const dir = join(this.o.workDir, info.uuid, req.backupId);
    await this.cleanLeftovers(info, req.backupId, opts.signal);
    // Only the parent's checkpoint is needed from now on: older ones, and those of backups
    // that failed, go (libvirt merges a deleted checkpoint's bitmap into its predecessor, so
    // the parent's record of changes stays complete). Offline, libvirt cannot merge bitmaps.
    if (state === 'running' || state === 'paused') await this.pruneCheckpoints(info.name, req.parentCheckpoint ? [req.parentCheckpoint] : [], opts.signal);
    // The folders above may be passed through (QEMU's user reaches its snapshot folder), not listed.
    await mkdir(join(this.o.workDir, info.uuid), { recursive: true, mode: 0o711 });
    await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err; });
    const config = { driver: 'libvirt', name: info.name, uuid: info.uuid, domainXml: xml, state };
    try {
      if (state === 'shut off') return await this.exportImages(info, disks, dir, config, opts.signal);
      if (state !== 'running' && state !== 'paused') throw new SourceUnavailable(`${what} is ${state}; the libvirt driver backs up running, paused and shut-off VMs: try again once it is running or shut off`);
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
    return (await this.virsh.run(['list', '--all', '--name'], opts)).split('\n').map((l) => l.trim()).filter(Boolean);
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
      const sizeBytes = await this.virsh.run(['domblkinfo', '--', name, d.target], opts).then((o) => Number(/Capacity:\s+(\d+)/.exec(o)?.[1] ?? 0), () => 0);
      disks.push({ target: d.target, type: d.type, format: d.format, sizeBytes, ...(d.source ? { source: d.source } : {}) });
    }
    return { name: info.name, uuid: info.uuid, state, tags: info.tags, agent: info.agentChannel, disks };
  }

  async openDisk(disk: DiskRef): Promise<DiskReader> {
    return openNbdDisk(disk);
  }

  async release(_req: { source: string }, snapshot: SnapshotResult): Promise<void> {
    const h = parseHandle(snapshot.handle);
    if (!h.dir.startsWith(this.o.workDir + '/')) throw new SourceUnavailable(`snapshot handle ${h.dir} is not under the mover's work folder ${this.o.workDir}; refusing to delete it`);
    if (h.kind === 'job') await this.abortOurJob(h.domain, h.dir);
    else await stopQemuNbd(h.dir);
    await rm(h.dir, { recursive: true, force: true });
  }

  // --- running VMs: a backup job in pull mode -------------------------------------------

  private async beginBackupJob(req: SnapshotRequest, info: DomainInfo, disks: DomainDisk[], dir: string, config: Record<string, unknown>, signal?: AbortSignal): Promise<SnapshotResult> {
    const socket = join(dir, 'nbd.sock');
    const checkpoint = checkpointName(req.backupId);
    await this.shareWithQemu(info.name, dir, signal);
    const base = await this.incrementalBase(req, info, signal);
    await writeFile(join(dir, 'checkpoint.xml'), checkpointXml(checkpoint, disks));
    const consistency = await this.quiesced(info, signal, async () => {
      try {
        await this.beginJob(info, disks, dir, socket, base.since, signal);
        return base;
      } catch (err) {
        if (!base.since) throw err;
        // The parent's checkpoint is there but its bitmaps are not usable (an unclean
        // shutdown leaves them inconsistent, a resized disk invalidates them): read everything.
        await this.deleteCheckpoint(info.name, checkpoint, signal).catch(() => {});
        await this.beginJob(info, disks, dir, socket, undefined, signal);
        return { reason: `the checkpoint of the parent backup could not be used (${(err as Error).message.slice(0, 300)})` };
      }
    });
    const offer: ChangeTrackingOffer = consistency.base.since && req.parentBackupId
      ? { since: consistency.base.since, sinceBackupId: req.parentBackupId }
      : { unavailable: consistency.base.reason ?? 'no parent checkpoint' };
    let refs: DiskRef[];
    try {
      refs = await Promise.all(disks.map(async (d): Promise<DiskRef> => ({
        diskId: d.target, path: nbdUri(d.target, socket), sizeBytes: await this.capacity(info.name, d.target, signal), changeTracking: offer,
      })));
    } catch (err) {
      // Nothing may outlive a failed snapshot: the job ends, and its checkpoint goes (its bitmap merges into the parent's).
      await this.abortOurJob(info.name, dir).catch(() => {});
      await this.deleteCheckpoint(info.name, checkpoint).catch(() => {});
      throw err;
    }
    return { handle: handleOf({ domain: info.uuid, dir, kind: 'job' }), disks: refs, config, checkpoint, consistency: consistency.level };
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
      throw new SourceUnavailable(`the mover cannot give its snapshot folder ${dir} to QEMU's user ${owner.uid}:${owner.gid} (${err.code}): run the mover as root on the hypervisor host`, err);
    });
  }

  /** The parent backup's checkpoint, when the domain still has it; else why not. */
  private async incrementalBase(req: SnapshotRequest, info: DomainInfo, signal?: AbortSignal): Promise<{ since?: string; reason?: string }> {
    if (!req.parentBackupId) return { reason: 'this is the VM\'s first backup' };
    if (!req.parentCheckpoint) return { reason: 'the parent backup recorded no checkpoint (the VM was shut off, or it was taken by another driver)' };
    const names = await this.checkpoints(info.name, signal);
    if (!names.includes(req.parentCheckpoint)) return { reason: `the parent backup's checkpoint ${req.parentCheckpoint} is gone from the VM (deleted by hand, or the VM was redefined)` };
    return { since: req.parentCheckpoint };
  }

  private async beginJob(info: DomainInfo, disks: DomainDisk[], dir: string, socket: string, since: string | undefined, signal?: AbortSignal): Promise<void> {
    const backupXml = join(dir, 'backup.xml');
    await writeFile(backupXml, pullBackupXml(disks, dir, socket, since));
    await this.virsh.run(['backup-begin', '--', info.name, backupXml, join(dir, 'checkpoint.xml')], { ...(signal ? { signal } : {}) });
  }

  /**
   * Runs `take` with the guest's file systems frozen through its agent, thawing always;
   * a guest without an agent, or whose agent does not answer, is taken crash-consistent.
   */
  private async quiesced<T>(info: DomainInfo, signal: AbortSignal | undefined, take: () => Promise<T>): Promise<{ base: T; level: Consistency }> {
    if (!info.agentChannel) return { base: await take(), level: { level: 'crash', reason: 'the VM has no guest agent channel (org.qemu.guest_agent.0)' } };
    const timeout = String(this.o.agentTimeoutSeconds ?? 10);
    try {
      await this.virsh.run(['qemu-agent-command', '--timeout', timeout, '--', info.name, '{"execute":"guest-ping"}'], { ...(signal ? { signal } : {}) });
    } catch (err) {
      return { base: await take(), level: { level: 'crash', reason: `the guest agent did not answer (${(err as Error).message.slice(0, 200)})` } };
    }
    let frozen: string;
    try {
      frozen = (await this.virsh.run(['domfsfreeze', '--', info.name], { ...(signal ? { signal } : {}) })).trim();
    } catch (err) {
      return { base: await take(), level: { level: 'crash', reason: `the guest agent could not freeze the file systems (${(err as Error).message.slice(0, 200)})` } };
    }
    try {
      return { base: await take(), level: { level: 'filesystem', reason: `file systems frozen by the guest agent (${frozen || 'none mounted'})` } };
    } finally {
      await this.virsh.run(['domfsthaw', '--', info.name]).catch(() => {}); // the agent also thaws on its own timeout
    }
  }

  // --- shut-off VMs: their images, read-only --------------------------------------------

  private async exportImages(info: DomainInfo, disks: DomainDisk[], dir: string, config: Record<string, unknown>, signal?: AbortSignal): Promise<SnapshotResult> {
    const refs: DiskRef[] = [];
    for (const d of disks) {
      if (!d.source) throw new SourceUnavailable(`disk ${d.target} of VM '${info.name}' has no source file`);
      const socket = join(dir, `${d.target}.sock`);
      // --fork returns once the socket listens; the pid file lets any later release stop it.
      await run(this.o.qemuNbd ?? 'qemu-nbd', ['--read-only', '--persistent', '--shared=16', '--fork', `--format=${d.format}`, `--socket=${socket}`,
        `--export-name=${d.target}`, `--pid-file=${join(dir, `${d.target}.pid`)}`, '--', d.source], { timeout: 60_000, ...(signal ? { signal } : {}) })
        .catch((err: { stderr?: string; code?: string }) => {
          throw new SourceUnavailable(err.code === 'ENOENT'
            ? 'qemu-nbd is not installed on this mover (Debian: apt-get install qemu-utils); it reads the images of shut-off VMs'
            : `disk ${d.target} of shut-off VM '${info.name}' (${d.source}) cannot be exported: ${err.stderr?.trim() ?? String(err)}`, err);
        });
      refs.push({ diskId: d.target, path: nbdUri(d.target, socket), sizeBytes: 0, changeTracking: { unavailable: 'the VM was shut off: its images are read whole and compared with the parent backup' } });
    }
    for (const r of refs) r.sizeBytes = (await openNbdDisk(r).then(async (rd) => { const s = rd.sizeBytes; await rd.close(); return s; }));
    return { handle: handleOf({ domain: info.uuid, dir, kind: 'qemu-nbd' }), disks: refs, config, consistency: { level: 'filesystem', reason: 'the VM was shut off' } };
  }

  // --- leftovers, checkpoints, jobs -----------------------------------------------------

  /**
   * Makes room for a new backup of the domain: a Lifeboat backup job left running by a
   * mover that died is aborted, the folders of earlier snapshots removed, and checkpoints
   * of other Lifeboat backups than the parent deleted (libvirt merges a deleted
   * checkpoint's bitmap into its predecessor, so the parent's changes stay complete).
   */
  private async cleanLeftovers(info: DomainInfo, backupId: string, signal?: AbortSignal): Promise<void> {
    const domainDir = join(this.o.workDir, info.uuid);
    await this.abortOurJob(info.uuid, domainDir);
    for (const entry of await readdir(domainDir).catch(() => [] as string[])) {
      signal?.throwIfAborted();
      if (entry === backupId) continue;
      await stopQemuNbd(join(domainDir, entry));
      await rm(join(domainDir, entry), { recursive: true, force: true });
    }
  }

  /** Deletes the domain's Lifeboat checkpoints but `keep` (after a backup committed: all but its own). */
  async pruneCheckpoints(domain: string, keep: string[], signal?: AbortSignal): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await this.checkpoints(domain, signal)) {
      if (!name.startsWith(CHECKPOINT_PREFIX) || keep.includes(name)) continue;
      await this.deleteCheckpoint(domain, name, signal);
      removed.push(name);
    }
    return removed;
  }

  private async deleteCheckpoint(domain: string, name: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.virsh.run(['checkpoint-delete', '--', domain, name], { ...(signal ? { signal } : {}) });
    } catch (err) {
      // A checkpoint whose bitmap is already gone (an image replaced, a disk removed) can only lose its metadata.
      await this.virsh.run(['checkpoint-delete', '--metadata', '--', domain, name], { ...(signal ? { signal } : {}) }).catch(() => { throw err; });
    }
  }

  private async checkpoints(domain: string, signal?: AbortSignal): Promise<string[]> {
    const out = await this.virsh.run(['checkpoint-list', '--name', '--', domain], { ...(signal ? { signal } : {}) });
    return out.split('\n').map((l) => l.trim()).filter(Boolean);
  }

  /** Aborts the domain's backup job if it is one of this mover's (its socket is under `dirPrefix`); leaves anyone else's alone. */
  private async abortOurJob(domain: string, dirPrefix: string): Promise<void> {
    let xml: string;
    try {
      xml = await this.virsh.run(['backup-dumpxml', '--', domain]);
    } catch (err) {
      if (isNoDomain(err) || /no (domain )?backup job|not active|No job is active/i.test((err as { stderr?: string }).stderr ?? '')) return;
      throw err;
    }
    const socket = /socket=['"]([^'"]+)['"]/.exec(xml)?.[1];
    if (!socket) return;
    if (!socket.startsWith(dirPrefix + '/')) {
      if (dirPrefix.endsWith('/') || socket.startsWith(this.o.workDir + '/')) return;
      throw new SourceUnavailable(`VM '${domain}' has a backup job that is not Lifeboat's (its NBD socket is ${socket}); wait for it to end or abort it with 'virsh domjobabort ${domain}'`);
    }
    await this.virsh.run(['domjobabort', '--', domain]).catch((err) => {
      if (!/no job is active|not active/i.test((err as { stderr?: string }).stderr ?? '')) throw err;
    });
  }

  private async domainState(domain: string, what: string, signal?: AbortSignal): Promise<string> {
    try {
      return (await this.virsh.run(['domstate', '--', domain], { ...(signal ? { signal } : {}) })).trim();
    } catch (err) {
      if (isNoDomain(err)) throw new SourceUnavailable(`${what} does not exist: was it renamed, moved to another host or deleted? Run discovery, or remove it from the policy`, err);
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

/** The standard NBD URI of an export on a unix socket. */
export const nbdUri = (exportName: string, socket: string) => `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socket)}`;

const handleOf = (h: Handle) => JSON.stringify(h);
function parseHandle(handle: string): Handle {
  try {
    const h = JSON.parse(handle) as Handle;
    if (typeof h.dir === 'string' && typeof h.domain === 'string' && (h.kind === 'job' || h.kind === 'qemu-nbd')) return h;
  } catch { /* below */ }
  throw new SourceUnavailable(`snapshot handle ${handle.slice(0, 200)} was not made by the libvirt driver`);
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/** The pull-mode backup job: every disk exported on one unix socket, a scratch file per disk. */
export function pullBackupXml(disks: DomainDisk[], dir: string, socket: string, since: string | undefined): string {
  const entries = disks.map((d) => `    <disk name='${esc(d.target)}' backup='yes' type='file'><scratch file='${esc(join(dir, `${d.target}.scratch`))}'/></disk>`);
  return `<domainbackup mode='pull'>\n${since ? `  <incremental>${esc(since)}</incremental>\n` : ''}  <server transport='unix' socket='${esc(socket)}'/>\n  <disks>\n${entries.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

export function checkpointXml(name: string, disks: DomainDisk[]): string {
  const entries = disks.map((d) => `    <disk name='${esc(d.target)}' checkpoint='bitmap'/>`);
  return `<domaincheckpoint>\n  <name>${esc(name)}</name>\n  <description>Lifeboat backup</description>\n  <disks>\n${entries.join('\n')}\n  </disks>\n</domaincheckpoint>\n`;
}

/** Stops the qemu-nbd processes a shut-off VM's snapshot started (their pid files are in its folder). */
async function stopQemuNbd(dir: string): Promise<void> {
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (!f.endsWith('.pid')) continue;
    const pid = Number((await readFile(join(dir, f), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 1) continue;
    try {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes('qemu-nbd') && cmd.includes(dir)) process.kill(pid, 'SIGTERM');
    } catch { /* already gone */ }
  }
}
