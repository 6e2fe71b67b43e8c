/**
 * The checkpoints this driver creates on a domain (`lifeboat-<backupId>`, a dirty bitmap per
 * qcow2 disk): listed, and deleted (libvirt merges a deleted checkpoint's bitmap into its
 * predecessor, so the parent's record of changes stays complete).
 */
import type { Virsh } from './virsh.ts';

/** Checkpoints this driver creates are named after the backup: `lifeboat-<backupId>`. */
export const CHECKPOINT_PREFIX = 'lifeboat-';
export const checkpointName = (backupId: string) => `${CHECKPOINT_PREFIX}${backupId}`;

/** Deletes the domain's Lifeboat checkpoints but `keep` (after a backup committed: all but its own). */
export async function pruneCheckpoints(virsh: Virsh, domain: string, keep: string[], signal?: AbortSignal): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await listCheckpoints(virsh, domain, signal)) {
    if (!name.startsWith(CHECKPOINT_PREFIX) || keep.includes(name)) continue;
    await deleteCheckpoint(virsh, domain, name, signal);
    removed.push(name);
  }
  return removed;
}

export async function deleteCheckpoint(virsh: Virsh, domain: string, name: string, signal?: AbortSignal): Promise<void> {
  try {
    await virsh.run(['checkpoint-delete', '--', domain, name], { ...(signal ? { signal } : {}) });
  } catch (err) {
    // A checkpoint whose bitmap is already gone (an image replaced, a disk removed) can only lose its metadata.
    await virsh.run(['checkpoint-delete', '--metadata', '--', domain, name], { ...(signal ? { signal } : {}) }).catch(() => {
      throw err;
    });
  }
}

export async function listCheckpoints(virsh: Virsh, domain: string, signal?: AbortSignal): Promise<string[]> {
  const out = await virsh.run(['checkpoint-list', '--name', '--', domain], { ...(signal ? { signal } : {}) });
  return out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}
