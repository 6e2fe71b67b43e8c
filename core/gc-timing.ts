/**
 * The timing the Gc workflow (cdk/lib/gc-workflow.ts) and its function's lease
 * (functions/gc/gc-lease.ts) share: the workflow's task timeout and longest deferral wait,
 * and the lease each invocation takes, which must outlast both.
 */
const MINUTE_MS = 60_000;

/** How long one CollectGarbage invocation may take: the Gc workflow's task timeout (the function's own is 15 min). */
export const GC_INVOCATION_MS = 16 * MINUTE_MS;

/** The longest wait of a deferred collection before it collects again (the request's deferSeconds, or the workflow's). */
export const GC_DEFER_MAX_SECONDS = 3600;

/**
 * How long each invocation takes the lease for: itself, the longest deferral wait, and 10
 * minutes for the workflow's retries of a throttled or failed invocation (10 + 20 + 40 s)
 * and Lambda's start. A collection that died holding the lease holds it no longer than this.
 */
export const GC_LEASE_MS = GC_INVOCATION_MS + GC_DEFER_MAX_SECONDS * 1000 + 10 * MINUTE_MS;
