/**
 * `lifeboat files ls` and `lifeboat files get`: file-level restore through the Files
 * workflow on a running stack. A mover of the group serving the VM's host (or `--group`)
 * reads the backup's disk straight from the repository; `ls` prints a directory page by
 * page (each page one execution, so no payload outgrows Step Functions' quota), `get`
 * extracts under `--to`, a folder on that mover's host (in the embedded stack, this one).
 */
import { InvalidArgumentError, type Command } from 'commander';
import { resolve } from 'node:path';
import { filesRequest, filesResult, type FilesResult } from '../contracts/files-job.ts';
import { guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

type Entry = Extract<FilesResult, { op: 'ls' }>['entries'][number];

/** `VM[:DISK]`. */
export function vmAndDisk(v: string): { vmId: string; diskId?: string } {
  const at = v.lastIndexOf(':');
  const vmId = at > 0 ? v.slice(0, at) : v;
  const diskId = at > 0 ? v.slice(at + 1) : undefined;
  if (!vmId || diskId === '') throw new InvalidArgumentError(`'${v}' is not VM or VM:DISK`);
  return { vmId, ...(diskId ? { diskId } : {}) };
}

function partitionNumber(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 4096)
    throw new InvalidArgumentError(`'${v}' is not a partition number: give Linux's number (1 for the first; 0 for a file system on the whole disk)`);
  return n;
}

const TYPE_CHAR = { file: '-', dir: 'd', symlink: 'l', other: '?' } as const;

/** One line of `ls -l`: type and permission bits, owner, size, modification time (UTC), name and link target. */
export function longLine(e: Entry): string {
  const bits = [...'rwxrwxrwx'].map((c, i) => (e.mode & (0o400 >> i) ? c : '-')).join('');
  const time = new Date(e.mtimeMs).toISOString().replace('T', ' ').slice(0, 19);
  return `${TYPE_CHAR[e.type]}${bits} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${String(e.size).padStart(12)} ${time} ${e.name}${e.target !== undefined ? ` -> ${e.target}` : ''}`;
}

interface Common extends StackOptions {
  backup?: string;
  partition?: number;
  group?: string;
}

function requestOf(vm: string, o: Common) {
  const { vmId, diskId } = vmAndDisk(vm);
  return {
    vmId,
    ...(diskId ? { diskId } : {}),
    ...(o.backup ? { backupId: o.backup } : {}),
    ...(o.partition !== undefined ? { partition: o.partition } : {}),
    ...(o.group ? { moverGroup: o.group } : {}),
  };
}

export function registerFilesCommands(program: Command, defaultDataDir: string, io: Out): void {
  const files = program
    .command('files')
    .description("file-level restore: list and extract files of a backup's disk, read straight from the repository by a mover at the VM's site");
  const common = (c: Command) =>
    stackOptions(
      c
        .option('--backup <id>', 'the backup (default: the newest committed)')
        .option(
          '--partition <n>',
          'the partition (Linux numbering; 0: a file system on the whole disk; default: the only one with a file system)',
          partitionNumber,
        )
        .option('--group <id>', "the mover group that reads (default: the one serving the VM's host)"),
      defaultDataDir,
    );

  common(
    files
      .command('ls')
      .description("list a directory (or show one entry) of a backup's disk")
      .argument('<vm>', "VM or VM:DISK (default disk: the backup's first)")
      .argument('<path>', "absolute path in the guest's file system")
      .option('--json', 'print the listing as JSON'),
  ).action(
    guarded(async (vm: string, path: string, opts: Common & { json?: boolean }) => {
      const client = await StackClient.connect(opts);
      const entries: Entry[] = [];
      let first: Extract<FilesResult, { op: 'ls' }> | undefined;
      try {
        for (let offset: number | null = 0; offset !== null; ) {
          const input = filesRequest.parse({ ...requestOf(vm, opts), op: 'ls', path, offset });
          const r = filesResult.parse((await client.runWorkflow('Files', input)).output);
          if (r.op !== 'ls') throw new Error(`the Files workflow answered a '${r.op}' result to a listing`);
          first ??= r;
          entries.push(...r.entries);
          offset = r.next;
        }
      } finally {
        client.close();
      }
      const r = first!;
      if (opts.json)
        return io.out(
          JSON.stringify({ backupId: r.backupId, diskId: r.diskId, partition: r.partition, fs: r.fs, path: r.path, warnings: r.warnings, entries }, null, 2),
        );
      io.out(
        `backup ${r.backupId} disk '${r.diskId}' ${r.partition ? `partition ${r.partition}` : 'whole disk'} (${r.fs}): ${r.path}, ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}`,
      );
      for (const w of r.warnings) io.out(`  warning: ${w}`);
      for (const x of entries) io.out(longLine(x));
    }),
  );

  common(
    files
      .command('get')
      .description(
        "extract files and directories (recursively) of a backup's disk into a folder on the reading mover's host, keeping modes, times and symbolic links",
      )
      .argument('<vm>', "VM or VM:DISK (default disk: the backup's first)")
      .argument('<paths...>', "absolute paths in the guest's file system")
      .requiredOption('--to <dir>', "folder on the mover's host (made if missing; nothing there is overwritten)"),
  ).action(
    guarded(async (vm: string, paths: string[], opts: Common & { to: string }) => {
      const input = filesRequest.parse({ ...requestOf(vm, opts), op: 'get', paths, target: resolve(opts.to) });
      const client = await StackClient.connect(opts);
      const { output, seconds } = await client.runWorkflow('Files', input).finally(() => client.close());
      const r = filesResult.parse(output);
      if (r.op !== 'get') throw new Error(`the Files workflow answered a '${r.op}' result to an extraction`);
      io.out(`backup ${r.backupId} disk '${r.diskId}' ${r.partition ? `partition ${r.partition}` : 'whole disk'} (${r.fs}) → ${r.target}`);
      for (const w of r.warnings) io.out(`  warning: ${w}`);
      io.out(
        `  ${r.files} file(s), ${r.dirs} folder(s), ${r.symlinks} symbolic link(s), ${r.bytes} bytes in ${seconds.toFixed(1)} s; read ${r.bytesRead} bytes of the disk, downloaded ${r.bytesDownloaded} bytes`,
      );
      for (const s of r.skipped) io.out(`  skipped ${s.path}: ${s.reason}`);
      if (r.skippedCount > r.skipped.length) io.out(`  ... and ${r.skippedCount - r.skipped.length} more skipped`);
    }),
  );
}
