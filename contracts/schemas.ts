/**
 * zod schemas of what the workflows hand to the functions, typed against contracts/jobs.ts:
 * a field added to `VmJob` without a schema here fails the type check. Objects are loose
 * (unknown fields pass through untouched), because the workflow carries state along.
 */
import { z } from 'zod';
import type { RepositoryLocation, StorageEndpoint } from './endpoints.ts';
import { libvirtExports } from './libvirt-exports.ts';
import type { ChangeTracking, ChangeTrackingOffer, Consistency, QuiesceSettings, DiskRef, DiskResult, Hypervisor, RepositoryRef, SlotLease, SlotScope, SnapshotResult, TransferStats, VmJob, VmOutcome } from './jobs.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

/** A repository's endpoint settings as jobs carry them (contracts/endpoints.ts). */
export const storageEndpoint: z.ZodType<StorageEndpoint> = z.object({
  url: text.optional(), region: text.optional(), pathStyle: z.boolean().optional(), checksums: z.enum(['when-required', 'when-supported']).optional(),
}).strict();
/** A bucket and, when it is not the stack's own S3, its endpoint. */
export const repositoryLocation: z.ZodType<RepositoryLocation> = z.looseObject({ bucket: text, endpoint: storageEndpoint.optional() });
export const repositoryRef: z.ZodType<RepositoryRef> = z.looseObject({ bucket: text, endpoint: storageEndpoint.optional(), chunkSize: z.number().int().positive() });
export const slotScope: z.ZodType<SlotScope> = z.looseObject({ scope: text, limit: z.number().int().positive() });
export const slotLease: z.ZodType<SlotLease> = z.looseObject({ keys: z.array(text), holder: text });
export const changeTrackingOffer: z.ZodType<ChangeTrackingOffer> = z.union([z.strictObject({ since: text, sinceBackupId: text }), z.strictObject({ unavailable: text })]);
export const changeTracking: z.ZodType<ChangeTracking> = z.union([z.strictObject({ used: z.literal(true), since: text }), z.strictObject({ used: z.literal(false), reason: text })]);
export const consistency: z.ZodType<Consistency> = z.strictObject({ level: z.enum(['application', 'filesystem', 'crash']), reason: text });
export const quiesceSettings: z.ZodType<QuiesceSettings> = z.strictObject({
  pre: z.array(text).min(1).optional(), post: z.array(text).min(1).optional(),
  hookTimeoutSeconds: z.number().int().positive().optional(), onHookFailure: z.enum(['fail', 'continue']).optional(),
});
export const hypervisor: z.ZodType<Hypervisor> = z.union([z.strictObject({ driver: z.literal('folder') }), z.strictObject({ driver: z.literal('libvirt'), uri: text, exports: libvirtExports.optional() })]);
export const diskRef: z.ZodType<DiskRef> = z.looseObject({ diskId: text, path: text, sizeBytes: count, changeTracking: changeTrackingOffer.optional() });
export const snapshotResult: z.ZodType<SnapshotResult> = z.looseObject({
  handle: text, disks: z.array(diskRef), config: z.record(z.string(), z.unknown()), checkpoint: text.optional(), consistency: consistency.optional(),
});

export const transferStats: z.ZodType<TransferStats> = z.looseObject({
  bytesScanned: count, bytesNew: count, bytesZero: count, bytesUnallocated: count.optional(), bytesUnchanged: count.optional(), bytesRead: count.optional(), bytesUploaded: count, bytesStored: count,
  chunks: count, zeroChunks: count, parentChunks: count, dedupedChunks: count, uploadedChunks: count, seconds: z.number().nonnegative(), storageRetries: count.optional(),
});
export const diskResult: z.ZodType<DiskResult> = z.looseObject({ diskId: text, sizeBytes: count, manifestKey: text, stats: transferStats, changeTracking: changeTracking.optional() });

export const vmJob: z.ZodType<VmJob> = z.looseObject({
  runId: text, policyId: text, backupId: text, vmId: text, host: text, moverGroup: text, source: text,
  repository: repositoryRef,
  parentBackupId: text.nullable(),
  parentManifests: z.record(z.string(), z.string()),
  slotScopes: z.array(slotScope),
  slot: slotLease.nullable(),
  snapshot: snapshotResult.nullable(),
  hypervisor: hypervisor.optional(),
  quiesce: quiesceSettings.optional(),
  parentCheckpoint: text.nullable().optional(),
  minMoverVersion: z.string().optional(),
  segmentBytes: z.number().int().positive(),
  healChunks: z.array(text).optional(),
});

/** A Step Functions Catch result: `{ Error, Cause }`. */
export const caughtError = z.looseObject({ Error: z.string(), Cause: z.string().optional().default('') });

export const vmOutcome: z.ZodType<VmOutcome> = z.looseObject({
  vmId: text, backupId: text, status: z.enum(['committed', 'failed']), error: z.object({ Error: z.string(), Cause: z.string() }).optional(),
  consistency: consistency.optional(), fullReads: z.array(z.strictObject({ diskId: text, reason: text })).optional(),
});
