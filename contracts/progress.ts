/**
 * Progress of a mover task, as the control plane reads it.
 *
 * Step Functions heartbeats carry no payload, and movers hold no catalog access, so a
 * mover running a backup's DispatchDisk, a Restore's RestoreDisk or a DeepVerify's
 * VerifyDisk task puts a small JSON object at `progress/<id>/<diskId>[.<segment>].json` in
 * the job's repository bucket (`<id>`: the backup id, or the restore's or verification's
 * id, which is its execution's name): when the task starts, every
 * `LIFEBOAT_PROGRESS_SECONDS` (default 5) while bytes move, at each change of phase, and
 * when it ends. The operator API (functions/operator/) lists an id's objects to show bytes
 * done of total, rate, ETA and phase. Same bucket and credentials the mover already writes
 * to; no secrets in them; a lifecycle rule expires them after a day in AWS.
 */
import { z } from 'zod';

export const PROGRESS_PREFIX = 'progress/';
export const PROGRESS_FORMAT = 'lifeboat-progress/1';

/** The phases in which bytes move: a backup's and a restore's `transfer`, a restore's `rehash` (the written disk read back) and `convert` (to qcow2), a verification's `read`. */
export const MOVING_PHASES = ['transfer', 'rehash', 'convert', 'read'] as const;

export const taskProgressSchema = z.object({
  format: z.literal(PROGRESS_FORMAT),
  /** What the task does (absent: `backup`, as objects written before restores and verifications reported progress). */
  operation: z.enum(['backup', 'restore', 'verify']).optional(),
  /** The restore's or verification's id, which names its objects (absent for a backup: its backup id does). */
  operationId: z.string().optional(),
  vmId: z.string(),
  backupId: z.string(),
  diskId: z.string(),
  /** The segment of a large disk this task moves (absent: the whole disk). */
  segment: z.number().int().nonnegative().optional(),
  /** One of {@link MOVING_PHASES} while bytes move; `done` once the disk (or segment) is complete; `failed` when the task gave up. */
  phase: z.enum([...MOVING_PHASES, 'done', 'failed']),
  /** A verification counts disk bytes covered by the chunks it read back (the chunks selected × the chunk size). */
  bytesDone: z.number().nonnegative(),
  bytesTotal: z.number().nonnegative(),
  bytesStored: z.number().nonnegative(),
  mover: z.string(),
  startedAt: z.string(),
  /** When the current phase began (rate and ETA are of the phase); absent: at `startedAt`. */
  phaseStartedAt: z.string().optional(),
  updatedAt: z.string(),
});

export type TaskProgress = z.infer<typeof taskProgressSchema>;

/** The prefix of a backup's, a restore's or a verification's progress objects. */
export const progressPrefix = (id: string) => `${PROGRESS_PREFIX}${id}/`;
export const progressKey = (p: Pick<TaskProgress, 'backupId' | 'operationId' | 'diskId' | 'segment'>) =>
  `${progressPrefix(p.operationId ?? p.backupId)}${p.diskId}${p.segment === undefined ? '' : `.${p.segment}`}.json`;

/** Parses a progress object; undefined (not an exception) for one that is not one. */
export function parseProgress(bytes: Uint8Array): TaskProgress | undefined {
  try {
    const r = taskProgressSchema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** Bytes per second since the phase (or the task) started, and seconds left at that rate (undefined before any byte moved). */
export function rateAndEta(p: Pick<TaskProgress, 'bytesDone' | 'bytesTotal' | 'startedAt' | 'phaseStartedAt' | 'updatedAt'>): {
  bytesPerSecond: number;
  etaSeconds: number | undefined;
} {
  const seconds = Math.max(0.001, (Date.parse(p.updatedAt) - Date.parse(p.phaseStartedAt ?? p.startedAt)) / 1000);
  const bytesPerSecond = p.bytesDone / seconds;
  return { bytesPerSecond, etaSeconds: bytesPerSecond > 0 ? Math.max(0, (p.bytesTotal - p.bytesDone) / bytesPerSecond) : undefined };
}
