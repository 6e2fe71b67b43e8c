/**
 * `lifeboat host-config backup|list|restore`: run the HostConfigBackup workflow on a
 * stack, list the host configuration backups the catalog records (through the operator
 * API), and restore one as files (`networks/<name>.xml`, `pools/<name>.xml`,
 * `domains/<name>.xml`, and what virsh said of the host under `host/`), byte for byte what
 * virsh printed at backup time: the archive is read from the repository and opened with
 * the stack's key (the embedded stack's key file; a deployed stack's KMS key, with the
 * operator's credentials).
 */
import type { Command } from 'commander';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { HostConfigArchive } from '../repository/host-config.ts';
import type { HostConfigRecord } from '../contracts/host-config.ts';
import type { HostConfigSummary } from '../contracts/workflow-outputs.ts';
import { runWithProgress } from './progress.ts';
import { guarded, lambdaMessage, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/** One line per host: where its archive went and what it holds, or why it could not be backed up. */
export function formatHostConfigBackup(s: HostConfigSummary, seconds: number): string[] {
  const lines = [
    `Host configuration backup ${s.runId}: ${s.hosts.length} host(s) in ${seconds.toFixed(1)} s, ${s.succeeded} backed up, ${s.failedHosts.length} failed`,
  ];
  for (const h of s.hosts) {
    if ('error' in h) {
      lines.push(`  ${h.hostId}: FAILED ${h.error.Error}: ${lambdaMessage(h.error.Cause ?? '')}`);
      continue;
    }
    const removed = h.deleted.length ? `, ${h.deleted.length} older removed` : '';
    const refused = h.notDeleted?.length ? `; NOT deleted: ${h.notDeleted.map((n) => `${n.key} (${n.reason})`).join(', ')}` : '';
    lines.push(
      `  ${h.hostId}: ${h.backupId}: ${h.counts.networks} network(s), ${h.counts.pools} pool(s), ${h.counts.domains} domain(s), ${kib(h.bytes)}; ${h.kept} kept${removed}${refused}`,
    );
  }
  return lines;
}

/** The host's record to restore: the one `at` names (the API's 404 names what to do), or the newest. */
export async function pickHostConfig(client: Pick<StackClient, 'get'>, hostId: string, at?: string): Promise<HostConfigRecord> {
  const host = encodeURIComponent(hostId);
  if (at) return client.get<HostConfigRecord>(`/api/host-configs/${host}/${encodeURIComponent(at)}`);
  const [newest] = await client.get<HostConfigRecord[]>(`/api/host-configs/${host}`);
  if (!newest)
    throw new Error(
      `host '${hostId}' has no host configuration backup yet: run one with \`lifeboat host-config backup --host ${hostId}\` (check the host id with \`lifeboat host-config list\`)`,
    );
  return newest;
}

/** The host configuration backups of one host, or of every libvirt host, newest first per host. */
export function listHostConfigs(client: Pick<StackClient, 'get'>, hostId?: string): Promise<HostConfigRecord[]> {
  return client.get<HostConfigRecord[]>(`/api/host-configs${hostId ? `?host=${encodeURIComponent(hostId)}` : ''}`);
}

/** One line per backup (host, id, time, counts, size, SHA-256 prefix), or what to do when there is none. */
export function formatHostConfigList(records: HostConfigRecord[], hostId?: string): string[] {
  if (records.length === 0) {
    return [
      hostId
        ? `host '${hostId}' has no host configuration backup (run one with \`lifeboat host-config backup --host ${hostId}\`)`
        : 'no host configuration backups yet (run one with `lifeboat host-config backup`)',
    ];
  }
  return records.map(
    (r) =>
      `${r.hostId}  ${r.backupId}  ${r.takenAt}  ${r.counts.networks} network(s), ${r.counts.pools} pool(s), ${r.counts.domains} domain(s)  ${kib(r.bytes)}  sha256 ${r.sha256.slice(0, 16)}…`,
  );
}

/** A definition's name as a file name: libvirt names may hold nearly anything, but not a path of ours. */
function fileName(kind: string, name: string): string {
  if (name === '.' || name === '..' || /[/\0]/.test(name))
    throw new Error(
      `the ${kind} definition named ${JSON.stringify(name)} cannot be written as a file name (a slash or a dot path); nothing of it was written: read it from the archive with another tool`,
    );
  return `${name}.xml`;
}

export interface WrittenFiles {
  networks: number;
  pools: number;
  domains: number;
  files: string[];
}

/**
 * Writes an archive into `dir` as files: `networks/<name>.xml`, `pools/<name>.xml`,
 * `domains/<name>.xml` (virsh's output, byte for byte) and `host/` (nodeinfo, version,
 * capabilities). Refuses a folder that is not empty unless `force`; every file is written
 * under a temporary name and renamed into place, so no file looks restored before it is complete.
 */
export async function writeHostConfigFiles(archive: HostConfigArchive, dir: string, opts: { force?: boolean } = {}): Promise<WrittenFiles> {
  const target = resolve(dir);
  const info = await stat(target).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new Error(`cannot look at ${target} (${err.message}): check the path and its permissions`, { cause: err });
  });
  if (info && !info.isDirectory()) throw new Error(`${target} is not a folder: give --to a folder (new or empty) for the host's definitions`);
  const present = info ? await readdir(target) : [];
  if (present.length > 0 && !opts.force) {
    throw new Error(
      `${target} is not empty (${present.length} entr${present.length === 1 ? 'y' : 'ies'}, e.g. ${present.slice(0, 3).join(', ')}): choose an empty or new folder, or pass --force to write into it (files of the same names are replaced)`,
    );
  }
  // Every name is checked before anything is written.
  const entries: [string, string, string][] = [];
  for (const kind of ['networks', 'pools', 'domains'] as const) for (const d of archive[kind]) entries.push([kind, fileName(kind, d.name), d.xml]);
  const facts: [string, string | undefined][] = [
    ['nodeinfo.txt', archive.host.nodeinfo],
    ['version.txt', archive.host.version],
    ['capabilities.xml', archive.host.capabilities],
  ];
  for (const [file, text] of facts) if (text !== undefined) entries.push(['host', file, text]);
  const files: string[] = [];
  for (const [folder, file, text] of entries) {
    await mkdir(join(target, folder), { recursive: true });
    const path = join(target, folder, file);
    const partial = `${path}.partial-${process.pid}`;
    try {
      await writeFile(partial, text);
      await rename(partial, path);
    } catch (err) {
      await rm(partial, { force: true });
      throw new Error(`cannot write ${path} (${(err as Error).message}): check the free space and permissions of ${target}`, { cause: err });
    }
    files.push(join(folder, file));
  }
  return { networks: archive.networks.length, pools: archive.pools.length, domains: archive.domains.length, files };
}

/** Restores a host's configuration backup (the newest, or `at`) into `dir`. */
export async function restoreHostConfig(
  client: StackClient,
  o: { hostId: string; at?: string; to: string; force?: boolean },
): Promise<{ record: HostConfigRecord; written: WrittenFiles }> {
  const record = await pickHostConfig(client, o.hostId, o.at);
  const repository = await client.openRepository(record.repository);
  const sealed = await repository.store.get(record.objectKey);
  if (!sealed)
    throw new Error(
      `host configuration backup ${record.backupId} of host '${o.hostId}' is recorded, but its object ${record.objectKey} is not in bucket ${record.repository.bucket} (deleted by hand?): pick another with --at (\`lifeboat host-config list --host ${o.hostId}\`)`,
    );
  const archive = await repository.openHostConfig(sealed, record.objectKey, record.sha256);
  return { record, written: await writeHostConfigFiles(archive, o.to, o.force ? { force: true } : {}) };
}

export function registerHostConfigCommands(program: Command, defaultDataDir: string, io: Out): void {
  const hc = program
    .command('host-config')
    .description("libvirt hosts' networks, storage pools and domain definitions: back them up, list and restore them as files");

  stackOptions(
    hc
      .command('backup')
      .description("back up the libvirt hosts' configuration now (the HostConfigBackup workflow); exit code 1 when a host failed")
      .option('--host <id>', 'only this host (default: every libvirt host)')
      .option('--json', "print the workflow's output as JSON"),
    defaultDataDir,
  ).action(
    guarded(async (opts: StackOptions & { host?: string; json?: boolean }) => {
      const client = await StackClient.connect(opts);
      const r = await runWithProgress(client, 'HostConfigBackup', opts.host ? { hostId: opts.host } : {}, {
        off: !!opts.json,
        ...(io.status ? { status: io.status } : {}),
      }).finally(() => client.close());
      const summary = r.output as HostConfigSummary;
      if (opts.json) {
        if (summary.failedHosts.length > 0) process.exitCode = 1;
        return io.out(JSON.stringify(summary, null, 2));
      }
      for (const line of formatHostConfigBackup(summary, r.seconds)) io.out(line);
      if (summary.failedHosts.length > 0) process.exitCode = 1;
    }),
  );

  stackOptions(
    hc
      .command('list')
      .description('the host configuration backups in the catalog, newest first')
      .option('--host <id>', 'only this host (default: every libvirt host)')
      .option('--json', 'print JSON (one array of records)'),
    defaultDataDir,
  ).action(
    guarded(async (opts: StackOptions & { host?: string; json?: boolean }) => {
      const client = await StackClient.connect(opts);
      const records = await listHostConfigs(client, opts.host).finally(() => client.close());
      if (opts.json) io.out(JSON.stringify(records, null, 2));
      else for (const line of formatHostConfigList(records, opts.host)) io.out(line);
    }),
  );

  stackOptions(
    hc
      .command('restore')
      .description('write a host configuration backup as files: networks/<name>.xml, pools/<name>.xml, domains/<name>.xml (as virsh printed them), host/')
      .requiredOption('--host <id>', 'the host')
      .option('--at <backupId>', 'the backup (default: the newest; see `host-config list`)')
      .requiredOption('--to <dir>', 'a new or empty folder')
      .option('--force', 'write into a folder that is not empty, replacing files of the same names'),
    defaultDataDir,
  ).action(
    guarded(async (opts: StackOptions & { host: string; at?: string; to: string; force?: boolean }) => {
      const client = await StackClient.connect(opts);
      const { record, written } = await restoreHostConfig(client, {
        hostId: opts.host,
        to: opts.to,
        ...(opts.at ? { at: opts.at } : {}),
        ...(opts.force ? { force: true } : {}),
      }).finally(() => client.close());
      io.out(
        `restored host configuration ${record.backupId} of host ${record.hostId} (taken ${record.takenAt}, sha256 checked) into ${resolve(opts.to)}: ${written.networks} network(s), ${written.pools} pool(s), ${written.domains} domain(s), ${written.files.length} file(s)`,
      );
    }),
  );
}
