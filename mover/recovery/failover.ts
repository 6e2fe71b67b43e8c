/**
 * A DR mover's part of a failover plan: for one VM, boot its replica at the chosen restore
 * point and wait for its readiness, then run its script. A real failover boots the replica
 * domain itself on fresh active overlays over the point (the restore points stay as they
 * are: a failed failover leaves the replica usable). A test failover boots a copy
 * (`lbtf-<run key>-<vm name>`) on throwaway overlays in `<replicaDir>/.test-failovers/<run key>/`,
 * connected to an isolated network `lbtf-<run key>` made for the run; `cleanupTestFailover`
 * (test-failover-cleanup.ts) removes all three, keyed by the run, and may run any number of times.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type FailoverPlanRequest, type FailoverVmJob, type FailoverVmResult, type PointSelector } from '../../contracts/dr.ts';
import type { ReleasedReplica } from '../../contracts/failback.ts';
import { FailoverNotReady, RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import { restoredDomainXml } from '../sources/libvirt/domain-xml.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { domainExists, removeDomain, waitForSignOfLife } from './define-domain.ts';
import { testDomain, testFailoverRoot, testNetwork } from './test-failover-cleanup.ts';
import { createOverlay } from './replica-layer.ts';
import { choosePoint, readReplicaState, replicaPaths, writeReplicaState, type ReplicaState } from './replica-vm.ts';

const run = promisify(execFile);

export interface FailoverDeps {
  workDir: string;
  logger?: Logger;
  signal?: AbortSignal;
  progress(): void;
}

async function replicaOf(job: { replicaDir: string; vmId: string }): Promise<ReplicaState> {
  const state = await readReplicaState(job.replicaDir, job.vmId);
  if (!state)
    throw new RecoveryRequestInvalid(
      `VM '${job.vmId}' has no replica VM at the DR site (${replicaPaths(job.replicaDir, job.vmId).dir}): replicate it to a DR repository whose replication keeps replica VMs (repositories[].replication.replicaVms)`,
    );
  return state;
}

/**
 * Every VM's restore point, checked before anything boots: a VM without a replica, or a
 * point that does not exist, fails the plan here, naming the VM and what its replica keeps.
 */
export async function resolveFailoverPoints(
  vms: { vmId: string; replicaDir: string }[],
  points: FailoverPlanRequest['points'],
): Promise<{ vmId: string; backupId: string; recoveryPoint: string }[]> {
  const out = [];
  for (const vm of vms) {
    const state = await replicaOf(vm);
    const p = choosePoint(state, (points?.[vm.vmId] ?? points?.['*']) as PointSelector | undefined);
    out.push({ vmId: vm.vmId, backupId: p.backupId, recoveryPoint: p.recoveryPoint });
  }
  return out;
}

/** The isolated network of a test failover run: no forward, no address (nothing leaves it); made once per run. */
async function ensureTestNetwork(virsh: Virsh, runId: string, folder: string): Promise<string> {
  const name = testNetwork(runId);
  const active = (await virsh.run(['net-list', '--name'])).split('\n').map((l) => l.trim());
  if (active.includes(name)) return name;
  // A file per call: the group's VMs start together, and one's write must not empty the file another's virsh is reading.
  const xml = join(folder, `network-${randomUUID()}.xml`);
  await writeFile(xml, `<network><name>${name}</name><bridge name='${name.replace(/-/g, '')}' stp='off'/></network>\n`);
  try {
    await virsh.run(['net-create', '--', xml]);
  } catch (err) {
    // Another VM of the same group made it meanwhile.
    if (!/already exists/i.test((err as Error).message)) throw err;
  } finally {
    await rm(xml, { force: true });
  }
  return name;
}

/** Boots one VM of a plan (real or test) and waits for its readiness; see the file's comment. */
export async function failoverVm(job: FailoverVmJob, d: FailoverDeps): Promise<FailoverVmResult> {
  const virsh = new Virsh(job.uri);
  const state = await replicaOf(job);
  const point = choosePoint(state, job.point as PointSelector);
  const paths = replicaPaths(job.replicaDir, job.vmId);
  let domain: string;
  let consoleLog: string;
  if (job.test) {
    const folder = testFailoverRoot(job.replicaDir, job.runId);
    await mkdir(folder, { recursive: true });
    const network = await ensureTestNetwork(virsh, job.runId, folder);
    domain = testDomain(job.runId, job.name);
    consoleLog = join(folder, `${job.vmId}.console.log`);
    // A retried task (its mover died) starts over: its copy is made again.
    await removeDomain(virsh, domain);
    await rm(consoleLog, { force: true });
    const disks: Record<string, { path: string; format: 'qcow2' }> = {};
    for (const [diskId, layer] of Object.entries(point.layers)) {
      const overlay = join(folder, `${job.vmId}-${diskId}.qcow2`);
      await createOverlay(overlay, layer);
      disks[diskId] = { path: overlay, format: 'qcow2' };
    }
    const xml = join(folder, `${job.vmId}.xml`);
    await writeFile(
      xml,
      restoredDomainXml(state.sourceXml, {
        name: domain,
        disks,
        consoleLog,
        network: () => network,
        description: `Lifeboat test failover ${job.runId} of VM ${job.vmId}`,
      }),
    );
    await virsh.run(['create', '--', xml]); // transient: gone when destroyed
  } else {
    domain = state.domain;
    consoleLog = paths.consoleLog;
    if (state.failedOver && state.failedOver.runId !== job.runId) {
      throw new RecoveryRequestInvalid(
        `the replica of VM '${job.vmId}' (${domain}) is failed over already (run ${state.failedOver.runId}, since ${state.failedOver.at})`,
      );
    }
    if (!(await domainExists(virsh, domain)))
      throw new RecoveryRequestInvalid(`the replica domain ${domain} of VM '${job.vmId}' is not defined on ${job.uri}: the next replication defines it again`);
    // A retry of this run's own task starts the VM over.
    if (state.failedOver) await virsh.run(['destroy', '--', domain]).catch(() => {});
    else if ((await virsh.run(['domstate', '--', domain])).trim() !== 'shut off')
      throw new RecoveryRequestInvalid(`the replica domain ${domain} of VM '${job.vmId}' is running already: it is not started twice`);
    for (const [diskId, layer] of Object.entries(point.layers)) await createOverlay(join(paths.active, `${diskId}.qcow2`), layer);
    await writeReplicaState(job.replicaDir, { ...state, failedOver: { runId: job.runId, backupId: point.backupId, at: new Date().toISOString() } });
    await rm(consoleLog, { force: true });
    await virsh.run(['start', '--', domain]);
  }
  const startedMs = Date.now();
  d.logger?.info('failover.started', { runId: job.runId, vmId: job.vmId, domain, backupId: point.backupId, test: job.test });
  let line: string | undefined;
  let readyMs = startedMs;
  if (job.readiness) {
    const check = await waitForSignOfLife(
      virsh,
      domain,
      consoleLog,
      {
        ...(job.readiness.serial !== undefined ? { consoleLine: job.readiness.serial } : {}),
        ...(job.readiness.agent ? { agent: true } : {}),
        timeoutSeconds: job.readiness.timeoutSeconds,
      },
      d.signal,
      d.progress,
    );
    if (!check.passed) throw new FailoverNotReady(`VM '${job.vmId}' (domain ${domain}, restore point ${point.backupId}) was not ready: ${check.reason}`);
    readyMs = Date.now();
    if (check.line) line = check.line;
  }
  const script = job.script ? await runScript(job, domain, virsh, d) : undefined;
  const result: FailoverVmResult = {
    vmId: job.vmId,
    domain,
    backupId: point.backupId,
    recoveryPoint: point.recoveryPoint,
    startedSeconds: (startedMs - job.startedAtMs) / 1000,
    readySeconds: (readyMs - job.startedAtMs) / 1000,
    bootSeconds: (readyMs - startedMs) / 1000,
    readyAt: new Date(readyMs).toISOString(),
    ...(line !== undefined ? { line } : {}),
    ...(script ? { script } : {}),
  };
  d.logger?.info('failover.ready', { runId: job.runId, ...result });
  return result;
}

/** The VM's first address the guest agent reports ('' without an agent or an address). */
async function addressOf(virsh: Virsh, domain: string): Promise<string> {
  const out = await virsh.run(['domifaddr', '--source', 'agent', '--', domain], { timeoutMs: 10_000 }).catch(() => '');
  return (
    /(\d+\.\d+\.\d+\.\d+)\//.exec(
      out
        .split('\n')
        .filter((l) => !/\blo\b/.test(l))
        .join('\n'),
    )?.[1] ?? ''
  );
}

async function runScript(job: FailoverVmJob, domain: string, virsh: Virsh, d: FailoverDeps): Promise<{ exitCode: number; output: string }> {
  const [program, ...args] = job.script!;
  const env = {
    ...process.env,
    LIFEBOAT_VM_ID: job.vmId,
    LIFEBOAT_VM_NAME: job.name,
    LIFEBOAT_VM_DOMAIN: domain,
    LIFEBOAT_VM_IP: await addressOf(virsh, domain),
    LIFEBOAT_FAILOVER_TEST: job.test ? '1' : '0',
    LIFEBOAT_FAILOVER_RUN: job.runId,
  };
  try {
    const { stdout, stderr } = await run(program!, args, {
      env,
      timeout: (job.scriptTimeoutSeconds ?? 300) * 1000,
      killSignal: 'SIGKILL',
      ...(d.signal ? { signal: d.signal } : {}),
    });
    return { exitCode: 0, output: `${stdout}${stderr}`.slice(-2000) };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; killed?: boolean; message: string };
    const why = e.killed
      ? `did not finish within ${job.scriptTimeoutSeconds ?? 300} s`
      : e.code === 'ENOENT'
        ? 'is not installed on this mover'
        : `exited with ${e.code}`;
    throw new RecoveryRequestInvalid(
      `the failover script of VM '${job.vmId}' (${job.script!.join(' ')}) ${why}: ${`${e.stdout ?? ''}${e.stderr ?? e.message}`.trim().slice(-500)}`,
    );
  }
}

/** The replica powered off, its active overlays back over its newest point, and no longer failed over. */
async function resetReplica(virsh: Virsh, replicaDir: string, state: ReplicaState): Promise<void> {
  await virsh.run(['destroy', '--', state.domain]).catch(() => {});
  const newest = state.points.at(-1)!;
  for (const [diskId, layer] of Object.entries(newest.layers)) await createOverlay(join(replicaPaths(replicaDir, state.vmId).active, `${diskId}.qcow2`), layer);
  const { failedOver: _, ...rest } = state;
  await writeReplicaState(replicaDir, rest);
}

/** After a failed real failover: this run's VMs are powered off and back on their newest point's overlays; the replicas are as before. */
export async function abandonFailover(runId: string, uri: string, vms: { vmId: string; replicaDir: string }[]): Promise<string[]> {
  const virsh = new Virsh(uri);
  const reset: string[] = [];
  for (const vm of vms) {
    const state = await readReplicaState(vm.replicaDir, vm.vmId);
    if (state?.failedOver?.runId !== runId) continue;
    await resetReplica(virsh, vm.replicaDir, state);
    reset.push(state.domain);
  }
  return reset;
}

/**
 * After a failback: the replica that ran as the VM at the DR site (shut off by the
 * failback) is released: its checkpoints' metadata removed (they describe the active
 * overlays, which go), its disks back on its newest restore point, its failed-over state
 * cleared, so the next replication updates it again. What ran at the DR site lives on in
 * production and in the DR site's backups. Running it again does nothing more.
 */
export async function releaseReplica(r: { replicaDir: string; uri: string; vmId: string }): Promise<ReleasedReplica> {
  const state = await readReplicaState(r.replicaDir, r.vmId);
  if (!state?.failedOver) return { domain: state?.domain ?? null, failoverRunId: null, backupId: null, checkpointsRemoved: 0 };
  const virsh = new Virsh(r.uri);
  if ((await domainExists(virsh, state.domain)) && (await virsh.run(['domstate', '--', state.domain])).trim() !== 'shut off')
    throw new RecoveryRequestInvalid(
      `the replica domain ${state.domain} of VM '${r.vmId}' is still running at the DR site after the failback: shut it down (virsh shutdown ${state.domain}), then run the Failback again to release the replica`,
    );
  const checkpoints = (await virsh.run(['checkpoint-list', '--name', '--', state.domain]).catch(() => ''))
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  for (const c of checkpoints) await virsh.run(['checkpoint-delete', '--metadata', '--', state.domain, c]);
  await resetReplica(virsh, r.replicaDir, state);
  return { domain: state.domain, failoverRunId: state.failedOver.runId, backupId: state.points.at(-1)!.backupId, checkpointsRemoved: checkpoints.length };
}
