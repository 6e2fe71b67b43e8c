/**
 * How long a backup may be kept, for Object Lock: the objects a retained backup references
 * are locked until its expiry (functions/gc/extend-locks.ts).
 *
 * GFS rules (gfs.ts, Proxmox semantics) stack: `daily: 7, weekly: 4` keeps 7 days and then
 * 4 further weeks. A rule counts periods that hold a backup, so with a backup only every
 * RPO a rule of n periods spans n RPOs when the RPO is the longer (`daily: 7` with a backup
 * every two days spans 14 days), and `keepLast: n` spans n RPOs (a day when the policy sets
 * none). A backup taken at `t` is gone at the latest by `t` plus the sum of the rules'
 * spans, plus one period of the longest rule (a backup taken at the start of its period
 * stays until the period's last backup is taken), as long as the policy keeps taking
 * backups. Months are counted as 31 days, years as 366, and an hour is added for a DST
 * change. An upper bound: a lock never ends while the retention still keeps the
 * backup, and ends at most a period after the retention let it go.
 */
import type { Retention } from '../../core/config.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Each calendar rule's period, at its longest (apart from a DST change). */
const PERIOD: Record<'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly', number> = {
  hourly: HOUR,
  daily: DAY,
  weekly: 7 * DAY,
  monthly: 31 * DAY,
  yearly: 366 * DAY,
};

/**
 * The longest a backup is kept after it was taken, in ms; undefined when the retention sets
 * no rule (everything is kept, with no end).
 */
export function retentionHorizonMs(retention: Retention | undefined, rpoHours?: number): number | undefined {
  let span = 0;
  let longest = 0;
  const interval = (rpoHours ?? 24) * HOUR;
  if ((retention?.keepLast ?? 0) > 0) {
    span += retention!.keepLast! * interval;
    longest = interval;
  }
  for (const rule of Object.keys(PERIOD) as (keyof typeof PERIOD)[]) {
    const n = retention?.[rule] ?? 0;
    if (n <= 0) continue;
    const period = Math.max(PERIOD[rule], interval);
    span += n * period;
    longest = Math.max(longest, period);
  }
  return span === 0 ? undefined : span + longest + HOUR;
}
