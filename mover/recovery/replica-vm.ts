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
 * A replica offers `keepPoints` points. An older one is retired: no longer offered, its
 * layers stay in the chain. Once more than MERGE_RETIRED_AFTER are retired, they are merged
 * into the oldest retired layer in one `qemu-img commit`, so an update pays a merge's
 * process starts one run in several, and a chain never holds more than `keepPoints` +
 * MERGE_RETIRED_AFTER + 1 layers. Merging keeps every point listed readable if the mover
 * dies half-way.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mapLimit } from '../../core/concurrency.ts';
import { replicaDomainName, replicaPoint, type NetworkMap, type ReplicaJob, type ReplicaPoint, type ReplicaUpdate } from '../../contracts/dr.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { ReplicateJob } from '../../contracts/recovery-jobs.ts';
import { restoredDomainXml } from '../sources/libvirt/domain-xml.ts';
import { isNoDomain, Virsh } from '../sources/libvirt/virsh.ts';
import { type DiskWrite, type LayerDeps, qemuImg, writeLayer } from './replica-layer.ts';
import { readVmConfig } from './restore-tasks.ts';

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
  /**
   * Points past `keepPoints`, oldest first: no longer offered, their layers still below the
   * oldest point's until a merge folds them into the oldest retired layer.
   */
  retired?: ReplicaPoint[];
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
  if (s.retired) s.retired = s.retired.map((p) => replicaPoint.parse(p));
  return s;
}

export async function writeReplicaState(replicaDir: string, s: ReplicaState): Promise<void> {
  const path = replicaPaths(replicaDir, s.vmId).state;
  await writeFile(`${path}.tmp`, JSON.stringify(s, null, 1));
  await rename(`${path}.tmp`, path);
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

export interface UpdateReplicaDeps extends LayerDeps {
  now?: () => Date;
}

/** Retired points' layers are merged into the oldest once there are more than this many (see the file's comment). */
export const MERGE_RETIRED_AFTER = 4;
/** Disks of one VM written at once. */
const DISKS_AT_ONCE = 4;

/** Where an update's seconds go (the bench prints them): `lap(name)` adds the time since the last lap, `clock` a disk step's own. */
function phaseTimer(started: number) {
  const phases: Record<string, number> = {};
  let mark = started;
  const clock = (name: string, seconds: number) => {
    phases[name] = (phases[name] ?? 0) + seconds;
  };
  const lap = (name: string) => {
    const now = performance.now();
    clock(name, (now - mark) / 1000);
    mark = now;
  };
  return { phases, clock, lap };
}

/** The replica's state, refused while it is failed over or its domain runs, and the backup's VM configuration. */
async function checkReplica(job: ReplicateJob & { replica: ReplicaJob; replicaDir: string }, virsh: Virsh, d: UpdateReplicaDeps) {
  const state = await readReplicaState(job.replicaDir, job.vmId);
  if (state?.failedOver) {
    throw new RecoveryRequestInvalid(
      `the replica of VM '${job.vmId}' (${state.domain}) is failed over (run ${state.failedOver.runId}, since ${state.failedOver.at}): it is not updated while it runs as the VM`,
    );
  }
  // One virsh call (the domain's state, or none: not defined yet, or removed by hand, defined again), beside the configuration's read.
  const [domState, config] = await Promise.all([state ? domainState(virsh, state.domain) : undefined, readVmConfig(job.backupId, d.repository)]);
  if (domState !== undefined && domState !== 'shut off') {
    throw new RecoveryRequestInvalid(
      `the replica domain ${state!.domain} of VM '${job.vmId}' is not shut off on ${job.replica.uri}: a replica is kept powered off; shut it down (or fail over with the FailoverPlan workflow) before the next replication`,
    );
  }
  if (config.driver !== 'libvirt' || typeof config.domainXml !== 'string')
    throw new RecoveryRequestInvalid(`backup ${job.backupId} of VM '${job.vmId}' holds no libvirt domain definition: a replica VM needs one`);
  return { state, domState, name: String(config.name ?? job.vmId), domainXml: config.domainXml };
}

/** The next layer number: past every layer of the replica, listed or retired. */
function nextSeq(state: ReplicaState | undefined): string {
  const all = [...(state?.retired ?? []), ...(state?.points ?? [])].flatMap((p) => Object.values(p.layers));
  return String(Math.max(0, ...all.map((l) => Number(/-(\d+)-[^/]*$/.exec(l)?.[1] ?? 0))) + 1).padStart(4, '0');
}

/**
 * Brings VM `job.vmId`'s replica to `job.backupId`: a new restore point (a layer per disk
 * holding only the chunks that changed since the newest point, the disks side by side), the
 * active overlays moved onto it, the domain defined the first time, the oldest points past
 * `keepPoints` retired (and merged, some runs: see the file's comment).
 */
export async function updateReplicaVm(job: ReplicateJob & { replica: ReplicaJob }, d: UpdateReplicaDeps): Promise<ReplicaUpdate> {
  const started = performance.now();
  const replicaDir = job.replicaDir;
  if (!replicaDir) throw new RecoveryRequestInvalid(`replication ${job.replicationId} names no replica folder`);
  const paths = replicaPaths(replicaDir, job.vmId);
  const virsh = new Virsh(job.replica.uri);
  const { phases, clock, lap } = phaseTimer(started);
  const checked = await checkReplica({ ...job, replicaDir }, virsh, d);
  let state = checked.state;
  const { domState, domainXml } = checked;
  lap('check');
  const domain = state?.domain ?? replicaDomainName(checked.name);
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
  const xml = restoredDomainXml(domainXml, {
    name: domain,
    disks: diskXml,
    consoleLog: paths.consoleLog,
    network,
    description: `Lifeboat replica of VM ${job.vmId}: kept powered off, updated by replication; boot it with a failover`,
  });
  await mkdir(paths.layers, { recursive: true });
  await mkdir(paths.active, { recursive: true });
  const seq = nextSeq(state);
  lap('config');
  const writes = await mapLimit(job.disks, DISKS_AT_ONCE, (disk) => {
    const layer = join(paths.layers, `${disk.diskId}-${seq}-${job.backupId}.qcow2`);
    const from = newest?.layers[disk.diskId];
    return writeLayer(
      job,
      disk,
      { layer, nextActive: join(paths.active, `${disk.diskId}.qcow2.next`) },
      from ? { layer: from, backupId: newest!.backupId } : undefined,
      d,
      clock,
    );
  });
  lap('disks');
  const point: ReplicaPoint = {
    backupId: job.backupId,
    recoveryPoint: job.recoveryPoint,
    createdAt: (d.now?.() ?? new Date()).toISOString(),
    layers: Object.fromEntries(writes.map((w) => [w.diskId, w.layer])),
  };
  for (const w of writes) await rename(w.nextActive, join(paths.active, `${w.diskId}.qcow2`));
  lap('activeOverlays');
  let uuid = state?.uuid ?? '';
  if (domState === undefined) {
    await writeFile(paths.xml, xml);
    await virsh.run(['define', '--', paths.xml]);
    uuid = (await virsh.run(['domuuid', '--', domain])).trim();
  }
  lap('define');
  const points = [...(state?.points ?? []), point];
  const cut = Math.max(0, points.length - job.replica.keepPoints);
  const retired = [...(state?.retired ?? []), ...points.slice(0, cut)];
  state = {
    vmId: job.vmId,
    domain,
    uuid,
    sourceXml: domainXml,
    networkMap: job.replica.networkMap,
    points: points.slice(cut),
    ...(retired.length ? { retired } : {}),
  };
  await writeReplicaState(replicaDir, state);
  lap('state');
  if (retired.length > MERGE_RETIRED_AFTER) state = await mergeRetired(replicaDir, state);
  lap('merge');
  return summary(uuid, writes, newest?.backupId ?? null);
}

/**
 * Merges the retired points: the newest retired layer of each disk, with those between, is
 * committed into the oldest (`qemu-img commit -d -b`: the upper layers keep their clusters,
 * so every chain reads the same during and after it), the oldest listed point's layer is
 * rebased onto it, and the layers between go. Every point listed stays readable at each
 * step; a merge stopped half-way is done again by the next.
 */
export async function mergeRetired(replicaDir: string, state: ReplicaState): Promise<ReplicaState> {
  const retired = state.retired ?? [];
  const oldestListed = state.points[0]!;
  const gone: string[] = [];
  const base: Record<string, string> = {};
  for (const diskId of new Set(retired.flatMap((p) => Object.keys(p.layers)))) {
    const chain = retired.map((p) => p.layers[diskId]).filter((l): l is string => !!l);
    base[diskId] = chain[0]!;
    const child = oldestListed.layers[diskId];
    if (chain.length < 2 || !child) continue;
    await qemuImg(['commit', '-q', '-d', '-b', chain[0]!, '--', chain.at(-1)!]);
    await qemuImg(['rebase', '-u', '-b', chain[0]!, '-F', 'qcow2', '--', child]);
    gone.push(...chain.slice(1));
  }
  const last = retired.at(-1)!;
  const merged: ReplicaState = { ...state, retired: [{ ...last, layers: { ...last.layers, ...base } }] };
  await writeReplicaState(replicaDir, merged);
  for (const f of gone) await rm(f, { force: true });
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
