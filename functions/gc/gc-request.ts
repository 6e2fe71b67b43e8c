/** What the CollectGarbage function is asked: a repository, its grace period and Object Lock retention, a dry run. */
import { z } from 'zod';
import { storageEndpoint } from '../../contracts/endpoints.ts';
import { GC_DEFER_MAX_SECONDS } from '../../core/gc-timing.ts';

export const gcRequest = z
  .object({
    /** The repository bucket to collect. */
    bucket: z.string().min(1),
    /** Its endpoint, when it is not the stack's own S3 (a DR repository on other storage). */
    endpoint: storageEndpoint.optional(),
    /** Chunks younger than this are never deleted (default 48). */
    graceHours: z.number().nonnegative().optional(),
    /** The repository's Object Lock default retention in days (objects younger are locked). */
    objectLockDays: z.number().int().positive().optional(),
    /** Report what would be deleted; delete nothing. */
    dryRun: z.boolean().optional(),
    /** Seconds the workflow waits when running backups defer the sweep (default 120; the workflow reads it). */
    deferSeconds: z.number().int().min(1).max(GC_DEFER_MAX_SECONDS).optional(),
  })
  .strict();
export const gcInput = z.object({ gcId: z.string().min(1), request: gcRequest }).strict();
