/**
 * `lifeboat vms`, `backups VM`, `runs [RUN]`, `policies`, `movers`, `restore-points` and
 * `alerts`: the operator API's views (contracts/operator.ts) as aligned tables, or
 * with `--json` as the API's JSON. Exit code 1 when what is listed shows a failure an
 * operator must act on (a VM past its RPO, a damaged backup, a failed run, an alert).
 */
import type { Command } from 'commander';
import type { Alert, BackupRow, PolicyRow, RestorePointRow, RunRow, VmRow } from '../contracts/operator.ts';
import type { MoverView } from '../core/mover-fleet.ts';
import { formatBytes, formatHours, formatSeconds } from '../core/units.ts';
import { EXIT, guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';
import { formatTable, shortTime } from './table.ts';

type Opts = StackOptions & { json?: boolean };

const FAILED_RUN = new Set(['FAILED', 'TIMED_OUT', 'ABORTED']);

/** Fetches `path` from the stack's operator API and prints it as JSON or with `table`; `failed(rows)` sets exit code 1. */
function listing<T>(
  io: Out,
  path: (args: string[], opts: Opts & { vm?: string }) => string,
  table: (rows: T, args: string[]) => string[],
  failed?: (rows: T) => boolean,
) {
  return guarded(async (...all: unknown[]) => {
    const args = all.filter((a): a is string => typeof a === 'string');
    const opts = all.find((a): a is Opts & { vm?: string } => !!a && typeof a === 'object' && 'dataDir' in a)!;
    const client = await StackClient.connect(opts);
    try {
      const rows = await client.get<T>(path(args, opts));
      if (opts.json) io.out(JSON.stringify(rows, null, 2));
      else for (const line of table(rows, args)) io.out(line);
      if (failed?.(rows)) process.exitCode = EXIT.failed;
    } finally {
      client.close();
    }
  });
}

const hoursOrDash = (h: number | null) => (h === null ? '-' : formatHours(h));

export function vmsTable(rows: VmRow[]): string[] {
  if (!rows.length) return ['no VMs in the inventory (add one with `lifeboat vm add`, or run `lifeboat discover`)'];
  const status = (s: VmRow['rpo']) => (s === 'late' || s === 'never' ? s.toUpperCase() : s);
  return formatTable(
    [
      'VM',
      'HOST',
      'PROTECTION',
      'POLICIES',
      'LAST BACKUP',
      'STATUS',
      'CONSISTENCY',
      'RPO',
      'AGE',
      'RPO STATUS',
      'DR RPO',
      'DR LAG',
      'DR STATUS',
      'FAILED OVER',
    ],
    rows.map((v) => [
      v.vmId,
      v.host,
      v.protection,
      v.policies.join(',') || '-',
      shortTime(v.lastBackup?.at),
      v.lastBackup?.status ?? '-',
      v.consistency ?? '-',
      v.rpoHours === null ? '-' : `${v.rpoHours} h`,
      hoursOrDash(v.recoveryPointAgeHours),
      status(v.rpo),
      v.drRpoHours === null ? '-' : `${v.drRpoHours} h`,
      hoursOrDash(v.drLagHours),
      v.drRpo === 'none' ? '-' : status(v.drRpo),
      v.failedOver ? `${v.failedOver.backupId} (${v.failedOver.plan}, ${shortTime(v.failedOver.at)})` : '-',
    ]),
  );
}

export function backupsTable(rows: BackupRow[], vmId: string): string[] {
  if (!rows.length) return [`VM ${vmId} has no backups yet`];
  const lines = formatTable(
    ['BACKUP', 'TIME', 'STATUS', 'SIZE', 'NEW', 'STORED', 'CONSISTENCY', 'VERIFIED', 'DAMAGED'],
    rows.map((b) => [
      b.backupId,
      shortTime(b.committedAt ?? b.startedAt),
      b.status,
      formatBytes(b.sizeBytes),
      formatBytes(b.bytesNew),
      formatBytes(b.bytesStored),
      b.consistency ?? '-',
      b.verified ? `${shortTime(b.verified.at)}${b.verified.full ? '' : ' (sample)'}` : '-',
      b.damaged ? `DAMAGED${b.damage ? ` (${b.damage.objects} objects, ${b.damage.verifyId})` : ''}` : 'no',
    ]),
  );
  for (const b of rows.filter((x) => x.error)) lines.push(`  ${b.backupId}: ${b.error!.Error}: ${b.error!.Cause}`);
  return lines;
}

export function runsTable(rows: RunRow[]): string[] {
  if (!rows.length) return ['no Backup runs yet (start one with `lifeboat backup POLICY`)'];
  return formatTable(
    ['RUN', 'POLICY', 'STATUS', 'STARTED', 'STOPPED', 'VMS', 'COMMITTED', 'FAILED'],
    rows.map((r) => [
      r.runId,
      r.policyId ?? '-',
      r.status,
      shortTime(r.startedAt),
      shortTime(r.stoppedAt),
      String(r.vms.length),
      String(r.committed),
      String(r.failed),
    ]),
  );
}

export function runDetail(r: RunRow): string[] {
  const lines = [
    `run ${r.runId} of policy ${r.policyId ?? '-'}: ${r.status}, started ${shortTime(r.startedAt)}${r.stoppedAt ? `, stopped ${shortTime(r.stoppedAt)}` : ''}; ${r.committed} committed, ${r.failed} failed`,
  ];
  if (r.error) lines.push(`  ${r.error.Error}: ${r.error.Cause}`);
  const rows: string[][] = [];
  for (const v of r.vms) {
    rows.push([
      v.vmId,
      '',
      v.phase,
      v.bytesTotal ? `${formatBytes(v.bytesDone)}/${formatBytes(v.bytesTotal)}` : '-',
      '',
      '',
      v.error ? `${v.error.Error}: ${v.error.Cause}` : '',
    ]);
    for (const d of v.disks)
      rows.push([
        '',
        `${d.diskId}${d.segment === null ? '' : ` seg ${d.segment}`}`,
        d.phase,
        `${formatBytes(d.bytesDone)}/${formatBytes(d.bytesTotal)}`,
        `${formatBytes(d.bytesPerSecond)}/s`,
        d.etaSeconds === null ? '-' : formatSeconds(d.etaSeconds),
        d.mover,
      ]);
  }
  return [...lines, ...formatTable(['VM', 'DISK', 'PHASE', 'DONE', 'RATE', 'ETA', 'MOVER / ERROR'], rows)];
}

export function registerListingCommands(program: Command, defaultDataDir: string, io: Out): void {
  const cmd = (name: string, description: string) =>
    stackOptions(program.command(name).description(description).option('--json', "print the rows as JSON (the operator API's answer)"), defaultDataDir);

  cmd(
    'vms',
    'the VM inventory: protection, last backup, consistency, RPO status, replication lag to the DR site (exit code 1 when a VM is past its RPO or its DR RPO)',
  ).action(
    listing<VmRow[]>(
      io,
      () => '/api/vms',
      vmsTable,
      (rows) => rows.some((v) => v.rpo === 'late' || v.drRpo === 'late'),
    ),
  );

  cmd('backups', "a VM's backups, newest first: time, size, new and stored bytes, consistency, verified, damaged (exit code 1 when one is damaged)")
    .argument('<vm>', 'the VM id')
    .action(
      listing<BackupRow[]>(
        io,
        ([vm]) => `/api/vms/${encodeURIComponent(vm!)}/backups`,
        (rows, [vm]) => backupsTable(rows, vm!),
        (rows) => rows.some((b) => b.damaged),
      ),
    );

  cmd('runs', 'the newest Backup runs, or one run: per-VM outcome, errors, and per-disk progress while it runs (exit code 1 when a run failed)')
    .argument('[run]', "a run id (the Backup execution's name)")
    .action(
      listing<RunRow[] | RunRow>(
        io,
        ([run]) => (run ? `/api/runs/${encodeURIComponent(run)}` : '/api/runs'),
        (rows) => (Array.isArray(rows) ? runsTable(rows) : runDetail(rows)),
        (rows) => (Array.isArray(rows) ? rows.slice(0, 1) : [rows]).some((r) => FAILED_RUN.has(r.status) || r.failed > 0),
      ),
    );

  cmd('policies', 'the protection policies: repository, VMs selected, RPO, DR repository').action(
    listing<PolicyRow[]>(
      io,
      () => '/api/policies',
      (rows) =>
        rows.length
          ? formatTable(
              ['POLICY', 'REPOSITORY', 'VMS', 'RPO', 'REPLICATED TO'],
              rows.map((p) => [p.policyId, p.repositoryId ?? p.bucket, String(p.vms), p.rpoHours === null ? '-' : `${p.rpoHours} h`, p.replicateTo ?? '-']),
            )
          : ['no policies (add them to the configuration)'],
    ),
  );

  cmd('movers', 'the registered movers: group, version, state, tasks, last seen (exit code 1 when one is stale)').action(
    listing<MoverView[]>(
      io,
      () => '/api/movers',
      (rows) =>
        rows.length
          ? formatTable(
              ['GROUP', 'MOVER', 'VERSION', 'STATE', 'TASKS', 'SEEN', 'TASK KINDS'],
              rows.map((m) => [
                m.group,
                m.name,
                m.version + (m.upToDate ? '' : ' (old)'),
                m.status === 'live' ? m.state : m.status,
                `${m.tasksInFlight}/${m.slots}`,
                `${m.ageSeconds}s ago`,
                m.capabilities.tasks.join(','),
              ]),
            )
          : ['no mover has registered (start one: `lifeboat up` starts them for the embedded stack; deploy/README for a site)'],
      (rows) => rows.some((m) => m.status === 'stale'),
    ),
  );

  cmd('restore-points', 'the backups complete in the DR repositories (replicated and verified), per VM newest first')
    .option('--vm <id>', 'only this VM')
    .action(
      listing<RestorePointRow[]>(
        io,
        (_, opts) => `/api/restore-points${opts.vm ? `?vm=${encodeURIComponent(opts.vm)}` : ''}`,
        (rows) =>
          rows.length
            ? formatTable(
                ['VM', 'POLICY', 'DR REPOSITORY', 'BACKUP', 'REPLICATED', 'AGE'],
                rows.map((r) => [r.vmId, r.policyId, r.repositoryId, r.backupId, shortTime(r.replicatedAt), formatHours(r.ageHours)]),
              )
            : ['no restore points in a DR repository (a policy with "replicateTo" replicates after each run)'],
      ),
    );

  cmd('alerts', 'what needs attention now: damaged backups, VMs past their RPO, silent mover groups, failed runs (exit code 1 when there is any)').action(
    listing<Alert[]>(
      io,
      () => '/api/alerts',
      (rows) => (rows.length ? rows.map((a) => `${a.kind.toUpperCase()}  ${a.subject}  since ${shortTime(a.since)}\n  ${a.message}`) : ['no alerts']),
      (rows) => rows.length > 0,
    ),
  );
}
