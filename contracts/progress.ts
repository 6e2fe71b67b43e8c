/**
 * Transfer progress of a mover task, as the control plane reads it.
 *
 * Step Functions heartbeats carry no payload, and movers hold no catalog access, so a
 * mover running a DispatchDisk task puts a small JSON object at
 * `progress/<backupId>/<diskId>[.<segment>].json` in the job's repository bucket: when the
 * task starts, every `LIFEBOAT_PROGRESS_SECONDS` (default 5) while bytes move, and when it
 * ends. The operator API (functions/operator/) lists a backup's objects to show bytes done
 * of total, rate, ETA and phase. Same bucket and credentials the mover already writes
 * to; no secrets in them; a lifecycle rule expires them after a day in AWS.
 */
import { z } from 'zod';

export const PROGRESS_PREFIX = 'progress/';
export const PROGRESS_FORMAT = 'lifeboat-progress/1';

export const taskProgressSchema = z.object({
  format: z.literal(PROGRESS_FORMAT),
  vmId: z.string(),
  backupId: z.string(),
  diskId: z.string(),
  /** The segment of a large disk this task moves (absent: the whole disk). */
  segment: z.number().int().nonnegative().optional(),
  /** `transfer` while bytes move; `done` once the disk's (or segment's) manifest is written; `failed` when the task gave up. */
  phase: z.enum(['transfer', 'done', 'failed']),
  bytesDone: z.number().nonnegative(),
  bytesTotal: z.number().nonnegative(),
  bytesStored: z.number().nonnegative(),
  mover: z.string(),
  startedAt: z.string(),
  updatedAt: z.string(),
});

export type TaskProgress = z.infer<typeof taskProgressSchema>;

export const progressPrefix = (backupId: string) => `${PROGRESS_PREFIX}${backupId}/`;
export const progressKey = (p: Pick<TaskProgress, 'backupId' | 'diskId' | 'segment'>) => `${progressPrefix(p.backupId)}${p.diskId}${p.segment === undefined ? '' : `.${p.segment}`}.json`;

/** Parses a progress object; undefined (not an exception) for one that is not one. */
export function parseProgress(bytes: Uint8Array): TaskProgress | undefined {
  try {
    const r = taskProgressSchema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** Bytes per second since the task started, and seconds left at that rate (undefined before any byte moved). */
export function rateAndEta(p: Pick<TaskProgress, 'bytesDone' | 'bytesTotal' | 'startedAt' | 'updatedAt'>): { bytesPerSecond: number; etaSeconds: number | undefined } {
  const seconds = Math.max(0.001, (Date.parse(p.updatedAt) - Date.parse(p.startedAt)) / 1000);
  const bytesPerSecond = p.bytesDone / seconds;
  return { bytesPerSecond, etaSeconds: bytesPerSecond > 0 ? Math.max(0, (p.bytesTotal - p.bytesDone) / bytesPerSecond) : undefined };
}
