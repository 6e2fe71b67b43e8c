/**
 * The HostConfigBackup workflow's `hostConfig` mover task and its result (zod schemas): the
 * mover validates the task, RecordHostConfig the result. The archive itself and its sealing
 * are repository/host-config.ts's.
 */
import { z } from 'zod';
import { repositoryLocation } from './endpoints.ts';
import type { Infer } from './zod.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

const repository = z.strictObject({
  bucket: text,
  endpoint: z
    .strictObject({
      url: z.string().optional(),
      region: z.string().optional(),
      pathStyle: z.boolean().optional(),
      checksums: z.enum(['when-required', 'when-supported']).optional(),
    })
    .optional(),
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

/**
 * A stored host configuration backup, as the catalog keeps it and the operator API lists
 * it (`/api/host-configs`): the mover's result, the repository it is in, when it was
 * recorded and by which HostConfigBackup execution.
 */
export const hostConfigRecord = hostConfigResult.extend({
  repository: repositoryLocation,
  recordedAt: text,
  /** The HostConfigBackup execution that made it. */
  runId: text,
});
export type HostConfigRecord = Infer<typeof hostConfigRecord>;
