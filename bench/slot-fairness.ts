/**
 * Why a Backup run's VMs waited for their host slots, from the run's child executions'
 * own histories (`<data>/executions`): each VM's host and slot limit (its job's first
 * scope), when its child started (the Map's start order), when it entered and left
 * AcquireSlot, and when its ReleaseSlot ended. It tells apart:
 * - the queue's own order: per host, VMs served before one that queued earlier (FIFO
 *   inversions), waits that ran out and queued again (AcquireSlot retried), ReleaseSlots
 *   that failed (a serve cut short), and slot-seconds idle while the same host had waiters;
 * - the Maps' admission: slot-seconds idle on hosts with nobody waiting while other hosts
 *   had waiters (admission by host, each host's BackupVms Map running its slots' worth,
 *   should leave none), the longest run of one host's VMs in start order, and the spread of
 *   the hosts' mean waits.
 * Used by bench/fleet.ts (scale) and the fleet test.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalExecutions } from '../local/executions.ts';
import { isVmExecution, runRecords } from './fleet-usage.ts';

interface HistoryEvent {
  type: string;
  timestamp: number;
  state?: { name: string };
}

export interface VmSlotLife {
  host: string;
  limit: number;
  /** When its host's child execution started: from then the host's first `limit` VMs may hold its slots. */
  hostStarted: number;
  started: number;
  entered: number;
  granted: number;
  released: number;
  requeued: number;
  releaseFailed: boolean;
}

export interface SlotFairness {
  vms: number;
  /**
   * The slot wait: seconds from the moment a slot of its host was free for the VM (its host's
   * child started, for the host's first `limit` VMs in grant order; else the release that made
   * room for it) to the moment it held the slot. Counts the Map's gap between one VM's end and
   * the next one's start, and AcquireSlot (with WaitForSlot); not the time its host's earlier
   * VMs held the slots, which is the host's limit, not a wait.
   */
  eligibleWaits: { p50: number; p99: number; max: number; mean: number };
  /** Seconds from entering AcquireSlot to leaving it (or WaitForSlot): AcquireSlot's own latency, once its child has started. */
  waits: { p50: number; p99: number; max: number; mean: number };
  /** Pairs of one host's VMs served in the other order than they queued. */
  fifoInversions: number;
  /** AcquireSlot waits that ran out (5 minutes) and queued again. */
  requeues: number;
  /** ReleaseSlot states that failed (their serve of the line cut short; their slots may have stayed held). */
  releaseSlotFailures: number;
  /** Slot-seconds idle while the same host had VMs waiting, and on hosts nobody waited for while other hosts had waiters; both as a share of all slot-seconds. */
  idleWithOwnWaiters: { slotSeconds: number; share: number };
  idleWhileOthersWait: { slotSeconds: number; share: number };
  /**
   * VMs that entered AcquireSlot while every slot of their host was held by other VMs of the
   * run (they queued behind them), and the waits of the others: what the queue's own
   * round trips cost when a slot was free.
   */
  queuedBehindOthers: number;
  waitsWithSlotFree: { p50: number; p99: number; mean: number };
  /** The longest run of one host's VMs among consecutive child starts. */
  longestHostRun: number;
  /** The hosts' mean waits: the lowest and the highest. */
  hostMeanWait: { min: number; max: number };
  /**
   * The slot waits of each host's first `limit` VMs (started with their host, all hosts at
   * once: the run's start-up burst) and of the later ones (each started by a release).
   */
  byWave: { first: WaveWaits; later: WaveWaits };
  /** Where the first wave's slot waits went: see {@link firstWaveParts}. */
  firstWaveParts: WaveParts;
}

/**
 * The first wave's slot wait cut at its VM execution's start and its entering AcquireSlot,
 * mean seconds: the Map's start of the child (its host started → the child started), the
 * child's states before AcquireSlot (started → entered), and AcquireSlot itself (entered →
 * holding the slot).
 */
export interface WaveParts {
  childStart: number;
  beforeAcquire: number;
  acquire: number;
}

/** One wave's slot waits, in seconds. */
export interface WaveWaits {
  vms: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]! : 0;
};

async function lives(dataDir: string, executionArn: string): Promise<VmSlotLife[]> {
  const folder = join(dataDir, 'executions');
  const out: VmSlotLife[] = [];
  const records = await runRecords(dataDir, executionArn);
  const starts = new Map(records.map((r) => [r.executionArn, new Date(r.startDate).getTime()]));
  for (const r of records.filter(isVmExecution)) {
    const job = JSON.parse(r.input) as { host: string; slotScopes: { limit: number }[] };
    const base = LocalExecutions.fileBase(r);
    const events = (await readFile(join(folder, `${base}.history.jsonl`), 'utf8').catch(() => ''))
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as HistoryEvent);
    const at = (type: string, state: string, last = false) =>
      (last ? events.findLast : events.find).call(events, (e) => e.type === type && e.state?.name === state)?.timestamp;
    const entered = at('StateEntered', 'AcquireSlot');
    const granted = at('StateExited', 'WaitForSlot', true) ?? at('StateExited', 'AcquireSlot', true);
    if (entered === undefined || granted === undefined) continue;
    out.push({
      host: job.host,
      limit: job.slotScopes[0]?.limit ?? 1,
      hostStarted: starts.get(r.parentExecutionArn ?? '') ?? events[0]?.timestamp ?? entered,
      started: events[0]?.timestamp ?? entered,
      entered,
      granted,
      released: at('StateExited', 'ReleaseSlot', true) ?? at('StateEntered', 'ReleaseSlotAfterFailure', true) ?? events.at(-1)!.timestamp,
      requeued: events.filter((e) => e.type === 'StateRetried' && e.state?.name === 'WaitForSlot').length,
      releaseFailed: events.some((e) => e.type === 'StateFailed' && e.state?.name === 'ReleaseSlot'),
    });
  }
  return out;
}

/** Sweeps the hosts' waiters and holders over time: idle slot-seconds of the two kinds, and all slot-seconds. */
function idleSlots(vms: VmSlotLife[]) {
  const limits = new Map(vms.map((v) => [v.host, v.limit]));
  const changes = vms.flatMap((v) => [
    { t: v.entered, host: v.host, waiters: 1, holders: 0 },
    { t: v.granted, host: v.host, waiters: -1, holders: 1 },
    { t: Math.max(v.granted, v.released), host: v.host, waiters: 0, holders: -1 },
  ]);
  changes.sort((a, b) => a.t - b.t);
  const waiters = new Map<string, number>();
  const holders = new Map<string, number>();
  let own = 0;
  let elsewhere = 0;
  let total = 0;
  for (let i = 0; i < changes.length; i++) {
    const c = changes[i]!;
    waiters.set(c.host, (waiters.get(c.host) ?? 0) + c.waiters);
    holders.set(c.host, (holders.get(c.host) ?? 0) + c.holders);
    const dt = ((changes[i + 1]?.t ?? c.t) - c.t) / 1000;
    if (dt <= 0) continue;
    let idleOwn = 0;
    let idleFree = 0;
    let waiting = 0;
    for (const [h, limit] of limits) {
      const free = Math.max(0, limit - (holders.get(h) ?? 0));
      const w = waiters.get(h) ?? 0;
      idleOwn += Math.min(free, w);
      if (w === 0) idleFree += free;
      waiting += w;
      total += limit * dt;
    }
    own += idleOwn * dt;
    elsewhere += Math.min(idleFree, waiting) * dt;
  }
  return { own, elsewhere, total };
}

const stats = (xs: number[]) => ({
  p50: pct(xs, 0.5),
  p99: pct(xs, 0.99),
  max: Math.max(0, ...xs),
  mean: xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length),
});

/** Each VM's slot wait (see SlotFairness.eligibleWaits), in seconds. */
export function eligibleWaits(vms: VmSlotLife[]): number[] {
  const out: number[] = [];
  for (const line of Map.groupBy(vms, (v) => v.host).values()) {
    const releases = line.map((v) => Math.max(v.granted, v.released)).sort((a, b) => a - b);
    const served = [...line].sort((a, b) => a.granted - b.granted);
    for (const [i, v] of served.entries()) {
      const free = i < v.limit ? v.hostStarted : Math.max(v.hostStarted, releases[i - v.limit]!);
      out.push(Math.max(0, v.granted - free) / 1000);
    }
  }
  return out;
}

/** The host's first `limit` VMs in grant order: the run's start-up burst. */
function firstWave(vms: VmSlotLife[]): VmSlotLife[] {
  return [...Map.groupBy(vms, (v) => v.host).values()].flatMap((line) => [...line].sort((a, b) => a.granted - b.granted).slice(0, line[0]!.limit));
}

/** See {@link WaveParts}. */
export function firstWaveParts(vms: VmSlotLife[]): WaveParts {
  const first = firstWave(vms);
  const mean = (f: (v: VmSlotLife) => number) => first.reduce((s, v) => s + Math.max(0, f(v)), 0) / Math.max(1, first.length) / 1000;
  return { childStart: mean((v) => v.started - v.hostStarted), beforeAcquire: mean((v) => v.entered - v.started), acquire: mean((v) => v.granted - v.entered) };
}

/** Each VM's slot wait (see eligibleWaits), split into its host's first `limit` VMs in grant order and the rest. */
export function waitsByWave(vms: VmSlotLife[]): { first: number[]; later: number[] } {
  const first: number[] = [];
  const later: number[] = [];
  for (const line of Map.groupBy(vms, (v) => v.host).values()) {
    const limit = line[0]!.limit;
    for (const [i, w] of eligibleWaits(line).entries()) (i < limit ? first : later).push(w);
  }
  return { first, later };
}

export async function slotFairness(dataDir: string, executionArn: string): Promise<SlotFairness> {
  const vms = await lives(dataDir, executionArn);
  const waits = vms.map((v) => (v.granted - v.entered) / 1000);
  const byHost = Map.groupBy(vms, (v) => v.host);
  let inversions = 0;
  for (const line of byHost.values()) for (const a of line) for (const b of line) if (a.entered < b.entered && b.granted < a.granted) inversions++;
  const starts = [...vms].sort((a, b) => a.started - b.started);
  let run = 0;
  let longest = 0;
  for (const [i, v] of starts.entries()) {
    run = i > 0 && starts[i - 1]!.host === v.host ? run + 1 : 1;
    longest = Math.max(longest, run);
  }
  const hostMeans = [...byHost.values()].map((l) => l.reduce((s, v) => s + (v.granted - v.entered) / 1000, 0) / l.length);
  const idle = idleSlots(vms);
  const full = (v: VmSlotLife) => byHost.get(v.host)!.filter((o) => o !== v && o.granted <= v.entered && v.entered < o.released).length >= v.limit;
  const freeWaits = vms.filter((v) => !full(v)).map((v) => (v.granted - v.entered) / 1000);
  const share = (x: number) => ({ slotSeconds: Math.round(x), share: idle.total ? x / idle.total : 0 });
  return {
    vms: vms.length,
    eligibleWaits: stats(eligibleWaits(vms)),
    waits: stats(waits),
    fifoInversions: inversions,
    requeues: vms.reduce((s, v) => s + v.requeued, 0),
    releaseSlotFailures: vms.filter((v) => v.releaseFailed).length,
    idleWithOwnWaiters: share(idle.own),
    idleWhileOthersWait: share(idle.elsewhere),
    queuedBehindOthers: vms.length - freeWaits.length,
    waitsWithSlotFree: { p50: pct(freeWaits, 0.5), p99: pct(freeWaits, 0.99), mean: freeWaits.reduce((a, b) => a + b, 0) / Math.max(1, freeWaits.length) },
    longestHostRun: longest,
    hostMeanWait: { min: Math.min(...hostMeans), max: Math.max(...hostMeans) },
    byWave: byWave(waitsByWave(vms)),
    firstWaveParts: firstWaveParts(vms),
  };
}

function byWave(w: { first: number[]; later: number[] }): SlotFairness['byWave'] {
  return { first: { vms: w.first.length, ...stats(w.first) }, later: { vms: w.later.length, ...stats(w.later) } };
}

/** A wave's count and p50/p99/max and mean, in seconds. */
function wave(w: WaveWaits): string {
  const s = (x: number) => x.toFixed(1);
  return `${w.vms}: p50/p99/max ${s(w.p50)}/${s(w.p99)}/${s(w.max)} s, mean ${s(w.mean)} s`;
}

/** One line of figures, for a bench's or a test's output. */
export function formatSlotFairness(f: SlotFairness): string {
  const s = (x: number) => x.toFixed(1);
  const e = f.eligibleWaits;
  return (
    `slot wait (a slot free for it → holding it) p50/p99/max ${s(e.p50)}/${s(e.p99)}/${s(e.max)} s, mean ${s(e.mean)} s (p99/mean ${(e.p99 / Math.max(1e-9, e.mean)).toFixed(1)}); ` +
    `AcquireSlot entered → left p50/p99/max ${s(f.waits.p50)}/${s(f.waits.p99)}/${s(f.waits.max)} s, mean ${s(f.waits.mean)} s (p99/mean ${(f.waits.p99 / Math.max(1e-9, f.waits.mean)).toFixed(1)}); ` +
    `hosts' mean waits ${s(f.hostMeanWait.min)}..${s(f.hostMeanWait.max)} s; FIFO inversions ${f.fifoInversions}; waits re-queued ${f.requeues}; ReleaseSlot failures ${f.releaseSlotFailures}; ` +
    `slots idle with own waiters ${(100 * f.idleWithOwnWaiters.share).toFixed(1)}%, idle while other hosts wait ${(100 * f.idleWhileOthersWait.share).toFixed(1)}% of slot time; longest run of one host in start order ${f.longestHostRun}; ` +
    `VMs that queued behind others of their host ${f.queuedBehindOthers} of ${f.vms}, the others' waits (a slot was free: the queue's own latency) p50/p99 ${s(f.waitsWithSlotFree.p50)}/${s(f.waitsWithSlotFree.p99)} s, mean ${s(f.waitsWithSlotFree.mean)} s; ` +
    `slot wait of the hosts' first VMs (started with their host) ${wave(f.byWave.first)} ` +
    `(host started → VM's execution started ${s(f.firstWaveParts.childStart)} s, → AcquireSlot entered ${s(f.firstWaveParts.beforeAcquire)} s, → slot held ${s(f.firstWaveParts.acquire)} s); ` +
    `of the later ${wave(f.byWave.later)}`
  );
}
