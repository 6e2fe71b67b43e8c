import type { RunSummary } from '../../contracts/workflow-outputs.ts';
/** Turns run summaries into the lines the demo prints. Pure: tested without a stack. */

const MiB = 1024 * 1024;
export const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

export interface BackupFigures {
  label: string;
  summary: RunSummary;
  seconds: number;
}

/** A readable summary of one backup run. */
export function formatBackup(f: BackupFigures): string[] {
  const t = f.summary.totals;
  const nonZero = t.bytesScanned - t.bytesZero;
  const dedup = t.bytesUploaded > 0 ? nonZero / t.bytesUploaded : Infinity;
  const compression = t.bytesUploaded > 0 && t.bytesStored > 0 ? t.bytesUploaded / t.bytesStored : Infinity;
  const ratio = (r: number) => (Number.isFinite(r) ? `${r.toFixed(2)}x` : 'n/a (nothing uploaded)');
  return [
    `${f.label}: ${f.summary.committed} VM(s) committed, ${f.summary.failed} failed (run ${f.summary.runId})`,
    `  scanned     ${mib(t.bytesScanned)} (${mib(t.bytesZero)} all-zero, skipped; ${mib(t.bytesUnallocated ?? 0)} of it holes, not read)`,
    ...(t.bytesUnchanged
      ? [`  unchanged   ${mib(t.bytesUnchanged)} not read: changed-block tracking said the parent backup holds it (${mib(t.bytesRead ?? 0)} read)`]
      : []),
    ...f.summary.vms.flatMap((v) => [
      ...(v.consistency ? [`  ${v.vmId}: ${v.consistency.level}-consistent (${v.consistency.reason})`] : []),
      ...(v.fullReads ?? []).map((r) => `  ${v.vmId}/${r.diskId}: read whole, ${r.reason}`),
    ]),
    `  new         ${mib(t.bytesNew)} (not in the parent backup)`,
    `  uploaded    ${mib(t.bytesUploaded)} in ${t.uploadedChunks} chunks (${t.parentChunks} from parent, ${t.dedupedChunks} already in repository)`,
    `  stored      ${mib(t.bytesStored)} after compression and encryption`,
    `  dedup       ${ratio(dedup)} (non-zero data / uploaded)`,
    `  compression ${ratio(compression)} (uploaded / stored)`,
    `  duration    ${f.seconds.toFixed(1)} s, ${(t.bytesScanned / MiB / f.seconds).toFixed(1)} MiB/s scanned`,
  ];
}
