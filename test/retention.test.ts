/** GFS retention as Proxmox Backup Server defines it (functions/prune/gfs.ts). */
import { describe, expect, it } from 'vitest';
import { applyRetention, isoWeek, periodOf, type RetentionCandidate } from '../functions/prune/gfs.ts';
import { retentionHorizonMs } from '../functions/prune/expiry.ts';
import { lockTarget } from '../functions/gc/extend-locks.ts';

const at = (iso: string, id = iso): RetentionCandidate => ({ id, time: iso });
const kept = (d: ReturnType<typeof applyRetention>) => d.filter((x) => x.keep).map((x) => x.id);

/** One backup every `hours` from `start` backwards, `n` of them. */
function series(start: string, hours: number, n: number): RetentionCandidate[] {
  const t0 = new Date(start).getTime();
  return Array.from({ length: n }, (_, i) => at(new Date(t0 - i * hours * 3_600_000).toISOString()));
}

describe('ISO weeks', () => {
  it('puts the days around new year in the week of their Thursday', () => {
    expect(isoWeek(2026, 12, 28)).toEqual({ year: 2026, week: 53 }); // 2026 has 53 weeks (1 Jan 2026 is a Thursday)
    expect(isoWeek(2027, 1, 1)).toEqual({ year: 2026, week: 53 });
    expect(isoWeek(2027, 1, 3)).toEqual({ year: 2026, week: 53 });
    expect(isoWeek(2027, 1, 4)).toEqual({ year: 2027, week: 1 });
    expect(isoWeek(2024, 12, 30)).toEqual({ year: 2025, week: 1 });
    expect(isoWeek(2026, 11, 23)).toEqual({ year: 2026, week: 48 });
  });
});

describe('applyRetention', () => {
  it('keeps the n newest with keep-last, in any input order', () => {
    const list = series('2026-11-20T12:00:00Z', 1, 5);
    const d = applyRetention([...list].reverse(), { keepLast: 3 });
    expect(d.map((x) => x.id)).toEqual(list.map((x) => x.id)); // newest first
    expect(kept(d)).toEqual(list.slice(0, 3).map((x) => x.id));
    expect(d[0]!.reason).toBe('keep-last (1 of 3)');
    expect(d[4]).toMatchObject({ keep: false, reason: 'older than what the rules keep (keep-last 3)' });
  });

  it('keeps the newest backup of each of the n newest days, and says which newer one covers the others', () => {
    // Every 6 hours for 10 days: 4 backups a day.
    const list = series('2026-11-20T18:00:00Z', 6, 40);
    const d = applyRetention(list, { daily: 7 });
    expect(kept(d)).toEqual(['20', '19', '18', '17', '16', '15', '14'].map((day) => `2026-11-${day}T18:00:00.000Z`));
    expect(d.find((x) => x.id === '2026-11-20T12:00:00.000Z')!.reason).toBe('daily: 2026/11/20 is kept by the newer backup 2026-11-20T18:00:00.000Z');
    expect(d.find((x) => x.id === '2026-11-20T18:00:00.000Z')!.reason).toBe('daily 2026/11/20 (1 of 7)');
    expect(d.find((x) => x.id === '2026-11-13T18:00:00.000Z')!.reason).toBe('older than what the rules keep (daily 7)');
  });

  it('does not count a period an earlier rule already covers (PBS), so daily reaches further back than restic would', () => {
    const list = [
      at('2026-11-03T12:00:00Z', 'd3-12'),
      at('2026-11-03T08:00:00Z', 'd3-08'),
      at('2026-11-02T20:00:00Z', 'd2-20'),
      at('2026-11-02T10:00:00Z', 'd2-10'),
      at('2026-11-01T09:00:00Z', 'd1-09'),
    ];
    const d = applyRetention(list, { keepLast: 1, daily: 2 });
    expect(kept(d)).toEqual(['d3-12', 'd2-20', 'd1-09']);
    expect(d.find((x) => x.id === 'd2-10')!.reason).toContain('kept by the newer backup d2-20');
    expect(d.find((x) => x.id === 'd1-09')!.reason).toBe('daily 2026/11/01 (2 of 2)');
  });

  it('combines daily, weekly, monthly and yearly over three years of nightly backups', () => {
    const list = series('2026-11-23T01:30:00Z', 24, 3 * 365);
    const d = applyRetention(list, { daily: 7, weekly: 4, monthly: 12, yearly: 3 });
    const k = kept(d);
    // 7 days, 4 further weeks, 12 further months (Sep 2026 back to Oct 2025), then the
    // further years: 2026 and 2025 are covered already, so only 2024 and 2023 are left.
    expect(k).toHaveLength(7 + 4 + 12 + 2);
    expect(k.slice(0, 7)).toEqual(list.slice(0, 7).map((x) => x.id));
    // The weeks after the 7 days: the newest backup (Sunday) of each earlier ISO week.
    expect(k.slice(7, 11).map((id) => new Date(id).getUTCDay())).toEqual([0, 0, 0, 0]);
    const weeks = k.slice(7, 11).map((id) => periodOf('weekly', new Date(id), 'UTC', id));
    expect(new Set(weeks).size).toBe(4);
    // Months: last day of each month, none in a month a weekly/daily keeper already covers.
    const months = k.slice(11, 23).map((id) => id.slice(0, 7));
    expect(new Set(months).size).toBe(12);
    for (const id of k.slice(11, 23)) expect(new Date(new Date(id).getTime() + 86_400_000).getUTCDate()).toBe(1);
    expect(months[0]).toBe('2026-09');
    expect(months[11]).toBe('2025-10');
    // Years: the last backup of 2024, and of 2023 (the oldest, partial year).
    expect(k.slice(23).map((id) => id.slice(0, 10))).toEqual(['2024-12-31', '2023-12-31']);
  });

  it("puts a backup in the day of the policy's time zone", () => {
    const list = [at('2026-11-20T23:30:00Z', 'late'), at('2026-11-20T22:30:00Z', 'earlier')];
    // 00:30 and 23:30 in Berlin are different days; in UTC the same day.
    expect(kept(applyRetention(list, { daily: 5 }, { timeZone: 'Europe/Berlin' }))).toEqual(['late', 'earlier']);
    expect(kept(applyRetention(list, { daily: 5 }, { timeZone: 'UTC' }))).toEqual(['late']);
  });

  it('treats the repeated local hour at the end of daylight saving time as one hour, as local-time periods do', () => {
    // 2026-10-25 in Berlin: 02:30 CEST (00:30Z) and 02:30 CET (01:30Z).
    const list = [at('2026-10-25T01:30:00Z', 'cet'), at('2026-10-25T00:30:00Z', 'cest')];
    const d = applyRetention(list, { hourly: 5 }, { timeZone: 'Europe/Berlin' });
    expect(kept(d)).toEqual(['cet']);
    expect(d[1]!.reason).toBe('hourly: 2026/10/25/02 is kept by the newer backup cet');
  });

  it('keeps one backup for the ISO week that spans new year, and two for the two years', () => {
    const list = [at('2027-01-01T10:00:00Z', 'fri'), at('2026-12-31T10:00:00Z', 'thu')];
    expect(kept(applyRetention(list, { weekly: 5 }))).toEqual(['fri']);
    expect(kept(applyRetention(list, { yearly: 5 }))).toEqual(['fri', 'thu']);
  });

  it('keeps everything when no rule is set', () => {
    const d = applyRetention(series('2026-11-20T00:00:00Z', 1, 3), {} as never);
    expect(d.every((x) => x.keep && x.reason.includes('no retention rule'))).toBe(true);
  });

  it('rejects bad rules and bad candidates with messages naming them', () => {
    expect(() => applyRetention([], { daily: -1 })).toThrow('retention.daily must be a whole number ≥ 0, got -1');
    expect(() => applyRetention([], { daily: 1.5 })).toThrow('retention.daily');
    expect(() => applyRetention([], { fortnightly: 2 } as never)).toThrow("unknown key 'fortnightly'");
    expect(() => applyRetention([at('nonsense', 'b1')], { daily: 1 })).toThrow("backup 'b1' has an invalid time");
    expect(() => applyRetention([at('2026-01-01T00:00:00Z', 'x'), at('2026-01-02T00:00:00Z', 'x')], { daily: 1 })).toThrow("backup 'x' is listed twice");
  });

  it('holds its invariants on random histories (property test)', () => {
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 300; round++) {
      const n = Math.floor(rnd() * 60);
      const base = Date.UTC(2026, 10, 23);
      const list = Array.from({ length: n }, (_, i) => at(new Date(base - Math.floor(rnd() * 400 * 86_400_000)).toISOString(), `b${i}`));
      const r = {
        keepLast: Math.floor(rnd() * 3),
        hourly: Math.floor(rnd() * 3),
        daily: Math.floor(rnd() * 8),
        weekly: Math.floor(rnd() * 5),
        monthly: Math.floor(rnd() * 13),
        yearly: Math.floor(rnd() * 3),
      };
      const total = Object.values(r).reduce((a, b) => a + b, 0);
      const d = applyRetention(list, r, { timeZone: 'America/New_York' });
      expect(d).toHaveLength(n);
      expect(new Set(d.map((x) => x.id)).size).toBe(n);
      const k = d.filter((x) => x.keep);
      if (total === 0) expect(k).toHaveLength(n);
      else {
        expect(k.length).toBeLessThanOrEqual(total);
        if (n > 0) expect(d[0]!.keep, 'the newest backup is always kept').toBe(true);
      }
      // Same decisions whatever the input order.
      expect(applyRetention([...list].reverse(), r, { timeZone: 'America/New_York' })).toEqual(d);
      // Each rule keeps at most one backup per period.
      for (const rule of ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
        const periods = k.filter((x) => x.reason.startsWith(`${rule} `)).map((x) => periodOf(rule, new Date(x.time), 'America/New_York', x.id));
        expect(new Set(periods).size).toBe(periods.length);
        expect(periods.length).toBeLessThanOrEqual(r[rule]);
      }
    }
  });
});

describe('how long a backup may be kept (Object Lock targets)', () => {
  const H = 3_600_000;
  const D = 24 * H;

  it('adds up the stacked rules, one period of the longest, and an hour for DST', () => {
    expect(retentionHorizonMs({ daily: 90 })).toBe(91 * D + H);
    expect(retentionHorizonMs({ daily: 7, weekly: 4 })).toBe(7 * D + 28 * D + 7 * D + H);
    expect(retentionHorizonMs({ keepLast: 3 }, 26)).toBe(4 * 26 * H + H);
    // A rule counts periods that hold a backup: with one every two days, 7 daily periods span 14 days.
    expect(retentionHorizonMs({ daily: 7 }, 48)).toBe(8 * 48 * H + H);
    expect(retentionHorizonMs({})).toBeUndefined();
    expect(retentionHorizonMs(undefined)).toBeUndefined();
  });

  it('is never shorter than the time a daily prune keeps a backup taken every day or every other day, and not much longer', () => {
    const cases = [
      [{ daily: 7, weekly: 4 }, 1, 7],
      [{ keepLast: 3, daily: 5, monthly: 2 }, 1, 31],
      [{ hourly: 24, daily: 14 }, 1, 1],
      [{ daily: 7 }, 2, 2],
      [{ daily: 90 }, 1, 1],
    ] as const;
    for (const [retention, every, longest] of cases) {
      const horizon = retentionHorizonMs(retention, every * 24)!;
      const t0 = Date.parse('2026-01-01T01:30:00Z');
      let kept: RetentionCandidate[] = [];
      const lastKept = new Map<string, number>();
      for (let day = 0; day < 200; day++) {
        const now = t0 + day * D;
        if (day % every === 0) kept.push({ id: `b${day}`, time: new Date(now).toISOString() });
        const decisions = applyRetention(kept, retention, { timeZone: 'Europe/Berlin' });
        for (const d of decisions) if (d.keep) lastKept.set(d.id, now);
        kept = kept.filter((c) => decisions.find((d) => d.id === c.id)!.keep);
      }
      const ages = [...lastKept].filter(([id]) => Number(id.slice(1)) < 100).map(([id, at]) => at - (t0 + Number(id.slice(1)) * D));
      expect(Math.max(...ages), JSON.stringify(retention)).toBeLessThanOrEqual(horizon);
      expect(Math.max(...ages), JSON.stringify(retention)).toBeGreaterThan(horizon - 2 * longest * D - D);
    }
  });

  it('locks a retained backup until its expiry, or for the default period from now once that is past', () => {
    const now = new Date('2026-06-01T00:00:00Z');
    const policy = { retention: { daily: 90 }, rpoHours: 24 };
    expect(lockTarget({ startedAt: '2026-05-01T00:00:00Z' }, policy, 30, now)).toEqual({
      need: Date.parse('2026-05-01T00:00:00Z') + 91 * D + H,
      set: Date.parse('2026-05-01T00:00:00Z') + 91 * D + H,
      unbounded: false,
    });
    // The default period is longer than the retention: it counts from the backup.
    expect(lockTarget({ startedAt: '2026-05-31T00:00:00Z' }, { retention: { daily: 3 } }, 30, now).need).toBe(Date.parse('2026-05-31T00:00:00Z') + 30 * D);
    // Kept past its expiry (no backups since), or with no rule at all: the default from now, a week more set.
    expect(lockTarget({ startedAt: '2025-01-01T00:00:00Z' }, policy, 30, now)).toEqual({
      need: now.getTime() + 30 * D,
      set: now.getTime() + 37 * D,
      unbounded: true,
    });
    expect(lockTarget({ startedAt: '2026-05-31T00:00:00Z' }, { retention: {} }, 30, now).unbounded).toBe(true);
  });
});
