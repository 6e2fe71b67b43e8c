/**
 * Replica VMs at the DR site. A libvirt VM whose DR repository keeps replica VMs has, on
 * the DR site's libvirt host, a domain `<name>-replica` defined from the backup's domain
 * XML (new UUID and MACs, networks mapped through the site's network map), kept powered
 * off. Its disks are qcow2 overlay chains in `<replicaDir>/<vmId>/`:
 *
 *   layers/<disk>-<n>-<backupId>.qcow2   one per restore point, each backed by the one before;
 *                                        written once (only the chunks whose ids changed
 *                                        between the two backups' manifests), then read-only
 *   active/<disk>.qcow2                  an empty overlay over the newest point: the domain's
 *                                        disk, so booting it never writes a restore point
 *   replica.json                         the points (backup id, recovery point, layers), the
 *                                        domain, and `failedOver` while a failover runs it
 *
 * A replica keeps `keepPoints` points: the oldest is merged into its successor
 * (`qemu-img commit` into the oldest layer file, then the next layer is rebased onto it), in
 * an order where every point listed stays readable if the mover dies half-way.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Corrupt } from '../../contracts/errors.ts';
import { replicaDomainName, replicaPoint, type NetworkMap, type ReplicaJob, type ReplicaPoint, type ReplicaUpdate } from '../../contracts/dr.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { ReplicateJob } from '../../contracts/recovery-jobs.ts';
import type { Repository } from '../../repository/open.ts';
import { NbdClient } from '../nbd/client.ts';
import { restoredDomainXml } from '../sources/libvirt/domain-xml.ts';
import { isNoDomain, Virsh } from '../sources/libvirt/virsh.ts';
import { checkedChunk, diffable, sameAs } from './manifest-diff.ts';
import { ManifestCursor } from '../../repository/manifest/reader.ts';
import { readVmConfig } from './restore-tasks.ts';

const run = promisify(execFile);

/** What `replica.json` holds. */
export interface ReplicaState {
  vmId: string;
  domain: string;
  uuid: string;
  /** The backed-up domain XML the replica was defined from (test failovers define copies from it). */
  sourceXml: string;
  networkMap: NetworkMap;
  /** Oldest first. */
  points: ReplicaPoint[];
  /** Set while a failover runs the replica (its active overlays are over this point). */
  failedOver?: { runId: string; backupId: string; at: string };
}

export const replicaPaths = (replicaDir: string, vmId: string) => {
  const dir = join(replicaDir, vmId);
  return {
    dir,
    state: join(dir, 'replica.json'),
    layers: join(dir, 'layers'),
    active: join(dir, 'active'),
    consoleLog: join(dir, 'console.log'),
    xml: join(dir, 'domain.xml'),
  };
};

export async function readReplicaState(replicaDir: string, vmId: string): Promise<ReplicaState | undefined> {
  const text = await readFile(replicaPaths(replicaDir, vmId).state, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const s = JSON.parse(text) as ReplicaState;
  s.points = s.points.map((p) => replicaPoint.parse(p));
  return s;
}

export async function writeReplicaState(replicaDir: string, s: ReplicaState): Promise<void> {
  const path = replicaPaths(replicaDir, s.vmId).state;
  await writeFile(`${path}.tmp`, JSON.stringify(s, null, 1));
  await rename(`${path}.tmp`, path);
}

export async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT')
      throw new RecoveryRequestInvalid('qemu-img is not installed on this DR mover (Debian: apt-get install qemu-utils); replica VMs need it');
    throw new Corrupt(`qemu-img ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`, err);
  }
}

/**
 * A qcow2 overlay at `path` over `backing` (which stays read-only). Given its size, the
 * backing chain is not opened (`-u`): the caller knows it, and the overlay can be made while
 * the layer below is still being written.
 */
export async function createOverlay(path: string, backing: string, sizeBytes?: number): Promise<void> {
  await rm(path, { force: true });
  const size = sizeBytes !== undefined ? ['-u', path, String(sizeBytes)] : [path];
  await qemuImg(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', ...size]);
}

/** A domain's state (`shut off`, `running`, …), or undefined when it is not defined. */
async function domainState(virsh: Virsh, name: string): Promise<string | undefined> {
  try {
    return (await virsh.run(['domstate', '--', name])).trim();
  } catch (err) {
    if (isNoDomain(err)) return undefined;
    throw err;
  }
}

/** The network a replica's interface is connected to; a network missing from the map is refused by name. */
export function mapNetwork(map: NetworkMap, site: string, vmId: string) {
  return (name: string): string => {
    const to = map[name];
    if (to === undefined) {
      throw new RecoveryRequestInvalid(
        `network '${name}' of VM '${vmId}' is missing from the network map of the DR site (${site}; mapped: ${Object.keys(map).join(', ') || 'none'}): add "${name}": "<network at the DR site>" to its networkMap in the configuration`,
      );
    }
    return to;
  };
}

/**
 * Opens a qcow2 image for writing through `qemu-nbd` on a unix socket in its folder, runs
 * `write`, flushes and closes; qemu-nbd exits after its one client. A failure kills it.
 */
async function withImageWriter<T>(image: string, write: (nbd: NbdClient) => Promise<T>, signal?: AbortSignal): Promise<T> {
  // Its own short folder: a unix socket path has at most 107 bytes, a replica's folder may be deep.
  const sockDir = await mkdtemp(join(tmpdir(), 'lifeboat-replica-'));
  const socket = join(sockDir, 'nbd.sock');
  const child = spawn('qemu-nbd', ['--format=qcow2', '--cache=writeback', '--discard=unmap', `--socket=${socket}`, '--', image], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = once(child, 'exit').catch(() => [null]);
  try {
    for (let i = 0; !existsSync(socket); i++) {
      if (child.exitCode !== null || i > 200) throw new Corrupt(`qemu-nbd could not open ${image} for writing: ${stderr.trim() || 'no socket after 10 s'}`);
      await sleep(50);
    }
    const nbd = await NbdClient.connect({ socket, exportName: '' }, signal ? { signal } : {});
    try {
      const out = await write(nbd);
      await nbd.flush();
      return out;
    } finally {
      await nbd.close();
    }
  } finally {
    if (child.exitCode === null) setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    await exited;
    await rm(sockDir, { recursive: true, force: true });
  }
}

interface DiskWrite {
  diskId: string;
  layer: string;
  /** The disk's next active overlay, over `layer`, made while the layer was written: renamed into place once every disk is written. */
  nextActive: string;
  chunksWritten: number;
  bytesWritten: number;
  chunksUnchanged: number;
}

/**
 * Writes into a new layer over `fromLayer` (or a fresh image) the chunks of the target backup
 * that differ from `fromBackupId`'s; meanwhile makes `nextActive`, the active overlay over it.
 */
async function writeLayer(
  job: ReplicateJob,
  diskId: string,
  layer: string,
  nextActive: string,
  fromLayer: string | undefined,
  fromBackupId: string | undefined,
  d: UpdateReplicaDeps,
  phase: (name: string) => void,
): Promise<DiskWrite> {
  // Both manifests are read a piece at a time, in step: memory stays bounded whatever the disk's size.
  const target = await d.repository.openManifest(job.backupId, diskId);
  if (!target)
    throw new Corrupt(
      `manifest of disk '${diskId}' (backup ${job.backupId}) is missing from the DR repository ${job.target.bucket}; replicate the backup first`,
    );
  const from = fromBackupId ? await d.repository.openManifest(fromBackupId, diskId) : undefined;
  const { chunkSize, sizeBytes } = target.info;
  phase('manifests');
  if (fromLayer) await createOverlay(layer, fromLayer, sizeBytes);
  else {
    await rm(layer, { force: true });
    await qemuImg(['create', '-q', '-f', 'qcow2', layer, String(sizeBytes)]);
  }
  phase('layerCreate');
  // A qemu-img run beside the writes rather than after them (it does not open the layer).
  const active = createOverlay(nextActive, layer, sizeBytes);
  active.catch(() => {});
  // With a layer below whose backup cannot be diffed (resized, other chunk size), every chunk is written.
  const base = fromLayer && from && diffable(from.info, target.info) ? new ManifestCursor(from) : undefined;
  const out: DiskWrite = { diskId, layer, nextActive, chunksWritten: 0, bytesWritten: 0, chunksUnchanged: 0 };
  try {
    await withImageWriter(
      layer,
      async (nbd) => {
        phase('nbdStart');
        const inFlight = new Set<Promise<void>>();
        for await (const batch of target.batches())
          for (let k = 0; k < batch.count; k++) {
            d.signal?.throwIfAborted();
            const i = batch.firstChunk + k;
            const want = batch.id(k);
            // A fresh image reads as zeros: its holes need no write.
            if (base ? await sameAs(base, i, want) : !fromLayer && want === null) {
              out.chunksUnchanged++;
              continue;
            }
            const offset = i * chunkSize;
            const length = Math.min(chunkSize, sizeBytes - offset);
            const at = want === null ? undefined : batch.location(k)!;
            const p = (async () => {
              const data = want === null ? Buffer.alloc(length) : await checkedChunk(d.repository, at!, want, diskId, offset, length);
              await nbd.write(data, offset);
            })();
            inFlight.add(p);
            void p.finally(() => inFlight.delete(p)).catch(() => {});
            out.chunksWritten++;
            out.bytesWritten += length;
            if (inFlight.size >= d.parallelism) await Promise.race(inFlight);
            if (out.chunksWritten % 64 === 0) d.onProgress?.();
          }
        await Promise.all(inFlight);
        phase('chunks');
      },
      d.signal,
    );
  } finally {
    await base?.close();
  }
  phase('nbdStop');
  await active;
  return out;
}

export interface UpdateReplicaDeps {
  /** The DR repository. */
  repository: Repository;
  parallelism: number;
  signal?: AbortSignal;
  onProgress?: () => void;
  now?: () => Date;
}

/**
 * Brings VM `job.vmId`'s replica to `job.backupId`: a new restore point (a layer per disk
 * holding only the chunks that changed since the newest point), the active overlays moved
 * onto it, the domain defined the first time, the oldest points merged past `keepPoints`.
 */
export async function updateReplicaVm(job: ReplicateJob & { replica: ReplicaJob }, d: UpdateReplicaDeps): Promise<ReplicaUpdate> {
  const started = performance.now();
  if (!job.replicaDir) throw new RecoveryRequestInvalid(`replication ${job.replicationId} names no replica folder`);
  const paths = replicaPaths(job.replicaDir, job.vmId);
  const virsh = new Virsh(job.replica.uri);
  // Where the update's time goes (the bench prints it): each phase's seconds.
  const phases: Record<string, number> = {};
  let mark = started;
  const phase = (name: string) => {
    const now = performance.now();
    phases[name] = (phases[name] ?? 0) + (now - mark) / 1000;
    mark = now;
  };
  let state = await readReplicaState(job.replicaDir, job.vmId);
  if (state?.failedOver) {
    throw new RecoveryRequestInvalid(
      `the replica of VM '${job.vmId}' (${state.domain}) is failed over (run ${state.failedOver.runId}, since ${state.failedOver.at}): it is not updated while it runs as the VM`,
    );
  }
  // One virsh call: the domain's state, or none (not defined yet, or removed by hand: defined again below).
  const domState = state ? await domainState(virsh, state.domain) : undefined;
  if (domState !== undefined && domState !== 'shut off') {
    throw new RecoveryRequestInvalid(
      `the replica domain ${state!.domain} of VM '${job.vmId}' is not shut off on ${job.replica.uri}: a replica is kept powered off; shut it down (or fail over with the FailoverPlan workflow) before the next replication`,
    );
  }
  phase('check');
  const config = await readVmConfig(job.backupId, d.repository);
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string')
    throw new RecoveryRequestInvalid(`backup ${job.backupId} of VM '${job.vmId}' holds no libvirt domain definition: a replica VM needs one`);
  const domain = state?.domain ?? replicaDomainName(String(config.name ?? job.vmId));
  const newest = state?.points.at(-1);
  const summary = (uuid: string, w: DiskWrite[], from: string | null): ReplicaUpdate => ({
    vmId: job.vmId,
    domain,
    uuid,
    backupId: job.backupId,
    fromBackupId: from,
    chunksWritten: w.reduce((n, x) => n + x.chunksWritten, 0),
    bytesWritten: w.reduce((n, x) => n + x.bytesWritten, 0),
    chunksUnchanged: w.reduce((n, x) => n + x.chunksUnchanged, 0),
    points: (state?.points ?? []).map((p) => ({ backupId: p.backupId, recoveryPoint: p.recoveryPoint })),
    seconds: (performance.now() - started) / 1000,
    phases,
  });
  if (state && state.points.some((p) => p.backupId === job.backupId)) return summary(state.uuid, [], job.backupId);
  // The domain definition is checked (network map) before anything is written.
  const network = mapNetwork(job.replica.networkMap, job.replica.site, job.vmId);
  const diskXml = Object.fromEntries(job.disks.map((x) => [x.diskId, { path: join(paths.active, `${x.diskId}.qcow2`), format: 'qcow2' as const }]));
  const xml = restoredDomainXml(config.domainXml, {
    name: domain,
    disks: diskXml,
    consoleLog: paths.consoleLog,
    network,
    description: `Lifeboat replica of VM ${job.vmId}: kept powered off, updated by replication; boot it with a failover`,
  });

  await mkdir(paths.layers, { recursive: true });
  await mkdir(paths.active, { recursive: true });
  const seq = String(
    (state?.points.length ? Math.max(...state.points.map((p) => Number(/-(\d+)-[^/]*$/.exec(Object.values(p.layers)[0] ?? '')?.[1] ?? 0))) : 0) + 1,
  ).padStart(4, '0');
  phase('config');
  const writes: DiskWrite[] = [];
  for (const disk of job.disks) {
    const layer = join(paths.layers, `${disk.diskId}-${seq}-${job.backupId}.qcow2`);
    const nextActive = join(paths.active, `${disk.diskId}.qcow2.next`);
    const from = newest?.layers[disk.diskId];
    writes.push(await writeLayer(job, disk.diskId, layer, nextActive, from, from ? newest!.backupId : undefined, d, phase));
  }
  const point: ReplicaPoint = {
    backupId: job.backupId,
    recoveryPoint: job.recoveryPoint,
    createdAt: (d.now?.() ?? new Date()).toISOString(),
    layers: Object.fromEntries(writes.map((w) => [w.diskId, w.layer])),
  };
  for (const w of writes) await rename(w.nextActive, join(paths.active, `${w.diskId}.qcow2`));
  phase('activeOverlays');
  let uuid = state?.uuid ?? '';
  if (domState === undefined) {
    await writeFile(paths.xml, xml);
    await virsh.run(['define', '--', paths.xml]);
    uuid = (await virsh.run(['domuuid', '--', domain])).trim();
  }
  phase('define');
  state = { vmId: job.vmId, domain, uuid, sourceXml: config.domainXml, networkMap: job.replica.networkMap, points: [...(state?.points ?? []), point] };
  await writeReplicaState(job.replicaDir, state);
  while (state.points.length > job.replica.keepPoints) state = await mergeOldestPoint(job.replicaDir, state);
  phase('merge');
  return summary(uuid, writes, newest?.backupId ?? null);
}

/**
 * Drops the oldest point: its successor's layers are committed into the oldest layer files
 * (which then hold the successor's state), the layers above are rebased onto them, and the
 * successor's own files go. Every point listed stays readable at each step.
 */
async function mergeOldestPoint(replicaDir: string, state: ReplicaState): Promise<ReplicaState> {
  const [oldest, next, ...rest] = state.points as [ReplicaPoint, ReplicaPoint, ...ReplicaPoint[]];
  const paths = replicaPaths(replicaDir, state.vmId);
  for (const [diskId, upper] of Object.entries(next.layers)) {
    const lower = oldest.layers[diskId];
    if (!lower) continue;
    // -d: the successor keeps its clusters, so it reads the same during and after the commit.
    await qemuImg(['commit', '-q', '-d', '--', upper]);
    const child = rest[0]?.layers[diskId] ?? join(paths.active, `${diskId}.qcow2`);
    await qemuImg(['rebase', '-u', '-b', lower, '-F', 'qcow2', '--', child]);
  }
  const merged: ReplicaState = { ...state, points: [{ ...next, layers: { ...next.layers, ...oldest.layers } }, ...rest] };
  await writeReplicaState(replicaDir, merged);
  for (const [diskId, upper] of Object.entries(next.layers)) if (oldest.layers[diskId]) await rm(upper, { force: true });
  return merged;
}

/** The point a selector names; an unknown backup id or a time before every point is refused, listing what there is. */
export function choosePoint(state: ReplicaState, selector: 'latest' | { backupId: string } | { at: string } | undefined): ReplicaPoint {
  const points = state.points;
  const listed = () => points.map((p) => `${p.backupId} (${p.recoveryPoint})`).join(', ') || 'none';
  if (points.length === 0) throw new RecoveryRequestInvalid(`the replica of VM '${state.vmId}' has no restore point yet; run the Replicate workflow first`);
  if (!selector || selector === 'latest') return points.at(-1)!;
  if ('backupId' in selector) {
    const p = points.find((x) => x.backupId === selector.backupId);
    if (!p) throw new RecoveryRequestInvalid(`restore point ${selector.backupId} does not exist for VM '${state.vmId}': its replica keeps ${listed()}`);
    return p;
  }
  const at = Date.parse(selector.at);
  const p = points.filter((x) => Date.parse(x.recoveryPoint) <= at).at(-1);
  if (!p) throw new RecoveryRequestInvalid(`VM '${state.vmId}' has no restore point at or before ${selector.at}: its replica keeps ${listed()}`);
  return p;
}
