/**
 * Writes what the sandboxed reader walks (sandbox.ts, `get`) under a folder of this host:
 * directories, regular files (holes left as holes), symbolic links as links (never
 * followed), permission bits (setuid and setgid dropped), modification and access times
 * (directories' after their contents), and owners when running as root. Devices, FIFOs
 * and sockets are skipped and listed.
 *
 * Every path from the guest is checked before it touches this host: relative, no '..' or
 * '.' component, no NUL; nothing is created outside the target, nothing existing is
 * overwritten (O_EXCL), and no link is followed (O_NOFOLLOW).
 */
import { constants } from 'node:fs';
import { chmod, lchown, lutimes, mkdir, open, symlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { SandboxFailure, type ChildMessage } from './sandbox.ts';

export interface ExtractStats {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  /** Entries left out, with why (at most 50 listed, paths cut at 512 characters: the list travels in a task result). */
  skipped: { path: string; reason: string }[];
  skippedCount: number;
}

/** The guest path `rel` under `root`, or an error naming it when it would leave `root`. */
export function safeJoin(root: string, rel: string): string {
  const parts = rel.split('/');
  if (rel === '' || rel.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..'))
    throw new SandboxFailure(
      'corrupt',
      `the file system names an entry '${rel.replace(/\0/g, '\\0')}' that is not a plain relative path; refused (nothing is written outside the target)`,
    );
  return join(root, ...parts);
}

const seconds = (ms: number) => ms / 1000;
const HOLE_GRAIN = 64 * 1024;
const ZEROS = new Uint8Array(HOLE_GRAIN);
const isZero = (b: Uint8Array) => Buffer.compare(b, ZEROS.subarray(0, b.length)) === 0;

/** A handler for the sandbox's `get` messages writing under `root` (which must exist); `stats` is filled as it goes. */
export function extractor(root: string): { stats: ExtractStats; onMessage: (m: ChildMessage) => Promise<void>; close: () => Promise<void> } {
  const stats: ExtractStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0, skipped: [], skippedCount: 0 };
  const asRoot = process.getuid?.() === 0;
  let file: { fh: FileHandle; path: string } | undefined;
  const owner = async (path: string, e: { uid: number; gid: number }) => {
    if (asRoot) await lchown(path, e.uid, e.gid);
  };
  const onMessage = async (m: ChildMessage): Promise<void> => {
    if (m.t === 'data') {
      if (!file) throw new Error('the file-system reader sent file bytes outside a file');
      // All-zero pieces stay holes, as they may have been in the guest.
      for (let at = 0; at < m.bytes.length; at += HOLE_GRAIN) {
        const piece = m.bytes.subarray(at, at + HOLE_GRAIN);
        if (!isZero(piece)) await file.fh.write(piece, 0, piece.length, m.offset + at);
      }
      stats.bytes += m.bytes.length;
      return;
    }
    if (m.t !== 'event') return;
    // The root of the file system ('get /') is extracted into the target itself.
    const top = m.path === '';
    if (top && m.kind !== 'dir' && m.kind !== 'dirEnd') throw new Error('the file-system reader named a file with an empty path');
    const path = top ? root : safeJoin(root, m.path);
    const e = m.entry;
    const mode = e.mode & 0o1777;
    switch (m.kind) {
      case 'dir':
        if (!top) await mkdir(path, { mode: 0o700 });
        stats.dirs++;
        return;
      case 'dirEnd':
        if (top) return;
        await owner(path, e);
        await chmod(path, mode);
        await utimes(path, seconds(e.atimeMs), seconds(e.mtimeMs));
        return;
      case 'file':
        if (file) throw new SandboxFailure('corrupt', `the file-system reader started ${m.path} before ending ${file.path}`);
        file = { fh: await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600), path };
        return;
      case 'fileEnd': {
        if (!file || file.path !== path) throw new Error(`the file-system reader ended ${m.path}, which it had not started`);
        await file.fh.truncate(e.size);
        await file.fh.close();
        file = undefined;
        await owner(path, e);
        await chmod(path, mode);
        await utimes(path, seconds(e.atimeMs), seconds(e.mtimeMs));
        stats.files++;
        return;
      }
      case 'symlink':
        await symlink(e.target ?? '', path);
        await owner(path, e);
        await lutimes(path, seconds(e.atimeMs), seconds(e.mtimeMs));
        stats.symlinks++;
        return;
      case 'other':
        stats.skippedCount++;
        if (stats.skipped.length < 50) stats.skipped.push({ path: m.path.slice(0, 512), reason: 'a device, FIFO or socket: not extracted' });
    }
  };
  return {
    stats,
    onMessage,
    close: async () => {
      await file?.fh.close();
      file = undefined;
    },
  };
}
