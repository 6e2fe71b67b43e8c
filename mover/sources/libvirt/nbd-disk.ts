/**
 * A snapshot's disk exported over NBD (a libvirt backup job's export, or qemu-nbd for a
 * shut-off VM), read as a DiskReader: reads spread over a few connections (the backup
 * reads ahead), holes from `base:allocation`, changes since the parent's checkpoint from
 * the export's dirty bitmap (`qemu:dirty-bitmap:backup-<disk>`, libvirt's name for it).
 */
import { SourceUnavailable } from '../../../contracts/errors.ts';
import type { DiskRef } from '../../../contracts/jobs.ts';
import { MAX_EXTENTS } from '../allocation.ts';
import type { NbdTlsCredentials } from '../../nbd/tls.ts';
import { mapExtents } from '../../nbd/extents.ts';
import { NbdPool } from '../../nbd/pool.ts';
import type { DiskReader } from '../source.ts';

/** Connections per export: the backup keeps a few reads in flight (its read-ahead and parallelism). */
const CONNECTIONS = 4;

export const dirtyBitmapContext = (exportName: string) => `qemu:dirty-bitmap:backup-${exportName}`;

/** Opens the export at `disk.path` (an NBD URI; `nbds://` needs `tls`). */
export async function openNbdDisk(disk: DiskRef, opts: { tls?: NbdTlsCredentials } = {}): Promise<DiskReader> {
  const exportName = decodeURIComponent(new URL(disk.path).pathname.replace(/^\//, ''));
  const tracked = disk.changeTracking !== undefined && 'since' in disk.changeTracking;
  const contexts = ['base:allocation', ...(tracked ? [dirtyBitmapContext(exportName)] : [])];
  const pool = await NbdPool.connect(disk.path, { connections: CONNECTIONS, metaContexts: contexts, ...(opts.tls && { tls: opts.tls }) });
  const size = pool.size;
  if (disk.sizeBytes && size !== disk.sizeBytes) {
    await pool.close();
    throw new SourceUnavailable(
      `the export of disk '${disk.diskId}' is ${size} bytes, the snapshot said ${disk.sizeBytes}: was the disk resized during the backup? Run it again`,
    );
  }
  const extentsOf = async (context: string) => {
    if (!pool.clients[0]!.metaContexts.has(context)) return undefined; // the server does not offer it
    return mapExtents(pool, context, { maxExtents: MAX_EXTENTS });
  };
  return {
    sizeBytes: size,
    read: async (buf, offset, length) => {
      await pool.read(buf.subarray(0, length), offset, length);
      return length;
    },
    allocated: () => extentsOf('base:allocation'),
    changed: () => (tracked ? extentsOf(dirtyBitmapContext(exportName)) : Promise.resolve(undefined)),
    close: () => pool.close(),
  };
}
