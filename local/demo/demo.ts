/**
 * The main job on the embedded stack: two movers, a demo VM with two disks, a full
 * backup, a 2% change, an incremental backup, and a restore proven byte-identical.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { restoreVm } from '../../mover/pipeline/restore-vm.ts';
import { groupForHost } from '../../core/config.ts';
import { sfnClient } from '../client.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../movers.ts';
import { EmbeddedStack, openRepository } from '../stack.ts';
import { mib } from './report.ts';
import { runDemoBackup } from './run-backup.ts';
import { changeDisk, createVmFolder } from './vm-image.ts';
import type { RunSummary } from '../../contracts/workflow-outputs.ts';

const MiB = 1024 * 1024;

export interface DemoOptions {
  dataDir: string;
  movers?: number;
  diskSizes?: number[];
  chunkSize?: number;
  out: (line: string) => void;
  /** Rewrites the current status line (a TTY), or undefined to print only milestones. */
  status?: (line: string) => void;
}

export interface DemoResult {
  vmId: string;
  full: RunSummary;
  incremental: RunSummary;
  changedBytes: number;
  identical: boolean;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const stamp = new Date()
    .toISOString()
    .replace(/[-:.TZ]/g, '')
    .slice(0, 14);
  const vmId = `demo-${stamp}`;
  const host = 'esx-01';
  o.out(`Starting the embedded stack in ${o.dataDir} ...`);
  const stack = await EmbeddedStack.start({ dataDir: o.dataDir });
  const e = stack.endpoints;
  const group = groupForHost(stack.config, host)?.id;
  if (!group) throw new Error(`the configuration has no mover group serving host '${host}', which the demo VM runs on`);
  o.out(`  DynamoDB ${e.dynamodb}  S3 ${e.s3}  Step Functions ${e.sfn}`);
  const progress = new Map<string, { done: number; size: number }>();
  const onLog = (l: MoverLogLine) => {
    if (l.event === 'dispatch.progress') {
      progress.set(`${l.diskId}`, { done: l.bytesScanned as number, size: l.sizeBytes as number });
      const parts = [...progress].map(([d, p]) => `${d} ${Math.floor((100 * p.done) / p.size)}%`);
      o.status?.(`  dispatching: ${parts.join('  ')}`);
    } else if (l.level === 'error') {
      o.out(`  [${l.mover}] ${l.event} ${l.error ?? l.line ?? ''} ${l.cause ?? ''}`);
    }
  };
  const movers: MoverProcess[] = [];
  try {
    for (let i = 1; i <= (o.movers ?? 2); i++) movers.push(startMover(e, { name: `mover-${i}`, group, onLog }));
    o.out(`Started ${movers.length} mover processes for group '${group}'.`);

    const vmDir = join(e.dataDir, 'vms', vmId);
    await rm(join(e.dataDir, 'vms'), { recursive: true, force: true });
    const sizes = o.diskSizes ?? [256 * MiB, 64 * MiB];
    o.out(`Creating demo VM ${vmId}: disks of ${sizes.map(mib).join(' and ')} (zero runs, text, random data) ...`);
    await createVmFolder(vmDir, { name: vmId, disks: sizes.map((s, i) => ({ id: `disk${i}`, sizeBytes: s })) });
    await stack.catalog.putVm({ vmId, host, source: vmDir });
    await stack.catalog.putPolicy({
      policyId: vmId,
      vmIds: [vmId],
      bucket: e.bucket,
      chunkSize: o.chunkSize ?? stack.config.repositories[0]!.chunkSizeMiB * MiB,
      slotLimit: 2,
    });

    const sfn = sfnClient(e);
    const backup = (label: string): Promise<RunSummary> => {
      progress.clear();
      return runDemoBackup(sfn, e.backupStateMachineArn, vmId, label, o);
    };

    o.out('Running the full backup ...');
    const full = await backup('Full backup');
    const changedBytes = await changeDisk(join(vmDir, 'disk0.raw'), sizes[0]!, 0.02);
    o.out(`Changed ${mib(changedBytes)} of disk0 (${((100 * changedBytes) / sizes[0]!).toFixed(1)}%). Running the incremental backup ...`);
    const incremental = await backup('Incremental backup');

    const latest = await stack.catalog.latestCommitted(vmId);
    if (!latest?.disks) throw new Error(`no committed backup of ${vmId} in the catalog`);
    const target = join(e.dataDir, 'restores', `${vmId}-${latest.backupId}`);
    o.out(`Restoring backup ${latest.backupId} into ${target} ...`);
    const repository = await openRepository(e);
    const restored = await restoreVm({
      repository,
      backupId: latest.backupId,
      diskIds: latest.disks.map((d) => d.diskId),
      targetDir: target,
      onProgress: (diskId, done, size) => o.status?.(`  restoring ${diskId} ${Math.floor((100 * done) / size)}%`),
    });
    o.status?.('');
    let identical = true;
    for (const d of restored.disks) {
      const [a, b] = await Promise.all([sha256File(join(vmDir, `${d.diskId}.raw`)), sha256File(d.path)]);
      identical &&= a === b;
      o.out(`  ${d.diskId}: source sha256 ${a.slice(0, 16)}…  restored ${b.slice(0, 16)}…  ${a === b ? 'identical' : 'DIFFERENT'}`);
    }
    if (!identical) throw new Error('the restored disks differ from the source');
    o.out('Restore verified: every disk is byte-identical to the VM it was backed up from.');
    await rm(target, { recursive: true, force: true });
    return { vmId, full, incremental, changedBytes, identical };
  } finally {
    await Promise.all(movers.map((m) => m.stop()));
    await stack.stop();
  }
}
