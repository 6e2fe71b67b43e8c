/**
 * Deployment configuration: sites, mover groups, hypervisor hosts, repositories and
 * protection policies. One file (`lifeboat.config.json` by default) is read by the CDK
 * app at synth time and by the embedded stack at start, so both run the same setup.
 *
 * Validation happens once, here, before anything is built: a bad value fails with a
 * message naming the key path and the value, and every problem is listed, not just the
 * first. The field schemas are config-fields.ts, the shape config-schema.ts, the checks
 * across its parts config-checks.ts.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import { checkConfig } from './config-checks.ts';
import type { schedule } from './config-fields.ts';
import { configShape } from './config-schema.ts';

/** Host configuration backups kept per host when the configuration says nothing (`hostConfigBackup.keep`). */
export const DEFAULT_HOST_CONFIG_KEEP = 14;

const configSchema = configShape.superRefine(checkConfig);

export type LifeboatConfig = z.infer<typeof configSchema>;
export type PolicyConfig = LifeboatConfig['policies'][number];
export type Retention = PolicyConfig['retention'];
export type RepositoryConfig = LifeboatConfig['repositories'][number];
export type MoverGroupConfig = LifeboatConfig['moverGroups'][number];
export type HostConfig = LifeboatConfig['hosts'][number];
export type ScheduleConfig = z.infer<typeof schedule>;

/** The Discover workflow's schedule when the configuration gives none: hourly. */
export const DEFAULT_DISCOVERY_SCHEDULE: ScheduleConfig = { expression: 'rate(1 hour)', timeZone: 'UTC' };

/**
 * When the Discover workflow runs: the configured schedule, else hourly when a libvirt host
 * is configured or a DR repository keeps replica VMs (the workflow also sweeps the test
 * failover leftovers of the DR sites: without a libvirt host to inventory, it runs for that
 * sweep), else never.
 */
export function discoverySchedule(config: LifeboatConfig): ScheduleConfig | undefined {
  if (config.discovery?.schedule) return config.discovery.schedule;
  const libvirt = config.hosts.some((h) => h.driver === 'libvirt');
  const replicaVms = config.repositories.some((r) => r.replication?.replicaVms);
  return libvirt || replicaVms ? DEFAULT_DISCOVERY_SCHEDULE : undefined;
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
