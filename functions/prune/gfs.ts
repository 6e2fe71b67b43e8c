/**
 * Grandfather-father-son retention, as Proxmox Backup Server defines it
 * (`compute_prune_info`): backups newest first; `keepLast` keeps the n newest; then, in
 * the order hourly, daily, weekly, monthly, yearly, each rule keeps the newest backup of
 * each of its n newest periods. A period that an earlier rule already covers (it holds a
 * kept backup) does not count against the rule and is skipped, so `daily: 7, weekly: 4`
 * keeps 7 days and then 4 *further* weeks. A backup that a rule passes over because a
 * newer one of the same period was kept is removed; so is every backup no rule selects.
 * Periods are calendar periods in the policy's time zone; weeks are ISO 8601 weeks
 * (Monday first, week-year `%G/%V`). With no rule set, everything is kept.
 *
 * restic's `forget` differs in one point: there a backup kept by one rule still counts
 * for the others (`daily: 7, weekly: 4` spans 4 weeks, not 7 days + 4 weeks).
 */
import type { Retention } from '../../core/config.ts';

export interface RetentionCandidate {
  id: string;
  /** When the backup was taken (ISO 8601 or Date). */
  time: string | Date;
}

export interface RetentionDecision {
  id: string;
  time: string;
  keep: boolean;
  /** Why: the rule and period that kept it, or what made it go. */
  reason: string;
}

type Rule = 'keepLast' | 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';
const RULES: Rule[] = ['keepLast', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'];

/** Checks a retention: whole, non-negative numbers and no unknown keys. */
export function retentionProblem(r: unknown): string | undefined {
  if (!r || typeof r !== 'object' || Array.isArray(r)) return `retention must be an object with ${RULES.join(', ')}`;
  for (const [k, v] of Object.entries(r)) {
    if (!RULES.includes(k as Rule)) return `retention has unknown key '${k}'; known: ${RULES.join(', ')}`;
    if (v !== undefined && (!Number.isInteger(v) || (v as number) < 0)) return `retention.${k} must be a whole number ≥ 0, got ${JSON.stringify(v)}`;
  }
  return undefined;
}

interface LocalParts {
  year: number;
  month: number;
  day: number;
  hour: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();
function localParts(t: Date, timeZone: string): LocalParts {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  const p = Object.fromEntries(f.formatToParts(t).map((x) => [x.type, x.value]));
  return { year: Number(p.year), month: Number(p.month), day: Number(p.day), hour: Number(p.hour) };
}

/** ISO 8601 week-year and week of a calendar date. */
export function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const d = new Date(Date.UTC(year, month - 1, day));
  const dow = (d.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  d.setUTCDate(d.getUTCDate() - dow + 3); // the Thursday of this week decides the year
  const weekYear = d.getUTCFullYear();
  const firstThursday = new Date(Date.UTC(weekYear, 0, 4));
  firstThursday.setUTCDate(firstThursday.getUTCDate() - ((firstThursday.getUTCDay() + 6) % 7) + 3);
  return { year: weekYear, week: 1 + Math.round((d.getTime() - firstThursday.getTime()) / (7 * 86_400_000)) };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** The period a backup falls in for a rule, as PBS writes it (`%Y/%m/%d/%H`, `%G/%V`, ...). */
export function periodOf(rule: Rule, t: Date, timeZone: string, id: string): string {
  if (rule === 'keepLast') return id;
  const p = localParts(t, timeZone);
  switch (rule) {
    case 'hourly':
      return `${p.year}/${pad(p.month)}/${pad(p.day)}/${pad(p.hour)}`;
    case 'daily':
      return `${p.year}/${pad(p.month)}/${pad(p.day)}`;
    case 'weekly': {
      const w = isoWeek(p.year, p.month, p.day);
      return `${w.year}/W${pad(w.week)}`;
    }
    case 'monthly':
      return `${p.year}/${pad(p.month)}`;
    case 'yearly':
      return `${p.year}`;
  }
}

const ruleName = (r: Rule) => (r === 'keepLast' ? 'keep-last' : r);

/**
 * Decides, for every candidate, keep or remove and why. Pure: the same candidates (in any
 * order) and rules give the same decisions, newest first.
 */
export function applyRetention(candidates: readonly RetentionCandidate[], retention: Retention, opts: { timeZone?: string } = {}): RetentionDecision[] {
  const problem = retentionProblem(retention);
  if (problem) throw new Error(problem);
  const timeZone = opts.timeZone ?? 'UTC';
  const list = candidates.map((c) => {
    const t = c.time instanceof Date ? c.time : new Date(c.time);
    if (Number.isNaN(t.getTime())) throw new Error(`backup '${c.id}' has an invalid time ${JSON.stringify(c.time)}`);
    return { id: c.id, t };
  });
  const ids = new Set<string>();
  for (const c of list) {
    if (ids.has(c.id)) throw new Error(`backup '${c.id}' is listed twice`);
    ids.add(c.id);
  }
  list.sort((a, b) => b.t.getTime() - a.t.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));

  const decided = new Map<string, { keep: boolean; reason: string }>();
  const active = RULES.filter((r) => (retention[r] ?? 0) > 0);
  if (active.length === 0) {
    return list.map((c) => ({ id: c.id, time: c.t.toISOString(), keep: true, reason: 'no retention rule is set: everything is kept' }));
  }

  for (const rule of active) {
    const limit = retention[rule]!;
    const periodOfKept = new Map<string, string>(); // periods covered by backups earlier rules kept
    for (const c of list) if (decided.get(c.id)?.keep) periodOfKept.set(periodOf(rule, c.t, timeZone, c.id), c.id);
    const selected = new Map<string, string>(); // period → the backup this rule kept for it
    for (const c of list) {
      if (decided.has(c.id)) continue;
      const period = periodOf(rule, c.t, timeZone, c.id);
      if (periodOfKept.has(period)) continue; // covered already; does not count, and a later rule may still decide
      const keeper = selected.get(period);
      if (keeper === undefined) {
        if (selected.size >= limit) break;
        selected.set(period, c.id);
        decided.set(c.id, {
          keep: true,
          reason: rule === 'keepLast' ? `keep-last (${selected.size} of ${limit})` : `${ruleName(rule)} ${period} (${selected.size} of ${limit})`,
        });
      } else {
        decided.set(c.id, { keep: false, reason: `${ruleName(rule)}: ${period} is kept by the newer backup ${keeper}` });
      }
    }
  }

  const summary = active.map((r) => `${ruleName(r)} ${retention[r]}`).join(', ');
  return list.map((c) => {
    const d = decided.get(c.id) ?? { keep: false, reason: `older than what the rules keep (${summary})` };
    return { id: c.id, time: c.t.toISOString(), ...d };
  });
}
