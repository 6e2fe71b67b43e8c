/**
 * What the Backup workflow's Lambda steps after the transfer take and return, per VM:
 * Verify (the VM's job and its disks' results), Commit (those and Verify's answer),
 * RecordFailure (the job and the error a Catch caught), and the run's Summarize. zod
 * schemas first, types inferred: each function parses its input with these (a bad one is
 * `Function.BadInput` naming the field), and Verify, Commit and RecordFailure parse what
 * they return with the schema the next step reads, so both sides of each hop hold to one
 * contract. Objects are loose (the workflow carries state along).
 */
import { z } from 'zod';
import { caughtError } from './errors.ts';
import { consistency, diskResult, vmJob } from './jobs.ts';
import { count, text, type Infer } from './zod.ts';

/** Verify's input: the VM's job with its disks' transfer results. */
export const verifyInput = vmJob.extend({ disks: z.array(diskResult) });
export type VerifyInput = Infer<typeof verifyInput>;

/** Packs of the committed parent that Verify HEADs anyway, drawn at random, per backup (expected; functions/backup/verify.ts). */
export const PARENT_SAMPLE = 8;

/** What Verify checked (Commit takes it as `verify`; the replication's verification answers the same). */
export const verifyOutput = z.looseObject({
  /** Distinct chunks of each disk's manifest whose stored object (format 1) or pack (format 2) was checked. */
  chunksChecked: count,
  /** Bytes of the objects HEADed: chunk objects, and each pack once. */
  bytesChecked: count,
  /** Format-1 chunks whose store-side SHA-256 matched the manifest (0 on stores that keep none, and for packs). */
  checksumsCompared: count,
  /** Distinct packs HEADed (format 2; 0 from a Verify that predates packs). */
  packsChecked: count.default(0),
  /** Packs not HEADed: the committed parent's, at the size it recorded (see functions/backup/verify.ts). */
  packsTrusted: count.default(0),
});
export type VerifyOutput = Infer<typeof verifyOutput>;

/**
 * Manifest pieces one Verify invocation checks by default (a piece holds at most 65,536
 * chunks: ~4 M chunks, 2 TiB at 512 KiB). A backup with more is verified by range
 * (functions/backup/verify-ranges.ts); the figures are in bench/MEASUREMENTS.md (verify7, verify8).
 */
export const DEFAULT_VERIFY_RANGE_PIECES = 64;

/** The payload of Verify and PlanVerifyRanges: the VM's job with its disks' results, and the most pieces one invocation checks. */
export const verifyRequest = z.looseObject({ job: verifyInput, rangePieces: z.number().int().positive() });
export type VerifyRequest = Infer<typeof verifyRequest>;

/** One range of a backup's manifest pieces (an item of the VerifyRanges Map, one VerifyRange invocation), as PlanVerifyRanges lists it. */
export const verifyRangeItem = vmJob.pick({ backupId: true, vmId: true, repository: true, parentBackupId: true }).extend({
  /** This range's place among the backup's ranges, in disk order (0-based), and how many there are. */
  index: count,
  count: z.number().int().positive(),
  ...diskResult.pick({ diskId: true, manifestKey: true }).shape,
  /** Its pieces in the disk's manifest (0-based), and the chunks they cover: `from` … `to - 1`. */
  firstPiece: count,
  pieces: z.number().int().positive(),
  from: count,
  to: count,
});
export type VerifyRangeItem = Infer<typeof verifyRangeItem>;

/** Where PlanVerifyRanges listed the ranges (the stack's run bucket): what the payload carries instead of the list. */
export const verifyRangeList = z.object({ bucket: text, key: text, count: z.number().int().positive() });
export type VerifyRangeList = Infer<typeof verifyRangeList>;

/** JoinVerifyRanges' input: the backup, its ranges' list and where the VerifyRanges Map Run wrote its children's results. */
export const joinVerifyRangesInput = z.looseObject({
  backupId: text,
  vmId: text,
  ranges: verifyRangeList,
  results: z.looseObject({ MapRunArn: z.string(), ResultWriterDetails: z.object({ Bucket: text, Key: text }) }),
});
export type JoinVerifyRangesInput = Infer<typeof joinVerifyRangesInput>;

/** Commit's input: Verify's input and its answer. */
export const commitInput = verifyInput.extend({ verify: verifyOutput });
export type CommitInput = Infer<typeof commitInput>;

/** What Commit answers: the backup is visible in the catalog from `committedAt`. */
export const commitOutput = z.looseObject({ backupId: text, committedAt: text, consistency: consistency.optional() });
export type CommitOutput = Infer<typeof commitOutput>;

/** RecordFailure's input: the VM's job and what the Catch caught (`{ Error, Cause }`). */
export const recordFailureInput = vmJob.extend({ error: caughtError });
export type RecordFailureInput = Infer<typeof recordFailureInput>;

/** Summarize's input: the run, read back from the catalog. */
export const summarizeInput = z.looseObject({ runId: text, policyId: text });
export type SummarizeInput = Infer<typeof summarizeInput>;
