/**
 * Host configuration backups: what a libvirt host defines besides its VMs' disks — its
 * networks, storage pools and domain definitions, and what virsh says of the host itself —
 * kept as one sealed archive per host per run (`host-config/<hostId>/<backupId>`). The zod
 * schema of the stored archive (the restore validates what it opened) is here; the
 * `hostConfig` mover task and its result are contracts (contracts/host-config.ts). Sealing is the repository's own (`seal`/`open`, the
 * object's key as purpose), like a backup's domain XML.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { Corrupt } from '../contracts/errors.ts';
import { objectKeys, open, seal, type RepositoryKeys } from './format.ts';

const text = z.string().min(1);

/** Format id and version of the archive document; a reader refuses what it does not know. */
export const HOST_CONFIG_FORMAT = 'lifeboat-host-config';
export const HOST_CONFIG_VERSION = 1;

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
export async function sealHostConfig(
  keys: RepositoryKeys,
  archive: HostConfigArchive,
  objectKey: string,
): Promise<{ sealed: Buffer; sha256: string; bytes: number }> {
  const plaintext = Buffer.from(JSON.stringify(archive));
  return { sealed: await seal(keys, plaintext, purposeOf(objectKey)), sha256: createHash('sha256').update(plaintext).digest('hex'), bytes: plaintext.length };
}

/** Opens an archive stored at `objectKey`, checks the plaintext against the recorded SHA-256, and validates it. */
export async function openHostConfig(keys: RepositoryKeys, sealed: Uint8Array, objectKey: string, sha256?: string): Promise<HostConfigArchive> {
  const plaintext = await open(keys, sealed, purposeOf(objectKey));
  const actual = createHash('sha256').update(plaintext).digest('hex');
  if (sha256 && actual !== sha256)
    throw new Corrupt(`host configuration backup ${objectKey} opened, but its SHA-256 is ${actual}, not the ${sha256} recorded at backup time`);
  let json: unknown;
  try {
    json = JSON.parse(plaintext.toString('utf8'));
  } catch (err) {
    throw new Corrupt(`host configuration backup ${objectKey} is not JSON`, err);
  }
  const parsed = hostConfigArchive.safeParse(json);
  if (!parsed.success)
    throw new Corrupt(
      `host configuration backup ${objectKey} is not a ${HOST_CONFIG_FORMAT} v${HOST_CONFIG_VERSION} document: ${parsed.error.issues
        .slice(0, 3)
        .map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`)
        .join('; ')}`,
    );
  return parsed.data;
}

/** A sortable backup id: the time (UTC, to the millisecond) and a short random tail. */
export function hostConfigBackupId(at: Date, random: string): string {
  return `${at.toISOString().replace(/[-:.]/g, '')}-${random}`;
}
