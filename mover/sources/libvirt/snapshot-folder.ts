/**
 * A snapshot's folder in the mover's work folder (named by a hash of the domain and the
 * backup, so its NBD socket fits a unix socket path), the owner file that says whose it is,
 * the handle `snapshot` returns, and the qemu-nbd processes a shut-off VM's snapshot starts.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SourceUnavailable } from '../../../contracts/errors.ts';

/** What `snapshot` returns as its handle: enough for any mover of the group to release it. */
export interface Handle {
  domain: string;
  dir: string;
  /** `job`: a libvirt backup job; `qemu-nbd`: exports of a shut-off VM's images. */
  kind: 'job' | 'qemu-nbd';
}

/** Names the domain and backup a snapshot folder belongs to (its name is a hash). */
const OWNER = 'owner.json';

export async function readOwner(dir: string): Promise<{ domain: string; backupId: string } | undefined> {
  const o = await readFile(join(dir, OWNER), 'utf8').then(
    (t) => JSON.parse(t) as { domain?: unknown; backupId?: unknown },
    () => undefined,
  );
  return typeof o?.domain === 'string' && typeof o.backupId === 'string' ? { domain: o.domain, backupId: o.backupId } : undefined;
}

/** Marks a snapshot folder as the domain's and backup's (what `readOwner` reads back). */
export async function writeOwner(dir: string, owner: { domain: string; backupId: string }): Promise<void> {
  await writeFile(join(dir, OWNER), JSON.stringify(owner));
}

/** The longest unix socket path Linux takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * A snapshot's folder: a short hash of the domain and backup, because the NBD socket in it
 * must fit a unix socket path; refuses a work folder too deep for that.
 */
export function snapshotDir(workDir: string, uuid: string, backupId: string): string {
  const dir = join(workDir, createHash('sha256').update(`${uuid}/${backupId}`).digest('hex').slice(0, 16));
  const longest = join(dir, 'vdzz.sock');
  if (Buffer.byteLength(longest) > MAX_SOCKET_PATH) {
    throw new SourceUnavailable(
      `the mover's work folder ${workDir} is too deep for the NBD sockets of a snapshot (${Buffer.byteLength(longest)} bytes, unix sockets take ${MAX_SOCKET_PATH}): set LIFEBOAT_WORK_DIR to a shorter path, e.g. /var/lib/lifeboat-mover/work`,
    );
  }
  return dir;
}

/** The standard NBD URI of an export on a unix socket. */
export const nbdUri = (exportName: string, socket: string) => `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socket)}`;

export const handleOf = (h: Handle) => JSON.stringify(h);
export function parseHandle(handle: string): Handle {
  try {
    const h = JSON.parse(handle) as Handle;
    if (typeof h.dir === 'string' && typeof h.domain === 'string' && (h.kind === 'job' || h.kind === 'qemu-nbd')) return h;
  } catch {
    /* below */
  }
  throw new SourceUnavailable(`snapshot handle ${handle.slice(0, 200)} was not made by the libvirt driver`);
}

/** Stops the qemu-nbd processes a shut-off VM's snapshot started (their pid files are in its folder). */
export async function stopQemuNbd(dir: string): Promise<void> {
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (!f.endsWith('.pid')) continue;
    const pid = Number((await readFile(join(dir, f), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 1) continue;
    try {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes('qemu-nbd') && cmd.includes(dir)) process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  }
}
