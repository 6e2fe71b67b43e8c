/**
 * The web console's pages: server-rendered HTML from the operator read model
 * (contracts/operator.ts, as the operator API answers it), no script and no build. A running run's page reloads
 * itself every 2 s; actions are plain HTML forms posted to the console server.
 */
import { formatBytes, formatHours, formatSeconds } from '../../core/units.ts';
import type { Alert, BackupRow, DiskProgressRow, OperationProgressRow, PolicyRow, RestorePointRow, RunRow, VmRow } from '../../contracts/operator.ts';
import type { MoverView } from '../../core/mover-fleet.ts';

/** HTML-escapes text for the pages. */
export const esc = (v: unknown) => String(v ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const time = (iso: string | null | undefined) => (iso ? esc(iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')) : '–');

function table(id: string, head: string[], rows: string[][]): string {
  if (!rows.length) return `<p class="empty" id="${id}">none</p>`;
  return `<table id="${id}"><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
}

export function layout(title: string, body: string, opts: { refreshSeconds?: number } = {}): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(title)} · Lifeboat</title>
${opts.refreshSeconds ? `<meta http-equiv="refresh" content="${opts.refreshSeconds}">` : ''}
<style>
body{font:14px system-ui,sans-serif;margin:0 2em 2em;color:#222}nav{padding:.8em 0;border-bottom:1px solid #ccc;margin-bottom:1em}nav a{margin-right:1.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}th{background:#f4f4f4}
.bad{color:#b00;font-weight:600}.ok{color:#070}.empty{color:#888}progress{width:12em}form.inline{display:inline-block;margin:0 1em .5em 0;padding:.5em;border:1px solid #ddd}
.alert{background:#fff0f0;border-left:4px solid #b00;padding:.4em .8em;margin:.3em 0}
</style></head><body><nav><b>Lifeboat</b> <a href="/">overview</a><a href="/vms">VMs</a><a href="/runs">runs</a><a href="/restore-points">restore points</a><a href="/movers">movers</a><a href="/alerts">alerts</a></nav>
<h1>${esc(title)}</h1>${body}</body></html>`;
}

export function alertsSection(alerts: Alert[]): string {
  if (!alerts.length) return '<p class="ok" id="alerts">no alerts</p>';
  return `<div id="alerts">${alerts.map((a) => `<div class="alert" data-kind="${esc(a.kind)}"><b>${esc(a.kind)}</b> ${esc(a.subject)}: ${esc(a.message)} <small>(since ${time(a.since)})</small></div>`).join('')}</div>`;
}

const rpoCell = (v: VmRow) => (v.rpo === 'late' || v.rpo === 'never' ? `<span class="bad">${esc(v.rpo)}</span>` : esc(v.rpo));

/** Replication lag (age of the newest restore point at the DR site) against the DR RPO; red when past it. */
function drLagCell(v: VmRow): string {
  if (v.drRpo === 'none') return '–';
  const lag = v.drLagHours === null ? 'none yet' : formatHours(v.drLagHours);
  const text = `${lag} (DR RPO ${v.drRpoHours} h)`;
  return v.drRpo === 'late' ? `<span class="bad" data-dr="late">${esc(text)}</span>` : `<span data-dr="${esc(v.drRpo)}">${esc(text)}</span>`;
}

export function vmsTable(vms: VmRow[]): string {
  return table(
    'vms',
    ['VM', 'host', 'protection', 'policies', 'last backup', 'consistency', 'RPO', 'age', 'DR lag'],
    vms.map((v) => [
      `<a href="/vms/${encodeURIComponent(v.vmId)}">${esc(v.vmId)}</a>`,
      esc(v.host),
      esc(v.protection),
      esc(v.policies.join(', ') || '–'),
      v.lastBackup ? `${time(v.lastBackup.at)} ${esc(v.lastBackup.status)}` : '–',
      esc(v.consistency ?? '–'),
      rpoCell(v),
      v.recoveryPointAgeHours === null ? '–' : esc(formatHours(v.recoveryPointAgeHours)),
      drLagCell(v),
    ]),
  );
}

export function backupsTable(rows: BackupRow[]): string {
  return table(
    'backups',
    ['backup', 'time', 'status', 'size', 'new', 'stored', 'consistency', 'verified', 'damaged'],
    rows.map((b) => [
      esc(b.backupId),
      time(b.committedAt ?? b.startedAt),
      esc(b.status),
      esc(formatBytes(b.sizeBytes)),
      esc(formatBytes(b.bytesNew)),
      esc(formatBytes(b.bytesStored)),
      esc(b.consistency ?? '–'),
      b.verified ? `${time(b.verified.at)}${b.verified.full ? '' : ' (sample)'}` : '–',
      b.damaged ? `<span class="bad">DAMAGED${b.damage ? ` (${b.damage.objects} objects, ${esc(b.damage.verifyId)})` : ''}</span>` : 'no',
    ]),
  );
}

function progressCell(done: number, total: number): string {
  if (!total) return '–';
  return `<progress value="${done}" max="${total}"></progress> ${esc(formatBytes(done))} of ${esc(formatBytes(total))}`;
}

export function runsTable(runs: RunRow[]): string {
  return table(
    'runs',
    ['run', 'policy', 'status', 'started', 'VMs', 'committed', 'failed', 'progress'],
    runs.map((r) => [
      `<a href="/runs/${encodeURIComponent(r.runId)}">${esc(r.runId)}</a>`,
      esc(r.policyId ?? '–'),
      r.status === 'FAILED' || r.failed ? `<span class="bad">${esc(r.status)}</span>` : esc(r.status),
      time(r.startedAt),
      String(r.vms.length),
      String(r.committed),
      String(r.failed),
      progressCell(
        r.vms.reduce((n, v) => n + v.bytesDone, 0),
        r.vms.reduce((n, v) => n + v.bytesTotal, 0),
      ),
    ]),
  );
}

/** A disk's (or segment's) progress: phase, disk, done, rate, ETA, mover. */
function diskCells(d: DiskProgressRow): string[] {
  return [
    esc(d.phase),
    esc(`${d.diskId}${d.segment === null ? '' : ` segment ${d.segment}`}`),
    progressCell(d.bytesDone, d.bytesTotal),
    esc(`${formatBytes(d.bytesPerSecond)}/s`),
    d.etaSeconds === null ? '–' : esc(formatSeconds(d.etaSeconds)),
    esc(d.mover),
  ];
}

export function runPage(r: RunRow): string {
  const rows: string[][] = [];
  for (const v of r.vms) {
    rows.push([
      esc(v.vmId),
      esc(v.phase),
      '',
      progressCell(v.bytesDone, v.bytesTotal),
      '',
      '',
      v.error ? `<span class="bad">${esc(v.error.Error)}: ${esc(v.error.Cause)}</span>` : '',
    ]);
    for (const d of v.disks) rows.push(['', ...diskCells(d)]);
  }
  const head =
    `<p>policy ${esc(r.policyId ?? '–')} · <b id="run-status">${esc(r.status)}</b> · started ${time(r.startedAt)}${r.stoppedAt ? ` · stopped ${time(r.stoppedAt)}` : ''} · ${r.committed} committed, ${r.failed} failed</p>` +
    (r.error ? `<p class="bad">${esc(r.error.Error)}: ${esc(r.error.Cause)}</p>` : '');
  return layout(
    `Run ${r.runId}`,
    head + table('run-vms', ['VM', 'phase', 'disk', 'done', 'rate', 'ETA', 'mover / error'], rows),
    r.status === 'RUNNING' ? { refreshSeconds: 2 } : {},
  );
}

export function policiesTable(rows: PolicyRow[]): string {
  return table(
    'policies',
    ['policy', 'repository', 'VMs', 'RPO', 'replicated to', 'back up now'],
    rows.map((p) => [
      esc(p.policyId),
      esc(p.repositoryId ?? p.bucket),
      String(p.vms),
      p.rpoHours === null ? '–' : `${p.rpoHours} h`,
      esc(p.replicateTo ?? '–'),
      `<form method="post" action="/actions/backup"><input type="hidden" name="policyId" value="${esc(p.policyId)}"><button type="submit" id="backup-${esc(p.policyId)}">Start backup</button></form>`,
    ]),
  );
}

export function moversTable(movers: MoverView[]): string {
  return table(
    'movers',
    ['group', 'mover', 'version', 'state', 'tasks', 'last seen'],
    movers.map((m) => [
      esc(m.group),
      esc(m.name),
      esc(m.version + (m.upToDate ? '' : ' (old)')),
      m.status === 'live' ? esc(m.state) : `<span class="bad">${esc(m.status)}</span>`,
      `${m.tasksInFlight}/${m.slots}`,
      `${m.ageSeconds} s ago`,
    ]),
  );
}

export function restorePointsTable(rows: RestorePointRow[]): string {
  return table(
    'restore-points',
    ['VM', 'policy', 'DR repository', 'backup', 'replicated', 'age'],
    rows.map((r) => [esc(r.vmId), esc(r.policyId), esc(r.repositoryId), esc(r.backupId), time(r.replicatedAt), esc(formatHours(r.ageHours))]),
  );
}

/** A VM's page: its backups, and forms to deep-verify or restore one (default: the newest). */
export function vmPage(vmId: string, backups: BackupRow[], groups: string[], defaultGroup: string | undefined): string {
  const groupSelect = `<select name="group">${groups.map((g) => `<option${g === defaultGroup ? ' selected' : ''}>${esc(g)}</option>`).join('')}</select>`;
  const backupSelect = `<select name="backupId"><option value="">newest committed</option>${backups
    .filter((b) => b.status === 'committed' || b.damaged)
    .map((b) => `<option>${esc(b.backupId)}</option>`)
    .join('')}</select>`;
  const vm = `<input type="hidden" name="vmId" value="${esc(vmId)}">`;
  const forms =
    `<form class="inline" method="post" action="/actions/verify">${vm}<b>Deep verify</b> ${backupSelect} on ${groupSelect} <button type="submit" id="verify">Verify</button></form>` +
    `<form class="inline" method="post" action="/actions/restore">${vm}<b>Restore</b> ${backupSelect} into <input name="target" placeholder="/absolute/folder/on/the/mover" size="32" required> on ${groupSelect} <button type="submit" id="restore">Restore</button></form>`;
  return layout(`VM ${vmId}`, forms + backupsTable(backups));
}

/** A Restore or DeepVerify execution: its status, its disks' progress (while the progress objects are kept) and, once done, its output. */
export function executionPage(
  workflow: string,
  name: string,
  d: { status: string; output?: string; error?: string; cause?: string },
  progress?: OperationProgressRow,
): string {
  const disks = progress
    ? `<p>VM ${esc(progress.vmId)}, backup ${esc(progress.backupId)}: ${progressCell(progress.bytesDone, progress.bytesTotal)}</p>${table('execution-disks', ['phase', 'disk', 'done', 'rate', 'ETA', 'mover'], progress.disks.map(diskCells))}`
    : '';
  const body =
    `<p>${esc(workflow)} <b id="execution-status">${esc(d.status)}</b></p>` +
    (d.error ? `<p class="bad">${esc(d.error)}: ${esc(d.cause)}</p>` : '') +
    disks +
    (d.output ? `<pre id="execution-output">${esc(JSON.stringify(JSON.parse(d.output), null, 2))}</pre>` : '');
  return layout(`${workflow} ${name}`, body, d.status === 'RUNNING' ? { refreshSeconds: 2 } : {});
}
