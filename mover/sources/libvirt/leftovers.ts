/**
 * What a mover that died leaves on a domain: a Lifeboat backup job still running (known by
 * its NBD socket's folder, or on TCP by its scratch files' names) and snapshot folders.
 * A job that is not Lifeboat's is never touched.
 */
import { readdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SourceUnavailable } from '../../../contracts/errors.ts';
import { SCRATCH_MARK } from './backup-xml.ts';
import type { DomainInfo } from './domain-xml.ts';
import { readOwner, snapshotDir, stopQemuNbd } from './snapshot-folder.ts';
import { isNoDomain, type Virsh } from './virsh.ts';

/**
 * Makes room for a new backup of the domain: a Lifeboat backup job left running by a
 * mover that died is aborted, the folders of earlier snapshots removed, and checkpoints
 * of other Lifeboat backups than the parent deleted (libvirt merges a deleted
 * checkpoint's bitmap into its predecessor, so the parent's changes stay complete).
 */
export async function cleanLeftovers(virsh: Virsh, workDir: string, info: DomainInfo, backupId: string, signal?: AbortSignal): Promise<void> {
  const left = await abortLifeboatJob(virsh, workDir, info.uuid, { foreign: 'fail' });
  if (left && left !== snapshotDir(workDir, info.uuid, backupId)) await rm(left, { recursive: true, force: true });
  const mine = snapshotDir(workDir, info.uuid, backupId);
  for (const entry of await readdir(workDir).catch(() => [] as string[])) {
    signal?.throwIfAborted();
    const dir = join(workDir, entry);
    if (dir === mine) continue;
    const owner = await readOwner(dir);
    if (owner?.domain !== info.uuid) continue; // another VM's
    await stopQemuNbd(dir);
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Aborts the domain's backup job if Lifeboat started it (its NBD socket's folder holds
 * an owner file naming the domain; movers of a group may have different work folders)
 * and, with `only`, only if it is that snapshot's. Returns the aborted job's folder.
 * A job that is not Lifeboat's is never touched: `foreign: 'fail'` refuses to go on.
 */
export async function abortLifeboatJob(
  virsh: Virsh,
  workDir: string,
  domain: string,
  o: { only?: string; foreign: 'fail' | 'ignore' },
): Promise<string | undefined> {
  let xml: string;
  try {
    xml = await virsh.run(['backup-dumpxml', '--', domain]);
  } catch (err) {
    if (isNoDomain(err) || /no (domain )?backup job|not active|no job is active|does not have/i.test((err as { stderr?: string }).stderr ?? ''))
      return undefined;
    throw err;
  }
  const socket = /socket=['"]([^'"]+)['"]/.exec(xml)?.[1];
  // A job on TCP has no socket: Lifeboat's name their scratch files after the snapshot's folder.
  const mark = socket ? undefined : new RegExp(`<scratch file=['"][^'"]*${SCRATCH_MARK}([0-9a-f]{16})`).exec(xml)?.[1];
  if (mark) {
    const dir = join(workDir, mark);
    if (o.only && basename(o.only) !== mark) return undefined;
    await domjobabort(virsh, domain);
    return dir;
  }
  const dir = socket ? dirname(socket) : undefined;
  const owner = dir ? await readOwner(dir) : undefined;
  if (!dir || owner?.domain !== domain) {
    if (o.foreign === 'ignore') return undefined;
    throw new SourceUnavailable(
      `VM '${domain}' has a backup job that is not Lifeboat's (${socket ? `its NBD socket is ${socket}` : 'its scratch files are not named by Lifeboat'}); wait for it to end or abort it with 'virsh domjobabort ${domain}'`,
    );
  }
  if (o.only && dir !== o.only) return undefined;
  await domjobabort(virsh, domain);
  return dir;
}

async function domjobabort(virsh: Virsh, domain: string): Promise<void> {
  await virsh.run(['domjobabort', '--', domain]).catch((err) => {
    if (!/no job is active|not active/i.test((err as { stderr?: string }).stderr ?? '')) throw err;
  });
}
