/**
 * The configuration's field schemas shared by its parts (config-schema.ts): ids, counts,
 * schedules (EventBridge Scheduler expressions, IANA time zones), storage endpoints, VM
 * name patterns and tags. Each message names what a good value looks like.
 */
import { z } from 'zod';

/** Ids end up in resource names, catalog keys and Activity names: keep them plain. */
export const id = z.string().regex(/^[a-z0-9][a-z0-9-]{0,38}$/, 'must be 1–39 lowercase letters, digits or dashes, starting with a letter or digit');
export const count = (max: number) => z.number().int('must be a whole number').min(1, 'must be at least 1').max(max, `must be at most ${max}`);
export const keep = z.number().int('must be a whole number').min(0, 'must not be negative').max(100_000, 'must be at most 100000').optional();

const CRON_FIELDS = 6;
/**
 * EventBridge Scheduler expressions: `cron(min hour day-of-month month day-of-week year)`
 * with one of the two day fields `?`, `rate(n unit)`, or a one-off `at(...)`.
 */
export function scheduleExpressionProblem(expr: string): string | undefined {
  const cron = /^cron\((.*)\)$/.exec(expr);
  if (cron) {
    const fields = cron[1]!.trim().split(/\s+/);
    if (fields.length !== CRON_FIELDS) return `cron() needs ${CRON_FIELDS} fields (minutes hours day-of-month month day-of-week year), found ${fields.length}`;
    const [min, hour, dom, , dow] = fields as [string, string, string, string, string, string];
    if ((dom === '?') === (dow === '?')) return 'cron(): exactly one of day-of-month and day-of-week must be "?"';
    if (!/^[\d*,/-]+$/.test(min) || !/^[\d*,/-]+$/.test(hour)) return 'cron(): minutes and hours take digits, "*", ",", "-" and "/" only';
    return undefined;
  }
  const rate = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(expr);
  if (rate) {
    const n = Number(rate[1]);
    if (n < 1) return 'rate(): the value must be at least 1';
    if ((n === 1) !== !rate[2]!.endsWith('s')) return `rate(): write "${n} ${n === 1 ? rate[2]!.replace(/s$/, '') : `${rate[2]!.replace(/s$/, '')}s`}"`;
    return undefined;
  }
  if (/^at\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\)$/.test(expr)) return undefined;
  return 'must be cron(min hour dom month dow year), rate(n minutes|hours|days) or at(yyyy-mm-ddThh:mm:ss)';
}

export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** An S3-compatible endpoint's settings (contracts/endpoints.ts); no credentials: each mover and function has its own. */
export const storageEndpoint = z
  .object({
    url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL of an S3-compatible endpoint' }).optional(),
    region: z
      .string()
      .regex(/^[a-z0-9-]{2,32}$/, 'must be a region name such as "eu-central-1" (lowercase letters, digits and dashes)')
      .optional(),
    pathStyle: z.boolean({ error: 'must be true or false' }).optional(),
    checksums: z.enum(['when-required', 'when-supported'], { error: 'must be "when-required" or "when-supported"' }).optional(),
  })
  .strict()
  .refine((e) => e.url !== undefined || e.region !== undefined, 'must give "url" (an S3-compatible endpoint) or "region" (AWS S3 in another region)');

export const schedule = z
  .object({
    expression: z.string().superRefine((s, ctx) => {
      const problem = scheduleExpressionProblem(s);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    timeZone: z.string().refine(isTimeZone, 'must be an IANA time zone such as "Europe/Berlin" or "UTC"'),
  })
  .strict();

/** A VM name pattern: a domain name with `*` (any run of characters) and `?` (one character). */
export const namePattern = z
  .string()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters')
  .regex(/^[^\s/\\[\]{}]*$/, 'must be a VM name pattern: no spaces, slashes or brackets; "*" matches any run of characters, "?" one character (e.g. "web-*")');
/** A tag as libvirt metadata carries them (`<lifeboat:tags>a,b</lifeboat:tags>`). */
export const tag = z.string().regex(/^[^\s,]{1,64}$/, 'must be a tag of 1–64 characters without spaces or commas');
