/**
 * One garbage collection of a repository at a time: a lease in the catalog (a conditional
 * write, like a backup slot) held under the collection's gcId. Two at once would race on
 * the repository's index, each rewriting and merging the objects the other reads.
 *
 * CollectGarbage gives the lease back itself when it ends or fails; ReleaseGcLease (on
 * the Gc workflow's failure path) gives it back when the function could not: killed at
 * its timeout, out of memory, its sandbox gone. Every invocation takes the lease anew, for
 * GC_LEASE_MS (core/gc-timing.ts): one invocation and the longest wait before the
 * collection's next. So an execution that stops without its failure path running
 * (aborted, or past its own 12 h timeout) holds the repository's collections up for at
 * most GC_LEASE_MS (~1.5 h), not for as long as a whole workflow may run.
 */
import { z } from 'zod';
import { repositoryLocation, type StorageEndpoint } from '../../contracts/endpoints.ts';
import { GC_LEASE_MS } from '../../core/gc-timing.ts';
import { GcBusy } from '../../contracts/recovery-errors.ts';
import { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import type { GcReport } from '../../contracts/gc-report.ts';

/** One collection of a repository at a time, held by its gcId. */
export interface GcLease {
  /** Takes (or, for the same holder, renews) the lease until `expiresAt` (epoch ms); false when another holder has it. */
  take(holder: string, now: number, expiresAt: number): Promise<boolean>;
  /** Gives it back if `holder` has it (idempotent). */
  release(holder: string): Promise<void>;
}

/** The lease of the repository `bucket` on `endpoint` (a bucket name is unique only per endpoint), in the catalog. */
export function catalogGcLease(catalog: Pick<Catalog, 'takeSlot' | 'releaseSlot'>, bucket: string, endpoint: StorageEndpoint | undefined): GcLease {
  const scope = `gc:${endpoint?.url ?? ''}|${bucket}`;
  return {
    take: (holder, now, expiresAt) => catalog.takeSlot(scope, 0, holder, now, expiresAt),
    release: (holder) => catalog.releaseSlot(Catalog.slotKey(scope, 0), holder),
  };
}

/**
 * Runs `collect` holding `lease` for `gcId`: `Gc.Busy` when another collection has it.
 * The lease is kept while the collection is deferred (the workflow collects again under
 * the same gcId) and given back when it ends or fails.
 */
export async function holdingLease(lease: GcLease, gcId: string, bucket: string, now: number, collect: () => Promise<GcReport>): Promise<GcReport> {
  if (!(await lease.take(gcId, now, now + GC_LEASE_MS))) {
    throw new GcBusy(
      `another garbage collection of repository '${bucket}' is running (it holds the repository's GC lease until it ends, or ${GC_LEASE_MS / 60_000} min after its last step if it died); this one waits for it`,
    );
  }
  let report: GcReport | undefined;
  try {
    report = await collect();
    return report;
  } finally {
    // After a failure the lease goes back too (the workflow's retry takes it again); failing to give it back then must not hide the failure.
    if (!report?.deferred)
      await lease.release(gcId).catch((err: unknown) => {
        if (report) throw err;
      });
  }
}

/** ReleaseGcLease's input: the collection's gcId and its repository (the rest of its request is not read). */
export const releaseGcLeaseInput = z.object({ gcId: z.string().min(1), request: repositoryLocation }).strict();

/** ReleaseGcLease: gives the repository's GC lease back if `gcId` holds it (another holder's is left alone). */
export async function releaseGcLease(input: z.output<typeof releaseGcLeaseInput>, deps: { catalog: Pick<Catalog, 'takeSlot' | 'releaseSlot'> }): Promise<null> {
  await catalogGcLease(deps.catalog, input.request.bucket, input.request.endpoint).release(input.gcId);
  return null;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    releaseHandler: lambdaHandler('ReleaseGcLease', releaseGcLeaseInput, (input) => releaseGcLease(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { releaseHandler } = fromEnvironment(makeHandlers);
