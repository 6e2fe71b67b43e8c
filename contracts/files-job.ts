/**
 * File-level restore (mover/files/): the Files workflow's input, the `files` activity
 * task's job and its result, stated once as zod schemas that the control plane, the mover
 * and the CLI validate with.
 */
import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { count, text } from './zod.ts';
import { repositoryLocation } from './endpoints.ts';

const guestPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/'), 'must be an absolute path in the guest, e.g. /etc/hostname');

/** What to read: list one directory (or one entry), or extract files and trees to a folder on the mover's host. */
const ls = {
  op: z.literal('ls'),
  path: guestPath,
  /** Entries skipped: the listing's next page starts here (the result's `next`). */
  offset: count.default(0),
};
const get = {
  op: z.literal('get'),
  paths: z.array(guestPath).min(1).max(1000),
  /** An absolute folder on the mover's host; created if missing, entries already there are never overwritten. */
  target: text.refine(isAbsolute, 'must be an absolute path on the mover'),
};

const common = {
  vmId: text,
  /** Default: the VM's newest committed backup. */
  backupId: text.optional(),
  /** Default: the backup's first disk. */
  diskId: text.optional(),
  /** Linux's partition number (0: a file system on the whole disk); default: the only partition holding a file system. */
  partition: count.optional(),
};

/** The Files workflow's input. The mover group defaults to the one serving the VM's host. */
const request = { ...common, moverGroup: text.optional() };
export const filesRequest = z.discriminatedUnion('op', [z.object({ ...request, ...ls }).strict(), z.object({ ...request, ...get }).strict()]);
export type FilesRequest = z.output<typeof filesRequest>;

/** The `files` task: PlanFiles resolved the backup, disk, repository and mover group. */
const job = {
  filesId: text,
  vmId: text,
  backupId: text,
  diskId: text,
  moverGroup: text,
  repository: repositoryLocation,
  partition: count.optional(),
  /** The longest the file-system reader may take (seconds). */
  timeoutSeconds: z
    .number()
    .int()
    .min(10)
    .max(12 * 3600)
    .default(3600),
};
export const filesJob = z.discriminatedUnion('op', [z.object({ ...job, ...ls }).strict(), z.object({ ...job, ...get }).strict()]);
export type FilesJob = z.output<typeof filesJob>;

const entry = z
  .object({
    name: text,
    type: z.enum(['file', 'dir', 'symlink', 'other']),
    size: count,
    mode: count,
    uid: count,
    gid: count,
    mtimeMs: z.number(),
    atimeMs: z.number(),
    target: z.string().optional(),
  })
  .strict();

const read = {
  filesId: text,
  backupId: text,
  diskId: text,
  /** The file system read ('ext4', 'vfat (FAT32)', ...) and its partition (0: the whole disk). */
  fs: text,
  partition: count,
  /** What was wrong with the partition table but did not stop the reading. */
  warnings: z.array(z.string()),
  /** Bytes the reader asked for, and bytes downloaded from the repository to serve them. */
  bytesRead: count,
  bytesDownloaded: count,
  seconds: z.number().nonnegative(),
};

/** The task's answer; a listing is one page, small enough for any Step Functions payload. */
export const filesResult = z.discriminatedUnion('op', [
  z.object({ op: z.literal('ls'), ...read, path: text, entries: z.array(entry), total: count, next: count.nullable() }).strict(),
  z
    .object({
      op: z.literal('get'),
      ...read,
      target: text,
      files: count,
      dirs: count,
      symlinks: count,
      bytes: count,
      skipped: z.array(z.object({ path: z.string(), reason: z.string() }).strict()),
      skippedCount: count,
    })
    .strict(),
]);
export type FilesResult = z.output<typeof filesResult>;

/** A listing page's JSON stays under this, far below the 256 KiB a task result may carry. */
export const LISTING_PAGE_BYTES = 160 * 1024;
