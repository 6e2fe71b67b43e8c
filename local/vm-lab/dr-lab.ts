/**
 * A DR lab on one machine, for the DR test and `npm run bench:dr`: the configuration of two
 * sites (site-a backs up libvirt VMs into the primary repository; the DR site replicates
 * into its own S3 endpoint and keeps each VM's replica as a VM, networks mapped), production
 * VMs of the lab's guest (shut off, a qcow2 disk with data, an interface on a production
 * network), and a backup followed by the replication it starts.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { ListExecutionsCommand, type SFNClient } from '@aws-sdk/client-sfn';
import type { LifeboatConfig } from '../../core/config.ts';
import type { ReplicaUpdate } from '../../contracts/dr.ts';
import type { RunSummary } from '../../contracts/workflow-outputs.ts';
import { runExecution, waitForExecution } from '../client.ts';
import type { StackEndpoints } from '../stack.ts';
import { createQcow2, guestCmdline, guestDomainXml } from './domain.ts';
import type { GuestImage } from './guest.ts';
import { virsh } from './libvirtd.ts';

const run = promisify(execFile);

/** The example configuration with replica VMs at its DR site, `prodNet` mapped to `drNet`, and a policy of `vmIds` replicating there. */
export function drLabConfig(
  base: LifeboatConfig,
  o: { prodNet: string; drNet: string; policyId: string; vmIds: string[]; keepPoints: number },
): LifeboatConfig {
  return {
    ...base,
    sites: base.sites.map((s) => (s.id === 'site-dr' ? { ...s, networkMap: { [o.prodNet]: o.drNet } } : s)),
    repositories: base.repositories.map((r) =>
      r.replication ? { ...r, replication: { ...r.replication, replicaVms: { uri: 'qemu:///system', keepPoints: o.keepPoints } } } : r,
    ),
    policies: [
      ...base.policies,
      {
        id: o.policyId,
        vms: { ids: o.vmIds },
        schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' },
        retention: { keepLast: 10 },
        repository: 'primary',
        replicateTo: 'dr',
        rpoHours: 26,
      },
    ],
  };
}

/** A transient isolated libvirt network (no address, nothing forwarded); `bridge` at most 15 characters. */
export async function createIsolatedNetwork(dir: string, name: string, bridge: string): Promise<void> {
  const xml = join(dir, `${name}.net.xml`);
  await writeFile(xml, `<network><name>${name}</name><bridge name='${bridge}' stp='off'/></network>\n`);
  await virsh(['net-create', xml]);
}

export interface ProdVm {
  name: string;
  image: string;
}

/**
 * Defines (does not start) a production VM of the lab's guest in idle mode: a qcow2 disk of
 * `sizeBytes` whose first `dataBytes` hold a pattern of its own, an interface on `network`.
 */
export async function defineProdVm(
  dir: string,
  guest: GuestImage,
  o: {
    name: string;
    sizeBytes: number;
    dataBytes: number;
    pattern: number;
    network: string;
    /** `silent`: the domain has the guest agent channel, and the guest never starts its agent (a readiness check by agent never passes). */
    agent?: 'none' | 'silent';
  },
): Promise<ProdVm> {
  await mkdir(dir, { recursive: true });
  const image = join(dir, `${o.name}.qcow2`);
  await createQcow2(image, o.sizeBytes);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(o.pattern & 0xff).toString(16)} 0 ${o.dataBytes}`, image]);
  const xml = guestDomainXml({
    name: o.name,
    disks: [{ path: image, format: 'qcow2', target: 'vda' }],
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guestCmdline({ mode: 'idle', ...(o.agent === 'silent' ? { agent: false } : {}) }),
    serialLog: join(dir, `${o.name}.log`),
    agent: o.agent === 'silent',
    memoryMiB: 128,
  }).replace('    <serial', `    <interface type='network'><source network='${o.network}'/><model type='virtio'/></interface>\n    <serial`);
  await writeFile(join(dir, `${o.name}.xml`), xml);
  await virsh(['define', join(dir, `${o.name}.xml`)]);
  return { name: o.name, image };
}

/** Overwrites `length` bytes at `offset` of a shut-off VM's image with `pattern`, as a guest would. */
export async function writePattern(image: string, offset: number, length: number, pattern: number): Promise<void> {
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(pattern & 0xff).toString(16)} ${offset} ${length}`, image]);
}

/** The SHA-256 of the guest-visible content of a qcow2 image (or chain), through a raw copy in `tmp`. */
export async function contentHash(image: string, tmp: string): Promise<string> {
  const raw = join(tmp, `hash-${createHash('sha1').update(image).digest('hex')}.raw`);
  await run('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
  const h = createHash('sha256')
    .update(await readFile(raw))
    .digest('hex');
  await rm(raw, { force: true });
  return h;
}

/** A Backup run of `policyId`, then the ReplicatePolicy execution it started, waited for; fails on any failure. */
export async function backupAndReplicate(
  sfn: SFNClient,
  e: StackEndpoints,
  policyId: string,
): Promise<{ run: RunSummary; replicaVms: ReplicaUpdate[]; seconds: { backup: number; replication: number } }> {
  const t0 = performance.now();
  const d = await runExecution(sfn, e.backupStateMachineArn, { policyId }, { pollMs: 200 });
  if (d.status !== 'SUCCEEDED') throw new Error(`backup of ${policyId} ${d.status}: ${d.cause}`);
  const b = JSON.parse(d.output!) as RunSummary;
  if (b.failed > 0) throw new Error(`backup of ${policyId}: ${b.failed} VM(s) failed: ${JSON.stringify(b.vms.map((v) => v.error).filter(Boolean))}`);
  const t1 = performance.now();
  const arn = e.stateMachines.ReplicatePolicy!;
  const name = `replicate-${createHash('sha1').update(b.runId).digest('hex')}`;
  for (let i = 0; i < 600; i++) {
    const found = (await sfn.send(new ListExecutionsCommand({ stateMachineArn: arn }))).executions?.find((x) => x.name === name);
    if (found) {
      const r = await waitForExecution(sfn, found.executionArn!, { pollMs: 200 });
      if (r.status !== 'SUCCEEDED') throw new Error(`replication of run ${b.runId} ${r.status}: ${r.cause}`);
      const out = JSON.parse(r.output!) as { replicated: { replicaVm?: ReplicaUpdate }[] };
      return {
        run: b,
        replicaVms: out.replicated.flatMap((x) => (x.replicaVm ? [x.replicaVm] : [])),
        seconds: { backup: (t1 - t0) / 1000, replication: (performance.now() - t1) / 1000 },
      };
    }
    await sleep(100);
  }
  throw new Error(`no replication was started for run ${b.runId}`);
}
