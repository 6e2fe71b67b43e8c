/**
 * Serving a backup's disks over NBD from a mover (mover/recovery/export-task.ts): the
 * `export` activity task's input and its result, stated once as zod schemas that the
 * control plane and the mover both validate with.
 */
import { z } from 'zod';
import { text } from './zod.ts';
import { repositoryLocation } from './endpoints.ts';

/** Where the export listens: a unix socket on the mover host, or a TCP port (127.0.0.1 unless `host` says otherwise). */
export const exportListen = z.union([
  z.object({ socket: text }).strict(),
  z.object({ host: text.optional(), port: z.number().int().min(0).max(65535) }).strict(),
]);
export type ExportListen = z.output<typeof exportListen>;

/** One export: a backup's disks (each an NBD export named by its disk id), and how it is served. */
export const exportJob = z
  .object({
    exportId: text,
    vmId: text,
    backupId: text,
    repository: repositoryLocation,
    diskIds: z.array(text).min(1, 'must name at least one disk'),
    listen: exportListen,
    /** The export closes itself after this long without a connection. */
    idleTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 24 * 3600)
      .default(600),
    maxConnections: z.number().int().min(1).max(256).default(16),
    /** Decoded chunks cached, MiB (per disk). */
    cacheMiB: z
      .number()
      .int()
      .min(1)
      .max(64 * 1024)
      .default(256),
    /** Chunks fetched ahead of sequential reads; 0 turns read-ahead off. */
    readAheadChunks: z.number().int().min(0).max(1024).default(16),
  })
  .strict();
export type ExportJob = z.output<typeof exportJob>;

/** What an export served, answered when it closed (idle, or its task aborted). */
export const exportResult = z.object({
  exportId: text,
  backupId: text,
  /** Why it stopped: no connection for the idle timeout, or the task was stopped. */
  closed: z.enum(['idle', 'aborted']),
  bytesServed: z.number().int().nonnegative(),
  bytesDownloaded: z.number().int().nonnegative(),
  connections: z.number().int().nonnegative(),
  refused: z.number().int().nonnegative(),
  damagedChunks: z.number().int().nonnegative(),
  seconds: z.number().nonnegative(),
});
export type ExportResult = z.output<typeof exportResult>;

/**
 * Where a running export (or an instant recovery's VM and its exports) can be reached,
 * while its task runs: the mover puts it at {@link exportEndpointKey} in the repository
 * bucket of the job as soon as it listens, again with each progress beat (`updatedAt`),
 * and once more with `state: 'closed'` when it ends. A task's result comes only when it
 * ends, and movers have no catalog access, so this object is how a caller (`lifeboat
 * export`, `lifeboat restore --instant`) learns the address of a task still running.
 * A record whose execution is no longer running is stale, whatever its state says (the
 * mover died before it could write `closed`).
 */
export const exportEndpoint = z
  .object({
    exportId: text,
    kind: z.enum(['export', 'instant']),
    vmId: text,
    backupId: text,
    /** The mover host serving it. */
    mover: text,
    state: z.enum(['listening', 'closed']),
    /** NBD URI of each disk's export, by disk id. */
    uris: z.record(z.string(), text),
    /** An instant recovery's running domain. */
    domain: text.optional(),
    /** An instant recovery's overlays (where the guest's writes land until the move completes), by disk id. */
    overlays: z.record(z.string(), text).optional(),
    /** What an instant recovery is doing: `running` (the VM runs on the overlays), `moving`, `moved`, or `failed` (with `error`). */
    phase: z.enum(['running', 'moving', 'moved', 'failed']).optional(),
    error: z.string().optional(),
    closed: z.string().optional(),
    updatedAt: text,
  })
  .strict();
export type ExportEndpoint = z.output<typeof exportEndpoint>;

/** The repository object holding an export's endpoint record. */
export const exportEndpointKey = (exportId: string) => `exports/${exportId}.json`;
