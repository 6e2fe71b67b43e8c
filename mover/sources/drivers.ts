/**
 * The source driver for a job: each job names its host's driver and hypervisor
 * (`VmJob.hypervisor`, from the host's configuration); a mover keeps one driver per
 * libvirt URI, and the folder driver for jobs that name none.
 */
import { join } from 'node:path';
import type { Hypervisor } from '../../contracts/jobs.ts';
import type { NbdTlsCredentials } from '../nbd/tls.ts';
import { FolderDriver } from './folder.ts';
import { LibvirtDriver } from './libvirt/driver.ts';
import type { SourceDriver } from './source.ts';

export type DriverFor = (hypervisor: Hypervisor | undefined) => SourceDriver;

export interface DriverSettings {
  /** The mover's work folder: libvirt snapshots keep their NBD sockets and scratch files under `<workDir>/libvirt`. */
  workDir: string;
  /** Credentials for TLS exports (`nbds://`) of hosts with `exports.tls` (LIFEBOAT_NBD_TLS_DIR). */
  nbdTls?: NbdTlsCredentials;
}

export function sourceDrivers(settings: DriverSettings): DriverFor {
  const folder = new FolderDriver();
  const libvirt = new Map<string, LibvirtDriver>();
  return (h) => {
    if (!h || h.driver === 'folder') return folder;
    const key = `${h.uri} ${JSON.stringify(h.exports ?? {})}`;
    let d = libvirt.get(key);
    if (!d) {
      d = new LibvirtDriver({
        uri: h.uri,
        workDir: join(settings.workDir, 'libvirt'),
        ...(h.exports && { exports: h.exports }),
        ...(settings.nbdTls && { nbdTls: settings.nbdTls }),
      });
      libvirt.set(key, d);
    }
    return d;
  };
}
