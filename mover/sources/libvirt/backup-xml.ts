/**
 * The XML documents of a backup job that libvirt is given: the pull-mode job (its NBD
 * exports on a unix socket or a TCP port, a scratch file per disk) and the checkpoint
 * created with it. Pure: tested without libvirt.
 */
import { join } from 'node:path';
import type { DomainDisk } from './domain-xml.ts';

/** Lifeboat's scratch files on a hypervisor are named `…lifeboat-<snapshot folder>…`: how a TCP job is known as Lifeboat's. */
export const SCRATCH_MARK = 'lifeboat-';

/** Text for an XML attribute or element of the documents libvirt is given. */
export const xmlEscape = (v: string | number): string =>
  String(v).replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
const esc = xmlEscape;

/** The pull-mode backup job: every disk exported on one unix socket, a scratch file per disk. */
export function pullBackupXml(disks: DomainDisk[], dir: string, socket: string, since: string | undefined): string {
  const entries = disks.map(
    (d) => `    <disk name='${esc(d.target)}' backup='yes'${fullIn(d, since)} type='file'><scratch file='${esc(join(dir, `${d.target}.scratch`))}'/></disk>`,
  );
  return `<domainbackup mode='pull'>\n${since ? `  <incremental>${esc(since)}</incremental>\n` : ''}  <server transport='unix' socket='${esc(socket)}'/>\n  <disks>\n${entries.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

/**
 * The pull-mode backup job on a TCP port of the hypervisor (TLS with libvirt's
 * backup_tls_x509_cert_dir). The scratch files are on the hypervisor: in `scratchDir`, or
 * beside each disk's image (as libvirt itself would place them); libvirt creates them, hands
 * them to QEMU and deletes them when the job ends. Their names carry `mark`, the
 * snapshot's folder name, by which any mover of the group knows the job as this snapshot's.
 */
export function tcpBackupXml(
  disks: DomainDisk[],
  s: { address: string; port: number; tls: boolean; scratchDir?: string; mark: string },
  since: string | undefined,
): string {
  const scratch = (d: DomainDisk) =>
    s.scratchDir ? join(s.scratchDir, `${SCRATCH_MARK}${s.mark}-${d.target}.qcow2`) : `${d.source!}.${SCRATCH_MARK}${s.mark}.scratch`;
  const entries = disks.map((d) => `    <disk name='${esc(d.target)}' backup='yes'${fullIn(d, since)} type='file'><scratch file='${esc(scratch(d))}'/></disk>`);
  const server = `<server transport='tcp' name='${esc(s.address)}' port='${s.port}'${s.tls ? ` tls='yes'` : ''}/>`;
  return `<domainbackup mode='pull'>\n${since ? `  <incremental>${esc(since)}</incremental>\n` : ''}  ${server}\n  <disks>\n${entries.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

/**
 * Whether QEMU can track a disk's changes across backups: persistent dirty bitmaps live in
 * qcow2 images only (libvirt refuses a checkpoint of a raw disk). Other disks are read
 * whole at every backup and compared chunk by chunk, uploading only what changed.
 */
export const tracksChanges = (d: DomainDisk): boolean => d.format === 'qcow2';

export const untrackedReason = (d: DomainDisk) =>
  `disk ${d.target} is a ${d.format} image, and QEMU keeps changed-block bitmaps only in qcow2 images: it is read whole and compared chunk by chunk (convert it to qcow2 for changed-block tracking)`;

/** In an incremental job, a disk without a bitmap is exported whole (libvirt ≥ 7.7 `backupmode`). */
const fullIn = (d: DomainDisk, since: string | undefined) => (since && !tracksChanges(d) ? ` backupmode='full'` : '');

export function checkpointXml(name: string, disks: DomainDisk[]): string {
  const entries = disks.map((d) => `    <disk name='${esc(d.target)}' checkpoint='${tracksChanges(d) ? 'bitmap' : 'no'}'/>`);
  return `<domaincheckpoint>\n  <name>${esc(name)}</name>\n  <description>Lifeboat backup</description>\n  <disks>\n${entries.join('\n')}\n  </disks>\n</domaincheckpoint>\n`;
}
