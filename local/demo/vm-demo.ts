/**
 * The main job with a real VM: the embedded stack, movers, and a small Linux guest
 * running under QEMU through libvirt, writing to its disk the whole time. A full backup
 * of the running guest (frozen through its agent), an incremental that reads only the
 * blocks the guest wrote since (changed-block tracking), a restore compared with the disk
 * as the guest hashed it at the freeze, and a restore test that boots the restored VM.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runExecution, sfnClient } from '../client.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../movers.ts';
import { EmbeddedStack } from '../stack.ts';
import { startLabVm } from '../vm-lab/lab-vm.ts';
import { mib } from './report.ts';
import { runDemoBackup } from './run-backup.ts';
import type { DemoOptions } from './demo.ts';
import { groupForHost } from '../../core/config.ts';
import type { RestoreSummary, RunSummary } from '../../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;
/** The configuration's libvirt host the demo VM runs on. */
const HOST = 'kvm-01';

export interface VmDemoResult {
  vmId: string;
  full: RunSummary;
  incremental: RunSummary;
  /** The restored disk equals the guest's disk at the incremental's freeze. */
  identical: boolean;
  booted: boolean;
}

export async function runVmDemo(o: DemoOptions & { uri: string }): Promise<VmDemoResult> {
  const stamp = new Date()
    .toISOString()
    .replace(/[-:.TZ]/g, '')
    .slice(0, 14);
  const vmId = `demo-vm-${stamp}`;
  o.out(`Starting the embedded stack in ${o.dataDir} ...`);
  const stack = await EmbeddedStack.start({ dataDir: o.dataDir });
  const e = stack.endpoints;
  const group = groupForHost(stack.config, HOST)?.id;
  const host = stack.config.hosts.find((h) => h.id === HOST);
  if (!group || host?.driver !== 'libvirt') throw new Error(`the configuration has no libvirt host '${HOST}' served by a mover group; the VM demo needs one`);
  const onLog = (l: MoverLogLine) => {
    if (l.event === 'dispatch.progress') o.status?.(`  dispatching ${l.diskId}: ${mib(l.bytesScanned as number)} of ${mib(l.sizeBytes as number)}`);
    else if (l.level === 'error') o.out(`  [${l.mover}] ${l.event} ${l.error ?? l.line ?? ''} ${l.cause ?? ''}`);
  };
  const movers: MoverProcess[] = [];
  const sizeBytes = o.diskSizes?.[0] ?? 256 * MiB;
  let vm: Awaited<ReturnType<typeof startLabVm>> | undefined;
  try {
    for (let i = 1; i <= (o.movers ?? 2); i++) movers.push(startMover(e, { name: `mover-${i}`, group, onLog }));
    o.out(`Started ${movers.length} mover processes for group '${group}' (host ${HOST}, ${o.uri}).`);
    o.out(`Booting VM ${vmId} under QEMU through libvirt: a ${mib(sizeBytes)} qcow2 disk, its guest writing 256 KiB/s ...`);
    vm = await startLabVm({
      dir: join(e.dataDir, 'vms', vmId),
      cacheDir: join(e.dataDir, 'cache'),
      name: vmId,
      sizeBytes,
      dataBytes: Math.floor(sizeBytes * 0.375),
      behaviour: { mode: 'write', writeKiBs: 256 },
    });
    await stack.catalog.putVm({ vmId, host: HOST, source: vmId });
    await stack.catalog.putPolicy({
      policyId: vmId,
      vmIds: [vmId],
      bucket: e.bucket,
      chunkSize: o.chunkSize ?? stack.config.repositories[0]!.chunkSizeMiB * MiB,
      slotLimit: 2,
    });

    const sfn = sfnClient(e);
    const backup = (label: string): Promise<RunSummary> => runDemoBackup(sfn, e.backupStateMachineArn, vmId, label, o);

    o.out('Running the full backup of the running VM ...');
    const full = await backup('Full backup');
    // The guest holds its writer while it hashes its disk at the freeze: let it write again first.
    await vm.freezeHashes(1);
    o.out('The guest keeps writing for 5 s. Running the incremental backup (changed-block tracking) ...');
    await new Promise((r) => setTimeout(r, 5000));
    const incremental = await backup('Incremental backup');

    const [, atFreeze] = await vm.freezeHashes(2);
    o.out(`Restoring the incremental into files and comparing with the disk as the guest hashed it at the freeze ...`);
    const restore = async (target: string, extra: Record<string, unknown> = {}) => {
      const d = await runExecution(sfn, e.stateMachines.Restore!, { vmId, moverGroup: group, target, ...extra });
      if (d.status !== 'SUCCEEDED') throw new Error(`restore execution ${d.executionArn} ended ${d.status}: ${d.error} ${d.cause}`);
      return JSON.parse(d.output!) as RestoreSummary;
    };
    const files = join(e.dataDir, 'restores', vmId);
    const restored = await restore(files);
    const identical = restored.disks[0]!.sha256 === atFreeze;
    o.out(`  vda: at the freeze ${atFreeze!.slice(0, 16)}…  restored ${restored.disks[0]!.sha256.slice(0, 16)}…  ${identical ? 'identical' : 'DIFFERENT'}`);
    if (!identical) throw new Error("the restored disk differs from the guest's disk at the freeze");
    await rm(files, { recursive: true, force: true });

    o.out('Restore test: defining a new VM from the backed-up definition, booting it without network ...');
    const tested = await restore(join(e.dataDir, 'restores', `${vmId}-test`), {
      define: { uri: o.uri, name: `${vmId}-restored`, bootCheck: { consoleLine: 'LIFEBOAT-GUEST READY', timeoutSeconds: 300 } },
    });
    const check = tested.domain?.bootCheck;
    o.out(`  ${tested.domain?.name}: ${check?.passed ? `booted in ${check.seconds.toFixed(1)} s ("${check.line}"), then removed` : 'did NOT boot'}`);
    await rm(join(e.dataDir, 'restores', `${vmId}-test`), { recursive: true, force: true });
    if (!check?.passed) throw new Error('the restored VM did not boot');
    o.out('Done: a running VM was backed up twice (the second read only what the guest wrote), restored exactly as it was at the freeze, and booted.');
    return { vmId, full, incremental, identical, booted: true };
  } finally {
    await vm?.remove();
    await Promise.all(movers.map((m) => m.stop()));
    await stack.stop();
  }
}
