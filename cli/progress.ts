/**
 * Live progress of a workflow the CLI started. A Backup run is drawn per VM and per disk
 * (bytes done of total, rate, ETA, phase) with cli-progress, from the operator API's view
 * of the run (`/api/runs/<run>`: the movers' progress objects, contracts/progress.ts), so it
 * works the same against the embedded and a deployed stack. Other workflows show one
 * status line. Bars go to stderr, so stdout stays the result (and `--json` stays JSON).
 */
import cliProgress from 'cli-progress';
import { formatBytes, formatSeconds } from '../core/units.ts';
import type { StackClient } from './stack-client.ts';

export interface ProgressOptions {
  /** Draw bars even when stderr is not a terminal (a line per refresh), e.g. for logs. */
  force?: boolean;
  /** No progress at all (`--json`, `--quiet`). */
  off?: boolean;
}

interface DiskView { diskId: string; segment: number | null; phase: string; bytesDone: number; bytesTotal: number; bytesPerSecond: number; etaSeconds: number | null }
interface RunView { status: string; vms: { vmId: string; phase: string; bytesDone: number; bytesTotal: number; disks: DiskView[] }[] }

// Not `total`, `eta`, `value`: cli-progress fills tokens of those names itself.
type Payload = { label: string; phase: string; doneText: string; totalText: string; rate: string; etaText: string };

/** Draws a Backup run's VMs and disks; `update` is called at every poll. */
export class BackupProgress {
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly multi: cliProgress.MultiBar;

  constructor(opts: ProgressOptions) {
    this.multi = new cliProgress.MultiBar({
      stream: process.stderr, hideCursor: true, clearOnComplete: false, autopadding: true, barsize: 24,
      format: '{label} [{bar}] {percentage}% {doneText}/{totalText} {rate} ETA {etaText} {phase}',
      noTTYOutput: !!opts.force, notTTYSchedule: 1000, fps: 5,
    }, cliProgress.Presets.shades_classic);
  }

  private bar(key: string, total: number, payload: Payload): void {
    const b = this.bars.get(key);
    if (!b) this.bars.set(key, this.multi.create(Math.max(1, total), 0, payload));
    else b.setTotal(Math.max(1, total));
  }

  update(run: RunView): void {
    for (const vm of run.vms) {
      const vmPayload: Payload = { label: vm.vmId, phase: vm.phase, doneText: formatBytes(vm.bytesDone), totalText: formatBytes(vm.bytesTotal), rate: '', etaText: '-' };
      this.bar(vm.vmId, vm.bytesTotal, vmPayload);
      this.bars.get(vm.vmId)!.update(vm.phase === 'committed' ? vm.bytesTotal || 1 : vm.bytesDone, vmPayload);
      for (const d of vm.disks) {
        const key = `${vm.vmId}/${d.diskId}${d.segment === null ? '' : `#${d.segment}`}`;
        const p: Payload = {
          label: `  ${d.diskId}${d.segment === null ? '' : ` seg ${d.segment}`}`, phase: d.phase, doneText: formatBytes(d.bytesDone), totalText: formatBytes(d.bytesTotal),
          rate: `${formatBytes(d.bytesPerSecond)}/s`, etaText: d.etaSeconds === null ? '-' : formatSeconds(d.etaSeconds),
        };
        this.bar(key, d.bytesTotal, p);
        this.bars.get(key)!.update(d.bytesDone, p);
      }
    }
  }

  stop(): void {
    this.multi.stop();
  }
}

/** Runs a workflow on the stack with live progress; returns what StackClient.runWorkflow returns. */
export async function runWithProgress(client: StackClient, workflow: string, input: Record<string, unknown>, opts: ProgressOptions & { status?: (line: string) => void }) {
  const draw = !opts.off && (opts.force || process.stderr.isTTY);
  const bars = draw && workflow === 'Backup' ? new BackupProgress(opts) : undefined;
  // Progress is for people: a failed read of it never fails the run.
  const look = async (name: string) => {
    const run = await client.get<RunView>(`/api/runs/${encodeURIComponent(name)}`).catch(() => undefined);
    if (run) bars?.update(run);
  };
  try {
    const r = await client.runWorkflow(workflow, input, {
      onPoll: (name, seconds) => (bars ? look(name) : opts.off ? undefined : opts.status?.(`${workflow} running… ${Math.round(seconds)} s`)),
    });
    if (bars) await look(r.name); // the final state: every disk done, every VM committed or failed
    return r;
  } finally {
    bars?.stop();
  }
}
