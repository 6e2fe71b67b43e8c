/**
 * Where a repository lives: a bucket, and the S3-compatible endpoint that serves it when
 * that is not the stack's own S3. The configuration names it once per repository
 * (`repositories[].endpoint`); SyncConfig puts it into the catalog's policies, the plans
 * put it into every job that names the bucket, and whoever opens the bucket — a Lambda
 * function or a mover — builds its client from it. The settings are not secret:
 * credentials never travel with them; each side takes its own (see mover/main.ts,
 * functions/commons/clients.ts).
 */
import { z } from 'zod';
import { text, type Infer } from './zod.ts';

/** How to reach an S3-compatible endpoint; an absent field means the stack's own setting. */
export const storageEndpoint = z.strictObject({
  /** Endpoint URL (`https://s3.dr.example.com`); unset: AWS S3 of `region`. */
  url: text.optional(),
  /** Signing region; unset: the stack's region. */
  region: text.optional(),
  /** Path-style requests (`https://host/bucket/key`); default true with a `url`, false for AWS S3. */
  pathStyle: z.boolean().optional(),
  /**
   * Flexible request checksums: `when-required` (default; what most S3-compatible stores
   * accept) or `when-supported` (the SDK adds a CRC to every upload).
   */
  checksums: z.enum(['when-required', 'when-supported']).optional(),
});
export type StorageEndpoint = Infer<typeof storageEndpoint>;

/** A repository as jobs name it: its bucket, and its endpoint when it is not the stack's own S3. */
export const repositoryLocation = z.looseObject({ bucket: text, endpoint: storageEndpoint.optional() });
export type RepositoryLocation = Infer<typeof repositoryLocation>;

/** A stable key for one endpoint's settings (client caches key on it; '' is the stack's own S3). */
export function endpointKey(e: StorageEndpoint | undefined): string {
  if (!e) return '';
  return JSON.stringify([e.url ?? '', e.region ?? '', e.pathStyle ?? null, e.checksums ?? '']);
}

/** The key of one bucket on one endpoint (a bucket name is unique only per endpoint). */
export function locationKey(l: RepositoryLocation): string {
  return `${endpointKey(l.endpoint)}|${l.bucket}`;
}

/** A location with its endpoint only when it has one, so jobs stay small and compare equal. */
export function location(bucket: string, endpoint: StorageEndpoint | undefined): RepositoryLocation {
  return endpoint ? { bucket, endpoint } : { bucket };
}
