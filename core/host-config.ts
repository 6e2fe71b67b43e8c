/**
 * Host configuration backups: what a libvirt host defines besides its VMs' disks — its
 * networks, storage pools and domain definitions, and what virsh says of the host itself —
 * kept as one sealed archive per host per run (`host-config/<hostId>/<backupId>`). The zod
 * schemas are the contract of the HostConfigBackup workflow's `hostConfig` mover task (the
 * mover validates the task, RecordHostConfig the result) and of the stored archive (the
 * restore validates what it opened). Sealing is the repository's own (`seal`/`open`, the
 * object's key as purpose), like a backup's domain XML.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { Corrupt } from './errors.ts';
import { keys as objectKeys, open, seal, type RepositoryKeys } from '../repository/format.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

/** Format id and version of the archive document; a reader refuses what it does not know. */
export const HOST_CONFIG_FORMAT = 'lifeboat-host-config';
export const HOST_CONFIG_VERSION = 1;

/** Host configuration backups kept per host when the configuration says nothing (`hostConfigBackup.keep`). */
export const DEFAULT_HOST_CONFIG_KEEP = 14;

const repository = z.strictObject({
  bucket: text,
  endpoint: z.strictObject({
    url: z.string().optional(), region: z.string().optional(), pathStyle: z.boolean().optional(), checksums: z.enum(['when-required', 'when-supported']).optional(),
  }).optional(),
});

/** The `hostConfig` activity task: dump the host's definitions and store them sealed at `objectKey`. */
export const hostConfigTask = z.strictObject({
  task: z.literal('hostConfig'),
  hostId: text,
  hypervisor: z.strictObject({ driver: z.literal('libvirt'), uri: text }),
  repository,
  backupId: text,
  objectKey: text,
});
export type HostConfigTask = z.infer<typeof hostConfigTask>;

/** Whether a task input is a hostConfig task (the mover's dispatch looks at `task` only; the schema checks the rest). */
export const isHostConfigTask = (raw: unknown): boolean => !!raw && typeof raw === 'object' && (raw as { task?: unknown }).task === 'hostConfig';

export const hostConfigCounts = z.strictObject({ networks: count, pools: count, domains: count });

/** What the mover returns: where the archive is, what it holds, and the SHA-256 (hex) of its plaintext. */
export const hostConfigResult = z.strictObject({
  hostId: text,
  backupId: text,
  objectKey: text,
  takenAt: z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be a timestamp'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex SHA-256'),
  /** Bytes of the plaintext archive. */
  bytes: count,
  counts: hostConfigCounts,
});
export type HostConfigResult = z.infer<typeof hostConfigResult>;

/** One definition as virsh printed it: its name and the XML, byte for byte. */
const definition = z.strictObject({ name: text, xml: z.string() });
export type HostDefinition = z.infer<typeof definition>;

/** The stored document. `xml` strings are virsh's standard output, unchanged, so a restore gives back the same bytes. */
export const hostConfigArchive = z.strictObject({
  format: z.literal(HOST_CONFIG_FORMAT),
  version: z.literal(HOST_CONFIG_VERSION),
  hostId: text,
  uri: text,
  takenAt: z.string(),
  /** `virsh nodeinfo`, `version` and `capabilities` output; each absent when the host would not say. */
  host: z.strictObject({ nodeinfo: z.string().optional(), version: z.string().optional(), capabilities: z.string().optional() }),
  networks: z.array(definition),
  pools: z.array(definition),
  domains: z.array(definition),
});
export type HostConfigArchive = z.infer<typeof hostConfigArchive>;

/** The object key of a host configuration backup (repository/format.ts keeps every key shape). */
export const hostConfigKey = (hostId: string, backupId: string) => objectKeys.hostConfig(hostId, backupId);

/** The sealed object's purpose: its key, so an archive cannot be passed off as another host's or another run's. */
const purposeOf = (objectKey: string) => `host-config:${objectKey}`;

/** Seals an archive for `objectKey`; returns the stored bytes and the plaintext's SHA-256 (hex) and size. */
export async function sealHostConfig(keys: RepositoryKeys, archive: HostConfigArchive, objectKey: string): Promise<{ sealed: Buffer; sha256: string; bytes: number }> {
  const plaintext = Buffer.from(JSON.stringify(archive));
  return { sealed: await seal(keys, plaintext, purposeOf(objectKey)), sha256: createHash('sha256').update(plaintext).digest('hex'), bytes: plaintext.length };
}

/** Opens an archive stored at `objectKey`, checks the plaintext against the recorded SHA-256, and validates it. */
export async function openHostConfig(keys: RepositoryKeys, sealed: Uint8Array, objectKey: string, sha256?: string): Promise<HostConfigArchive> {
  const plaintext = await open(keys, sealed, purposeOf(objectKey));
  const actual = createHash('sha256').update(plaintext).digest('hex');
  if (sha256 && actual !== sha256) throw new Corrupt(`host configuration backup ${objectKey} opened, but its SHA-256 is ${actual}, not the ${sha256} recorded at backup time`);
  let json: unknown;
  try {
    json = JSON.parse(plaintext.toString('utf8'));
  } catch (err) {
    throw new Corrupt(`host configuration backup ${objectKey} is not JSON`, err);
  }
  const parsed = hostConfigArchive.safeParse(json);
  if (!parsed.success) throw new Corrupt(`host configuration backup ${objectKey} is not a ${HOST_CONFIG_FORMAT} v${HOST_CONFIG_VERSION} document: ${parsed.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

/** A sortable backup id: the time (UTC, to the millisecond) and a short random tail. */
export function hostConfigBackupId(at: Date, random: string): string {
  return `${at.toISOString().replace(/[-:.]/g, '')}-${random}`;
}
