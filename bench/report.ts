/**
 * The bench's figures as tables and targets (bench/run.ts measures them): per image, each
 * figure's mean over the rounds with Lifeboat/restic beside it, then each target of issue
 * 18 on the means, each round's ratio in brackets.
 */
export type Phase = 'full' | 'incr' | 'restore';
export type Tool = 'lifeboat' | 'restic';

export interface Figures {
  wallSeconds: number;
  mbPerSecond: number;
  cpuSeconds: number | null;
  peakRssMiB: number | null;
  bytesStored: number | null;
  requests: number;
  objects?: number;
  note?: string;
}

/** One round on one image: each tool's figures per phase, and the machine's ceilings measured in the round. */
export interface Round {
  phases: Record<Phase, Partial<Record<Tool, Figures>>>;
  /** Bytes the Lifeboat restore wrote (its target's allocated bytes): what the write ceiling writes. */
  restoredBytes?: number;
  /** Seconds `dd` took to write `restoredBytes` and flush them (bench/ceilings.ts). */
  writeCeilingSeconds?: number;
}

const MiB = 1024 * 1024;
const METRICS: [keyof Figures, string, number][] = [
  ['wallSeconds', 'wall s', 1],
  ['mbPerSecond', 'MB/s', 0],
  ['cpuSeconds', 'CPU s', 1],
  ['peakRssMiB', 'peak RSS MiB', 0],
  ['bytesStored', 'stored MiB', 1],
  ['requests', 'requests', 0],
];

const mean = (xs: (number | null | undefined)[]): number | null | undefined =>
  xs.some((x) => x == null) ? xs.find((x) => x == null) : xs.reduce<number>((a, x) => a + x!, 0) / xs.length;
const fmt = (v: number | null | undefined, d = 1) => (v === null || v === undefined ? '-' : v.toFixed(d));
const ratio = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || b === 0 ? null : a / b);
const fig = (r: Round, ph: Phase, tool: Tool, k: keyof Figures) => r.phases[ph][tool]?.[k] as number | null | undefined;

/** Restore speed as a fraction of the write ceiling: the time dd took to write the same bytes, over the restore's time. */
export const ofWriteCeiling = (r: Round): number | null =>
  r.writeCeilingSeconds && r.phases.restore.lifeboat ? r.writeCeilingSeconds / r.phases.restore.lifeboat.wallSeconds : null;

/** The means over rounds of every figure, per phase and tool. */
export function means(rounds: readonly Round[]): Round['phases'] {
  const out = { full: {}, incr: {}, restore: {} } as Round['phases'];
  for (const ph of ['full', 'incr', 'restore'] as const) {
    for (const tool of ['lifeboat', 'restic'] as const) {
      if (!rounds.every((r) => r.phases[ph][tool])) continue;
      out[ph][tool] = Object.fromEntries(METRICS.map(([k]) => [k, mean(rounds.map((r) => fig(r, ph, tool, k)))])) as unknown as Figures;
    }
  }
  return out;
}

/** The table of means, one row per phase and figure. */
export function table(rounds: readonly Round[]): string {
  const m: Round = { phases: means(rounds) };
  const rows: string[][] = [['phase', 'figure', 'Lifeboat', 'restic', 'Lifeboat/restic']];
  for (const ph of ['full', 'incr', 'restore'] as const) {
    for (const [k, label, d] of METRICS) {
      if (ph === 'restore' && k === 'bytesStored') continue;
      const scale = k === 'bytesStored' ? 1 / MiB : 1;
      const l = fig(m, ph, 'lifeboat', k);
      const r = fig(m, ph, 'restic', k);
      rows.push([ph, label, fmt(l == null ? l : l * scale, d), fmt(r == null ? r : r * scale, d), fmt(ratio(l, r), 2)]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  return [line(rows[0]!), '|' + widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|', ...rows.slice(1).map(line)].join(
    '\n',
  );
}

export interface TargetResult {
  target: string;
  value: number | null;
  each: (number | null)[];
  met: boolean | null;
}

/** Issue 18's targets: each a ratio per round and on the means, and its bound. */
const TARGETS: { target: string; value: (r: Round) => number | null; ok: (v: number) => boolean }[] = [
  {
    target: 'full backup throughput >= 2x restic',
    value: (r) => ratio(fig(r, 'full', 'lifeboat', 'mbPerSecond'), fig(r, 'full', 'restic', 'mbPerSecond')),
    ok: (v) => v >= 2,
  },
  {
    target: 'incremental throughput >= 4x restic',
    value: (r) => ratio(fig(r, 'incr', 'lifeboat', 'mbPerSecond'), fig(r, 'incr', 'restic', 'mbPerSecond')),
    ok: (v) => v >= 4,
  },
  {
    target: 'restore throughput >= 1.3x restic',
    value: (r) => ratio(fig(r, 'restore', 'lifeboat', 'mbPerSecond'), fig(r, 'restore', 'restic', 'mbPerSecond')),
    ok: (v) => v >= 1.3,
  },
  { target: 'restore >= 80% of the write ceiling (dd of the bytes it wrote, conv=fsync)', value: ofWriteCeiling, ok: (v) => v >= 0.8 },
  {
    target: 'restore GET requests <= 1.5x restic',
    value: (r) => ratio(fig(r, 'restore', 'lifeboat', 'requests'), fig(r, 'restore', 'restic', 'requests')),
    ok: (v) => v <= 1.5,
  },
  {
    target: 'full bytes stored <= restic + 2%',
    value: (r) => ratio(fig(r, 'full', 'lifeboat', 'bytesStored'), fig(r, 'full', 'restic', 'bytesStored')),
    ok: (v) => v <= 1.02,
  },
  {
    target: 'incremental bytes stored <= half of restic',
    value: (r) => ratio(fig(r, 'incr', 'lifeboat', 'bytesStored'), fig(r, 'incr', 'restic', 'bytesStored')),
    ok: (v) => v <= 0.5,
  },
];

/** Each target on the means of the rounds (a ratio of means; the write ceiling: the mean of the rounds' fractions). */
export function targets(rounds: readonly Round[]): TargetResult[] {
  const m: Round = { phases: means(rounds), writeCeilingSeconds: mean(rounds.map((r) => r.writeCeilingSeconds)) ?? undefined };
  return TARGETS.map(({ target, value, ok }) => {
    const v = value(m);
    return { target, value: v, each: rounds.map(value), met: v === null ? null : ok(v) };
  });
}

export function targetLines(results: readonly TargetResult[]): string[] {
  return results.map(
    (x) => `  ${x.met === null ? 'n/a    ' : x.met ? 'met    ' : 'NOT met'}  ${x.target} (${fmt(x.value, 2)} [${x.each.map((v) => fmt(v, 2)).join(', ')}])`,
  );
}
