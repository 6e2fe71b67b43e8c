/**
 * Deployment configuration: sites, mover groups, hypervisor hosts, repositories and
 * protection policies. One file (`lifeboat.config.json` by default) is read by the CDK
 * app at synth time and by the embedded stack at start, so both run the same setup.
 *
 * Validation happens once, here, before anything is built: a bad value fails with a
 * message naming the key path and the value, and every problem is listed, not just the
 * first.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { libvirtExports } from '../contracts/libvirt-exports.ts';
import { restoreTestSettings } from '../contracts/restore-test.ts';
import { failoverPlan, networkMap, replicaVmSettings } from '../contracts/dr.ts';

/** Host configuration backups kept per host when the configuration says nothing (`hostConfigBackup.keep`). */
export const DEFAULT_HOST_CONFIG_KEEP = 14;

/** Ids end up in resource names, catalog keys and Activity names: keep them plain. */
const id = z.string().regex(/^[a-z0-9][a-z0-9-]{0,38}$/, 'must be 1–39 lowercase letters, digits or dashes, starting with a letter or digit');
const count = (max: number) => z.number().int('must be a whole number').min(1, 'must be at least 1').max(max, `must be at most ${max}`);
const keep = z.number().int('must be a whole number').min(0, 'must not be negative').max(100_000, 'must be at most 100000').optional();

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

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** An S3-compatible endpoint's settings (contracts/endpoints.ts); no credentials: each mover and function has its own. */
const storageEndpoint = z
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

const schedule = z
  .object({
    expression: z.string().superRefine((s, ctx) => {
      const problem = scheduleExpressionProblem(s);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    timeZone: z.string().refine(isTimeZone, 'must be an IANA time zone such as "Europe/Berlin" or "UTC"'),
  })
  .strict();

/** A VM name pattern: a domain name with `*` (any run of characters) and `?` (one character). */
const namePattern = z
  .string()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters')
  .regex(/^[^\s/\\[\]{}]*$/, 'must be a VM name pattern: no spaces, slashes or brackets; "*" matches any run of characters, "?" one character (e.g. "web-*")');
/** A tag as libvirt metadata carries them (`<lifeboat:tags>a,b</lifeboat:tags>`). */
const tag = z.string().regex(/^[^\s,]{1,64}$/, 'must be a tag of 1–64 characters without spaces or commas');

const retention = z
  .object({
    keepLast: keep,
    hourly: keep,
    daily: keep,
    weekly: keep,
    monthly: keep,
    yearly: keep,
  })
  .strict()
  .refine(
    (r) => Object.values(r).some((n) => (n ?? 0) > 0),
    'must keep something: set at least one of keepLast, hourly, daily, weekly, monthly, yearly above 0',
  );

const policy = z
  .object({
    id,
    vms: z
      .object({
        ids: z.array(z.string().min(1)).optional(),
        hosts: z.array(id).optional(),
        /** Name patterns (`*` any run of characters, `?` one): VMs of the policy's hosts (every host without `hosts`) whose name matches any. */
        names: z.array(namePattern).optional(),
        /** Tags (libvirt metadata `<lifeboat:tags>`): VMs carrying any of them (and matching `names`, if given). */
        tags: z.array(tag).optional(),
      })
      .strict()
      .refine((v) => [v.ids, v.hosts, v.names, v.tags].some((a) => (a?.length ?? 0) > 0), 'must select VMs: give "ids", "hosts", "names" or "tags"'),
    schedule,
    retention,
    repository: id,
    replicateTo: id.optional(),
    rpoHours: z
      .number()
      .positive('must be above 0')
      .max(24 * 366, 'must be at most a year'),
    /**
     * With `replicateTo`: the oldest the newest verified DR copy of any VM may be, in hours,
     * before the DR alarm fires (default: drRpoHoursOf, twice `rpoHours`: the copy follows each backup).
     */
    drRpoHours: z
      .number()
      .positive('must be above 0')
      .max(24 * 366, 'must be at most a year')
      .optional(),
    perHostConcurrency: count(64).optional(),
    /**
     * Commands run inside each guest through its agent around the freeze (libvirt VMs with
     * the QEMU guest agent): `pre` before the file systems are frozen, `post` after they
     * are thawed, each an argv.
     */
    quiesce: z
      .object({
        pre: z.array(z.string().min(1)).min(1, 'must name the program to run').optional(),
        post: z.array(z.string().min(1)).min(1, 'must name the program to run').optional(),
        hookTimeoutSeconds: z.number().int('must be a whole number').min(1, 'must be at least 1').max(3600, 'must be at most 3600').optional(),
        onHookFailure: z.enum(['fail', 'continue'], { error: 'must be "fail" (the VM\'s backup fails) or "continue" (taken crash-consistent)' }).optional(),
      })
      .strict()
      .optional(),
    /** Disks larger than this many GiB are transferred in segments by several movers of the group at once. */
    segmentSizeGiB: z.number().min(1, 'must be at least 1').max(16_384, 'must be at most 16384').optional(),
    /**
     * Restore tests at the scheduled deep verification (libvirt VMs): `{ enabled, bootCheck:
     * { serial?, agent? }, timeoutSeconds?, everyDays? }` (contracts/restore-test.ts).
     */
    restoreTest: restoreTestSettings.optional(),
  })
  .strict();

const configSchema = z
  .object({
    sites: z
      .array(
        z
          .object({
            id,
            description: z.string().optional(),
            /** Production network → this site's network, for the replica VMs defined here (contracts/dr.ts). */
            networkMap: networkMap.optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one site'),
    moverGroups: z
      .array(
        z
          .object({
            id,
            site: id,
            /** Hypervisor hosts this group backs up; empty for a group that only restores or replicates (a DR site). */
            hosts: z.array(id),
            principal: z
              .object({
                awsPrincipalArn: z
                  .string()
                  .regex(/^arn:aws[a-z-]*:iam::\d{12}:(root|role\/.+|user\/.+)$/, 'must be an IAM role, user or account root ARN')
                  .optional(),
                rolesAnywhereTrustAnchorArn: z
                  .string()
                  .regex(/^arn:aws[a-z-]*:rolesanywhere:[a-z0-9-]+:\d{12}:trust-anchor\/.+$/, 'must be an IAM Roles Anywhere trust anchor ARN')
                  .optional(),
              })
              .strict()
              .optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one mover group'),
    hosts: z
      .array(
        z
          .object({
            id,
            /**
             * How movers reach the host's VMs: `folder` (a VM is a folder of raw images: tests and
             * the demo without a hypervisor) or `libvirt` (QEMU/KVM through libvirt at `uri`).
             */
            driver: z.enum(['folder', 'libvirt'], { error: 'must be "folder" or "libvirt"' }).optional(),
            /** The libvirt connection URI: `qemu:///system` on the mover's own host, `qemu+ssh://host/system` or `qemu+tls://host/system` for another. */
            uri: z
              .string()
              .regex(
                /^([a-z0-9+]+:\/\/[^\s]*\/(system|session)(\?[^\s]*)?|test:\/\/\/[^\s]+)$/,
                'must be a libvirt URI such as "qemu:///system" or "qemu+ssh://host/system" (or libvirt\'s test driver, "test:///default")',
              )
              .optional(),
            /**
             * How the host's backup jobs export the disks to the movers (libvirt hosts): a unix
             * socket on the host (default; movers on the host) or a TCP port of the host, with TLS
             * (contracts/libvirt-exports.ts).
             */
            exports: libvirtExports.optional(),
            maxConcurrentBackups: count(64),
            datastores: z.array(z.object({ id, maxConcurrentBackups: count(64) }).strict()).optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one hypervisor host'),
    repositories: z
      .array(
        z
          .object({
            id,
            /** Fixed chunk size of the repository (0.5 recommended: measured in repository/REPOSITORY-FORMAT.md). */
            chunkSizeMiB: z.union([z.literal(0.25), z.literal(0.5), z.literal(1), z.literal(2), z.literal(4), z.literal(8)], {
              error: 'must be 0.25, 0.5, 1, 2, 4 or 8',
            }),
            /**
             * S3 Object Lock on the bucket the stack creates: every object is locked for `days` after
             * it is written, and the Garbage collection workflow's ExtendLocks step locks every object
             * a retained backup references until that backup's expiry (functions/gc/extend-locks.ts).
             */
            objectLock: z
              .object({
                mode: z.enum(['COMPLIANCE', 'GOVERNANCE'], {
                  error: 'must be "COMPLIANCE" (no one can shorten or remove a lock) or "GOVERNANCE" (a role with s3:BypassGovernanceRetention can)',
                }),
                days: count(36_500),
              })
              .strict()
              .optional(),
            /** The site the repository's storage is at (a DR repository: the DR site). */
            site: id.optional(),
            /**
             * A repository on storage this stack does not create: another S3-compatible endpoint,
             * or AWS S3 in another region. Unset: a bucket the stack creates on its own S3.
             */
            endpoint: storageEndpoint.optional(),
            /** The bucket of a repository with an `endpoint` (default: the repository id); the stack names the buckets it creates. */
            bucket: z
              .string()
              .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name: 3–63 lowercase letters, digits, dots or dashes')
              .optional(),
            /** How backups reach this repository when policies replicate to it (a DR repository). */
            replication: z
              .object({
                /** The mover group that copies into this repository and keeps its warm standby replica. */
                moverGroup: id,
                /** Folder on that group's movers of the warm standby replica (`<standbyPath>/<vmId>/<diskId>.raw`); unset keeps none. */
                standbyPath: z
                  .string()
                  .refine((p) => p.startsWith('/') && !p.split('/').includes('..'), 'must be an absolute path without ".."')
                  .optional(),
                /**
                 * Keep each libvirt VM's replica as a VM on this libvirt host of the DR site (powered
                 * off, its disks qcow2 restore points under `standbyPath`, networks through the site's
                 * `networkMap`), instead of raw standby files (contracts/dr.ts).
                 */
                replicaVms: replicaVmSettings.optional(),
              })
              .strict()
              .optional(),
          })
          .strict(),
      )
      .min(1, "configure at least one repository (the first is the stack's own bucket)"),
    policies: z.array(policy),
    /** Workflow-wide limits: VMs of one run backed up at once (hosts' slots still apply). */
    backup: z
      .object({ vmConcurrency: count(1000).optional(), dispatchConcurrency: count(256).optional() })
      .strict()
      .optional(),
    /**
     * Who hears of alerts: `emails` subscribe to the alarm topic (AWS); `webhook.url` gets a
     * JSON POST per new alert from the embedded stack (damage, VM past its RPO, silent mover
     * group, failed run; local/alert-notifier.ts), checked every `webhook.checkSeconds` (default 60).
     */
    notifications: z
      .object({
        emails: z.array(z.email({ error: 'must be an email address' })).optional(),
        webhook: z
          .object({ url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }), checkSeconds: count(86_400).optional() })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    /** When the Discover workflow inventories the libvirt hosts (default: hourly, when there is a libvirt host). */
    discovery: z.object({ schedule }).strict().optional(),
    /**
     * When the HostConfigBackup workflow backs up each libvirt host's networks, pools and
     * domain definitions (default: daily at 02:00 UTC, when there is a libvirt host), how many
     * of each host's it keeps (default 14), and in which repository (default: the first).
     */
    hostConfigBackup: z
      .object({ schedule: schedule.optional(), keep: count(1000).optional(), repository: id.optional() })
      .strict()
      .optional(),
    /** Failover plans: VMs booted in groups at the DR site (contracts/dr.ts; `lifeboat failover --plan ID`). */
    failoverPlans: z.array(failoverPlan).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    const dup = (items: { id: string }[], key: string) => {
      const seen = new Set<string>();
      items.forEach((it, i) => {
        if (seen.has(it.id)) ctx.addIssue({ code: 'custom', path: [key, i, 'id'], message: `duplicate ${key} id` });
        seen.add(it.id);
      });
    };
    dup(c.failoverPlans ?? [], 'failoverPlans');
    dup(c.sites, 'sites');
    dup(c.moverGroups, 'moverGroups');
    dup(c.hosts, 'hosts');
    dup(c.repositories, 'repositories');
    dup(c.policies, 'policies');
    const sites = new Set(c.sites.map((s) => s.id));
    const hosts = new Set(c.hosts.map((h) => h.id));
    const repos = new Set(c.repositories.map((r) => r.id));
    const servedBy = new Map<string, string>();
    c.moverGroups.forEach((g, i) => {
      if (!sites.has(g.site))
        ctx.addIssue({ code: 'custom', path: ['moverGroups', i, 'site'], message: `names no configured site (sites: ${[...sites].join(', ')})` });
      g.hosts.forEach((h, j) => {
        if (!hosts.has(h)) ctx.addIssue({ code: 'custom', path: ['moverGroups', i, 'hosts', j], message: 'names no configured host: add it to "hosts"' });
        const other = servedBy.get(h);
        if (other)
          ctx.addIssue({
            code: 'custom',
            path: ['moverGroups', i, 'hosts', j],
            message: `is already served by mover group "${other}": a host belongs to exactly one group`,
          });
        servedBy.set(h, g.id);
      });
    });
    c.hosts.forEach((h, i) => {
      if (h.driver === 'libvirt' && !h.uri)
        ctx.addIssue({ code: 'custom', path: ['hosts', i, 'uri'], message: 'is required for a libvirt host: give its libvirt URI, e.g. "qemu:///system"' });
      if (h.driver !== 'libvirt' && h.uri) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'uri'], message: 'is only used with "driver": "libvirt"' });
      if (h.driver !== 'libvirt' && h.exports)
        ctx.addIssue({ code: 'custom', path: ['hosts', i, 'exports'], message: 'is only used with "driver": "libvirt"' });
      if (!servedBy.has(h.id)) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'id'], message: 'is served by no mover group: add it to a group\'s "hosts"' });
    });
    c.repositories.forEach((r, i) => {
      if (i === 0 && r.endpoint)
        ctx.addIssue({
          code: 'custom',
          path: ['repositories', 0, 'endpoint'],
          message: "the first repository is the stack's own bucket: list a repository on another endpoint after it",
        });
      if (r.bucket !== undefined && !r.endpoint)
        ctx.addIssue({
          code: 'custom',
          path: ['repositories', i, 'bucket'],
          message: 'only a repository with its own "endpoint" names its bucket; the stack names the buckets it creates',
        });
      if (r.objectLock && r.endpoint)
        ctx.addIssue({
          code: 'custom',
          path: ['repositories', i, 'objectLock'],
          message: 'the stack does not create a repository on another endpoint, so it cannot set its Object Lock: configure it on that bucket',
        });
      if (r.site !== undefined && !sites.has(r.site))
        ctx.addIssue({ code: 'custom', path: ['repositories', i, 'site'], message: `names no configured site (sites: ${[...sites].join(', ')})` });
      if (r.replication?.replicaVms && (!r.replication.standbyPath || !r.site)) {
        ctx.addIssue({
          code: 'custom',
          path: ['repositories', i, 'replication', 'replicaVms'],
          message: 'needs the repository\'s "site" (whose networkMap the replicas use) and "replication.standbyPath" (where their disks are kept)',
        });
      }
      if (r.replication) {
        const g = c.moverGroups.find((x) => x.id === r.replication!.moverGroup);
        const path = ['repositories', i, 'replication', 'moverGroup'];
        if (!g) ctx.addIssue({ code: 'custom', path, message: `names no configured mover group (groups: ${c.moverGroups.map((x) => x.id).join(', ')})` });
        else if (g.hosts.length > 0 && g.site !== r.site) {
          ctx.addIssue({
            code: 'custom',
            path,
            message: `is a group that backs up hosts at site "${g.site}"${r.site ? `, not at the repository's site "${r.site}"` : ''}: name a group at the repository's site or one without hosts`,
          });
        }
      }
    });
    const hcRepo = c.hostConfigBackup?.repository;
    if (hcRepo !== undefined && !repos.has(hcRepo))
      ctx.addIssue({
        code: 'custom',
        path: ['hostConfigBackup', 'repository'],
        message: `names no configured repository (repositories: ${[...repos].join(', ')})`,
      });
    c.policies.forEach((p, i) => {
      if (!repos.has(p.repository))
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'repository'],
          message: `names no configured repository (repositories: ${[...repos].join(', ')})`,
        });
      if (p.drRpoHours !== undefined && p.replicateTo === undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'drRpoHours'],
          message: 'applies only to a policy that replicates: set "replicateTo" too, or remove it',
        });
      if (p.drRpoHours !== undefined && p.drRpoHours > 0 && p.drRpoHours < p.rpoHours)
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'drRpoHours'],
          message: `is ${p.drRpoHours}, below the policy's rpoHours (${p.rpoHours}): a DR copy is never newer than the backup it copies`,
        });
      if (p.replicateTo !== undefined) {
        if (!repos.has(p.replicateTo)) ctx.addIssue({ code: 'custom', path: ['policies', i, 'replicateTo'], message: 'names no configured repository' });
        else if (p.replicateTo === p.repository)
          ctx.addIssue({ code: 'custom', path: ['policies', i, 'replicateTo'], message: "must differ from the policy's own repository" });
        else if (!c.repositories.find((r) => r.id === p.replicateTo)!.replication) {
          const j = c.repositories.findIndex((r) => r.id === p.replicateTo);
          ctx.addIssue({
            code: 'custom',
            path: ['policies', i, 'replicateTo'],
            message: `names a repository no mover group replicates into: set repositories[${j}].replication.moverGroup`,
          });
        }
      }
      p.vms.hosts?.forEach((h, j) => {
        if (!hosts.has(h)) ctx.addIssue({ code: 'custom', path: ['policies', i, 'vms', 'hosts', j], message: 'names no configured host' });
      });
      const selectsByName = (p.vms.names?.length ?? 0) + (p.vms.tags?.length ?? 0) > 0;
      const discoverable = (p.vms.hosts ?? c.hosts.map((h) => h.id)).some((h) => c.hosts.find((x) => x.id === h)?.driver === 'libvirt');
      if (p.vms.tags?.length && !discoverable) {
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'vms', 'tags'],
          message: "selects by tag, but none of the policy's hosts is a libvirt host (only discovered VMs carry tags)",
        });
      }
      if (selectsByName && p.vms.hosts?.length === 0)
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'vms', 'hosts'],
          message: 'is empty: leave it out to filter the VMs of every host by "names" and "tags"',
        });
    });
  });

export type LifeboatConfig = z.infer<typeof configSchema>;
export type PolicyConfig = LifeboatConfig['policies'][number];
export type Retention = PolicyConfig['retention'];
export type RepositoryConfig = LifeboatConfig['repositories'][number];
export type MoverGroupConfig = LifeboatConfig['moverGroups'][number];
export type HostConfig = LifeboatConfig['hosts'][number];
export type ScheduleConfig = z.infer<typeof schedule>;

/** The Discover workflow's schedule when the configuration gives none: hourly. */
export const DEFAULT_DISCOVERY_SCHEDULE: ScheduleConfig = { expression: 'rate(1 hour)', timeZone: 'UTC' };

/** When the Discover workflow runs: the configured schedule, else hourly when a libvirt host is configured, else never. */
export function discoverySchedule(config: LifeboatConfig): ScheduleConfig | undefined {
  if (config.discovery?.schedule) return config.discovery.schedule;
  return config.hosts.some((h) => h.driver === 'libvirt') ? DEFAULT_DISCOVERY_SCHEDULE : undefined;
}

/** The HostConfigBackup workflow's schedule when the configuration gives none: daily at 02:00 UTC. */
export const DEFAULT_HOST_CONFIG_SCHEDULE: ScheduleConfig = { expression: 'cron(0 2 * * ? *)', timeZone: 'UTC' };

/** Host configuration backups as configured: the schedule (none without a libvirt host), how many per host are kept, and the repository. */
export function hostConfigBackupSettings(config: LifeboatConfig): { schedule: ScheduleConfig | undefined; keep: number; repositoryId: string } {
  const hc = config.hostConfigBackup;
  const libvirt = config.hosts.some((h) => h.driver === 'libvirt');
  return {
    schedule: libvirt ? (hc?.schedule ?? DEFAULT_HOST_CONFIG_SCHEDULE) : undefined,
    keep: hc?.keep ?? DEFAULT_HOST_CONFIG_KEEP,
    repositoryId: hc?.repository ?? config.repositories[0]!.id,
  };
}

/**
 * Whether a VM name matches a pattern of `policies[].vms.names`: `*` any run of
 * characters, `?` one character, everything else literally (case-sensitive, as libvirt names are).
 */
export function matchesNamePattern(name: string, pattern: string): boolean {
  const re = pattern
    .split('')
    .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${re}$`, 's').test(name);
}

export type StorageEndpointConfig = NonNullable<RepositoryConfig['endpoint']>;

/** A configuration that does not validate; `problems` holds one line per bad value. */
export class ConfigError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`${source} is not a valid Lifeboat configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const k of path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k] : undefined;
  return v;
}

function describe(v: unknown): string {
  if (v === undefined) return 'missing';
  const s = JSON.stringify(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Validates a parsed configuration object; `source` names it in errors (a file path). */
export function parseConfig(value: unknown, source: string): LifeboatConfig {
  const result = configSchema.safeParse(value);
  if (result.success) return result.data;
  const keyOf = (path: readonly PropertyKey[]) =>
    path.reduce<string>((acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : acc ? `${acc}.${String(k)}` : String(k)), '') || '(top level)';
  const problems = result.error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((k) => `${keyOf([...issue.path, k])}: unknown key; check the spelling`)
      : [`${keyOf(issue.path)} = ${describe(valueAt(value, issue.path))}: ${issue.message}`],
  );
  throw new ConfigError(source, problems);
}

export const defaultConfigPath = fileURLToPath(new URL('../lifeboat.config.json', import.meta.url));

/** Reads and validates a configuration file: `path`, else $LIFEBOAT_CONFIG, else the repository's example. */
export function loadConfig(path: string = process.env.LIFEBOAT_CONFIG || defaultConfigPath): LifeboatConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [`cannot read the file (${(err as Error).message}); set LIFEBOAT_CONFIG or pass the path of a configuration file`]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(path, [`is not JSON: ${(err as Error).message}`]);
  }
  return parseConfig(json, path);
}

/** The mover group that serves a host (each host has exactly one, checked above). */
export function groupForHost(config: LifeboatConfig, host: string): MoverGroupConfig | undefined {
  return config.moverGroups.find((g) => g.hosts.includes(host));
}

/** The DR recovery point objective of a replicating policy, in hours: `drRpoHours`, else twice `rpoHours`. */
export function drRpoHoursOf(p: { rpoHours: number; drRpoHours?: number | undefined }): number {
  return p.drRpoHours ?? 2 * p.rpoHours;
}
