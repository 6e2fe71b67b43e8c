/**
 * The DR scenarios too slow for `npm test` (`npm run test:dr`): a DR mover killed in the
 * middle of a test failover (its task times out on the heartbeat and runs again on another
 * mover; the run ends with nothing left behind and the replicas byte-identical), and a real
 * failover that fails midway (group 1 running, group 2 never ready: its guest agent never
 * answers, and the error names the VM and the check that timed out): the cleanup powers the
 * started replica off and puts it back on its newest point, so a second failover works; a
 * replication into a replica that runs as the VM is refused. And a replication started
 * during a test failover that boots the oldest restore point (the one the replication's
 * update merges away): it waits for the replica's lease, then merges, and the points stay
 * readable.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StartExecutionCommand } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import type { FailoverReport } from '../contracts/dr.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { startMover } from '../local/movers.ts';
import { backupAndReplicate, contentHash, createIsolatedNetwork, defineProdVm, drLabConfig, writePattern } from '../local/vm-lab/dr-lab.ts';
import { buildGuest } from '../local/vm-lab/guest.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { qemuImg } from '../mover/recovery/replica-layer.ts';
import { readReplicaState, replicaPaths } from '../mover/recovery/replica-vm.ts';
import { TEST_FAILOVERS } from '../mover/recovery/test-failover-cleanup.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
const heavy = process.env.LIFEBOAT_DR_HEAVY === '1';
const lab = heavy ? await ensureLibvirtd() : { available: false as const, reason: 'npm run test:dr' };
const pid = process.pid;
const prodNet = `lbhprod-${pid}`;
const drNet = `lbhdr-${pid}`;
const names = ['a', 'b'].map((x) => `lbdr-heavy-${pid}-${x}`);
const vmIds = ['drh-a', 'drh-b'];
const READY = { serial: 'LIFEBOAT-GUEST READY', timeoutSeconds: 600 };
let t: TestStack;
let work: string;
let replicaDir: string;

const testDomains = async () =>
  (await virsh(['list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith('lbtf-'));
const testNetworks = async () =>
  (await virsh(['net-list', '--all', '--name']))
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.startsWith('lbtf-'));
async function replicaFiles(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const vmId of vmIds) {
    const p = replicaPaths(replicaDir, vmId);
    for (const sub of [p.layers, p.active])
      for (const f of await readdir(sub))
        out[join(sub, f)] = createHash('sha256')
          .update(await readFile(join(sub, f)))
          .digest('hex');
  }
  return out;
}

describe.skipIf(!lab.available)('DR under failure (npm run test:dr)', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lbdrh-'));
    const config = drLabConfig(loadConfig(), { prodNet, drNet, policyId: 'p-drh', vmIds, keepPoints: 2 });
    t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config, moverEnv: { LIFEBOAT_WORK_DIR: work } });
    replicaDir = join(t.stack.endpoints.dataDir, 'sites', 'site-dr', config.repositories[1]!.replication!.standbyPath!);
    await createIsolatedNetwork(work, drNet, `lbhdr${pid % 100000}`);
    const guest = await buildGuest(join(tmpdir(), 'lifeboat-vm-lab-cache'));
    for (const [i, name] of names.entries()) {
      // The second VM's guest has the agent channel and never starts its agent: a readiness check by agent never passes.
      await defineProdVm(join(work, 'prod'), guest, {
        name,
        sizeBytes: 16 * MiB,
        dataBytes: 2 * MiB,
        pattern: 0x21 + i,
        network: prodNet,
        ...(i === 1 ? { agent: 'silent' as const } : {}),
      });
      await t.stack.catalog.putVm({ vmId: vmIds[i]!, host: 'kvm-01', source: name, name });
    }
    await backupAndReplicate(t.sfn, t.stack.endpoints, 'p-drh');
  }, 600_000);
  afterAll(async () => {
    for (const n of [...names, ...names.map((x) => `${x}-replica`), ...(await testDomains().catch(() => [] as string[]))]) {
      await virsh(['destroy', n]).catch(() => {});
      await virsh(['undefine', n]).catch(() => {});
    }
    for (const n of [drNet, ...(await testNetworks().catch(() => [] as string[]))]) await virsh(['net-destroy', n]).catch(() => {});
    await t?.close();
    if (work) await rm(work, { recursive: true, force: true });
  }, 120_000);

  it("a replication started during a test failover waits for the replica's lease, then merges the point the test booted; every point stays readable", async () => {
    // Two points (keepPoints 2): the next update merges the oldest, which the test failover boots.
    await writePattern(join(work, 'prod', `${names[0]}.qcow2`), 4 * MiB, 1 * MiB, 0x61);
    await backupAndReplicate(t.sfn, t.stack.endpoints, 'p-drh');
    const [oldest, newer] = (await readReplicaState(replicaDir, vmIds[0]!))!.points;
    const newerHash = await contentHash(newer!.layers.vda!, work);
    const { executionArn } = await t.sfn.send(
      new StartExecutionCommand({
        stateMachineArn: t.stack.endpoints.stateMachines.TestFailover!,
        input: JSON.stringify({ plan: { id: 'beside', groups: [{ vms: [vmIds[0]!], readiness: READY }] }, points: { '*': { backupId: oldest!.backupId } } }),
      }),
    );
    while ((await testDomains()).length === 0) await sleep(100);
    // Production changes and is backed up; its replication starts while the test copy boots on the oldest point.
    await writePattern(join(work, 'prod', `${names[0]}.qcow2`), 6 * MiB, 1 * MiB, 0x62);
    const replication = backupAndReplicate(t.sfn, t.stack.endpoints, 'p-drh');
    const drill = await waitForExecution(t.sfn, executionArn!, { pollMs: 500 });
    expect(drill.status, drill.cause).toBe('SUCCEEDED');
    const drillEnd = drill.stopDate!.getTime();
    const r = await replication;
    const state = (await readReplicaState(replicaDir, vmIds[0]!))!;
    // It waited: its point was made after the test failover ended, and the oldest point was merged only then.
    const made = state.points.at(-1)!;
    expect(made.backupId).toBe(r.run.vms.find((v) => v.vmId === vmIds[0])!.backupId);
    expect(Date.parse(made.createdAt)).toBeGreaterThanOrEqual(drillEnd - 1000);
    expect(state.points.map((p) => p.backupId)).toEqual([newer!.backupId, made.backupId]);
    // Every point reads back whole (qemu-img check of each chain), and the merged one holds its own backup.
    for (const p of state.points) await qemuImg(['check', '-q', '-U', p.layers.vda!]);
    expect(await contentHash(state.points[0]!.layers.vda!, work)).toBe(newerHash);
  }, 900_000);

  it('a DR mover killed during a test failover: the task runs again on another mover, and the run ends with nothing left and the replicas byte-identical', async () => {
    const before = await replicaFiles();
    const { executionArn } = await t.sfn.send(
      new StartExecutionCommand({
        stateMachineArn: t.stack.endpoints.stateMachines.TestFailover!,
        input: JSON.stringify({
          plan: {
            id: 'kill',
            groups: [
              { vms: [vmIds[0]!], readiness: READY },
              { vms: [vmIds[1]!], readiness: READY },
            ],
          },
        }),
      }),
    );
    while ((await testDomains()).length === 0) await sleep(100);
    const dr = t.movers.find((m) => m.name.startsWith('dr-'))!;
    await dr.stop(true);
    t.movers.push(startMover(t.stack.endpoints, { name: 'dr-mover-2', group: 'dr', env: { LIFEBOAT_WORK_DIR: work }, onLog: (l) => t.logs.push(l) }));
    const d = await waitForExecution(t.sfn, executionArn!, { pollMs: 500 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const r = JSON.parse(d.output!) as FailoverReport;
    expect(r.vms.map((v) => v.vmId)).toEqual(vmIds);
    expect(await testDomains()).toEqual([]);
    expect(await testNetworks()).toEqual([]);
    expect(await readdir(join(replicaDir, TEST_FAILOVERS)).catch(() => [])).toEqual([]);
    expect(await replicaFiles()).toEqual(before);
  }, 900_000);

  it('a real failover that fails midway leaves the replicas usable: the started one is powered off and back on its newest point, and the next failover works', async () => {
    const bad = await runExecution(
      t.sfn,
      t.stack.endpoints.stateMachines.FailoverPlan!,
      {
        plan: {
          id: 'half',
          groups: [
            { vms: [vmIds[0]!], readiness: READY },
            // Its guest boots, and its agent never answers.
            { vms: [vmIds[1]!], readiness: { agent: true, timeoutSeconds: 20 } },
          ],
        },
      },
      { pollMs: 500 },
    );
    expect(bad.status).toBe('FAILED');
    expect(bad.error).toBe('Failover.NotReady');
    expect(bad.cause).toMatch(
      new RegExp(`VM '${vmIds[1]}' \\(domain ${names[1]}-replica, restore point \\S+\\) was not ready: the guest agent did not answer guest-ping within 20 s`),
    );
    for (const [i, vmId] of vmIds.entries()) {
      expect((await virsh(['domstate', `${names[i]}-replica`])).trim()).toBe('shut off');
      expect((await readReplicaState(replicaDir, vmId))!.failedOver).toBeUndefined();
    }
    const good = await runExecution(
      t.sfn,
      t.stack.endpoints.stateMachines.FailoverPlan!,
      { plan: { id: 'whole', groups: [{ vms: vmIds, readiness: READY }] } },
      { pollMs: 500 },
    );
    expect(good.status, good.cause).toBe('SUCCEEDED');
    for (const n of names) expect((await virsh(['domstate', `${n}-replica`])).trim()).toBe('running');
    // While the replicas run as the VMs, replication does not touch them.
    await expect(backupAndReplicate(t.sfn, t.stack.endpoints, 'p-drh')).rejects.toThrow(/is failed over \(run .*\): it is not updated while it runs as the VM/);
  }, 900_000);
});
