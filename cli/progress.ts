/**
 * Live progress of a workflow the CLI started, drawn with cli-progress from the operator
 * API's views of the movers' progress objects (contracts/progress.ts), so it works the same
 * against the embedded and a deployed stack: a Backup run per VM and per disk
 * (`/api/runs/<run>`), a Restore or a DeepVerify per disk (`/api/progress/<execution>`):
 * bytes done of total, rate, ETA, phase. Other workflows show one status line. Bars go to
 * stderr, so stdout stays the result (and `--json` stays JSON).
 */
import cliProgress from 'cli-progress';
import type { DiskProgressRow, OperationProgressRow, RunRow } from '../contracts/operator.ts';
import { formatBytes, formatSeconds } from '../core/units.ts';
import type { StackClient } from './stack-client.ts';

export interface ProgressOptions {
  /** Draw bars even when stderr is not a terminal (a line per refresh), e.g. for logs. */
  force?: boolean;
  /** No progress at all (`--json`, `--quiet`). */
  off?: boolean;
}

// Not `total`, `eta`, `value`: cli-progress fills tokens of those names itself.
type Payload = { label: string; phase: string; doneText: string; totalText: string; rate: string; etaText: string };

/** Bars keyed by what they show, created as the things appear. */
class Bars {
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly multi: cliProgress.MultiBar;

  constructor(opts: ProgressOptions) {
    this.multi = new cliProgress.MultiBar(
      {
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
        autopadding: true,
        barsize: 24,
        format: '{label} [{bar}] {percentage}% {doneText}/{totalText} {rate} ETA {etaText} {phase}',
        noTTYOutput: !!opts.force,
        notTTYSchedule: 1000,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  set(key: string, done: number, total: number, payload: Payload): void {
    let b = this.bars.get(key);
    if (!b) this.bars.set(key, (b = this.multi.create(Math.max(1, total), 0, payload)));
    else b.setTotal(Math.max(1, total));
    b.update(done, payload);
  }

  /** A line for a whole (a VM, a restore): its bytes and phase, no rate. */
  whole(key: string, label: string, phase: string, done: number, total: number): void {
    this.set(key, done, total, { label, phase, doneText: formatBytes(done), totalText: formatBytes(total), rate: '', etaText: '-' });
  }

  /** A line per disk (or segment), under the whole it belongs to. */
  disks(prefix: string, disks: DiskProgressRow[]): void {
    for (const d of disks) {
      const seg = d.segment === null ? '' : `#${d.segment}`;
      this.set(`${prefix}/${d.diskId}${seg}`, d.bytesDone, d.bytesTotal, {
        label: `  ${d.diskId}${d.segment === null ? '' : ` seg ${d.segment}`}`,
        phase: d.phase,
        doneText: formatBytes(d.bytesDone),
        totalText: formatBytes(d.bytesTotal),
        rate: `${formatBytes(d.bytesPerSecond)}/s`,
        etaText: d.etaSeconds === null ? '-' : formatSeconds(d.etaSeconds),
      });
    }
  }

  stop(): void {
    this.multi.stop();
  }
}

/** How a workflow's progress is looked up and drawn; none for workflows without per-disk progress. */
interface Watch {
  path(executionName: string): string;
  draw(bars: Bars, view: unknown): void;
}

const WATCHES: Record<string, Watch> = {
  Backup: {
    path: (name) => `/api/runs/${encodeURIComponent(name)}`,
    draw: (bars, view) => {
      for (const vm of (view as RunRow).vms) {
        bars.whole(vm.vmId, vm.vmId, vm.phase, vm.phase === 'committed' ? vm.bytesTotal || 1 : vm.bytesDone, vm.bytesTotal);
        bars.disks(vm.vmId, vm.disks);
      }
    },
  },
  // A restore's and a verification's id is their execution's name.
  Restore: { path: (name) => `/api/progress/${encodeURIComponent(name)}`, draw: (bars, view) => drawOperation(bars, view as OperationProgressRow) },
  DeepVerify: { path: (name) => `/api/progress/${encodeURIComponent(name)}`, draw: (bars, view) => drawOperation(bars, view as OperationProgressRow) },
};

function drawOperation(bars: Bars, op: OperationProgressRow): void {
  const phase = op.disks.every((d) => d.phase === 'done')
    ? 'done'
    : op.disks.some((d) => d.phase === 'failed')
      ? 'failed'
      : op.operation === 'verify'
        ? 'read'
        : 'transfer';
  bars.whole(op.id, `${op.operation} ${op.vmId}`, phase, op.bytesDone, op.bytesTotal);
  bars.disks(op.id, op.disks);
}

/** Runs a workflow on the stack with live progress; returns what StackClient.runWorkflow returns. */
export async function runWithProgress(
  client: StackClient,
  workflow: string,
  input: Record<string, unknown>,
  opts: ProgressOptions & { status?: (line: string) => void },
) {
  const draw = !opts.off && (opts.force || process.stderr.isTTY);
  const watch = WATCHES[workflow];
  const bars = draw && watch ? new Bars(opts) : undefined;
  // Progress is for people: a failed read of it (not there yet: 404) never fails the run.
  const look = async (name: string) => {
    const view = await client.get<unknown>(watch!.path(name)).catch(() => undefined);
    if (view && bars) watch!.draw(bars, view);
  };
  try {
    const r = await client.runWorkflow(workflow, input, {
      onPoll: (name, seconds) => (bars ? look(name) : opts.off ? undefined : opts.status?.(`${workflow} running… ${Math.round(seconds)} s`)),
    });
    if (bars) await look(r.name); // the final state: every disk done (or failed)
    return r;
  } finally {
    bars?.stop();
  }
}
