/**
 * Verify by range: a backup whose manifests have more pieces than one Verify invocation
 * checks within Lambda's 900 s (Verify fails with `Verify.MustSplit`, verify.ts) is verified
 * as Dispatch transfers a large disk, in parts.
 *
 * - PlanVerifyRanges reads each disk manifest's head (no piece), cuts each disk's pieces into
 *   ranges of at most `rangePieces` and writes the list to the stack's run bucket; the payload
 *   carries only where it is and how many ranges there are.
 * - The VerifyRanges Map (a Distributed Map reading that list) runs VerifyRange once per
 *   range, each with the checks Verify makes, for that range's chunks only; a pack named by two
 *   ranges is HEADed by both.
 * - JoinVerifyRanges reads the children's results (the Map Run's result files), fails with the
 *   first failed range's error (which names the object, the disk and the range), and otherwise
 *   answers the ranges' counts summed: what Verify answers, so Commit takes it unchanged.
 */
import { VerifyFailed } from '../../contracts/errors.ts';
import {
  joinVerifyRangesInput,
  type JoinVerifyRangesInput,
  type VerifyInput,
  type VerifyOutput,
  type VerifyRangeItem,
  type VerifyRangeList,
  verifyOutput,
  verifyRangeItem,
  verifyRangeList,
  verifyRequest,
} from '../../contracts/backup-steps.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { pieceRanges } from '../../repository/referenced.ts';
import type { Repository } from '../../repository/open.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { readMapRunResults, runStore, type ChildResult } from '../commons/map-run.ts';
import { openDiskManifests, openManifestAt, parentPacks, verifyManifests } from './verify.ts';

/** Where a backup's ranges are listed in the run bucket (beside the run's VM lists). */
export const verifyRangesKey = (job: Pick<VerifyInput, 'policyId' | 'runId' | 'backupId'>) =>
  `runs/verify/${encodeURIComponent(job.policyId)}/${encodeURIComponent(job.runId)}/${encodeURIComponent(job.backupId)}.json`;

/** The backup's ranges in disk order: each disk's pieces in runs of at most `rangePieces`. */
export async function planVerifyRanges(job: VerifyInput, rangePieces: number, repository: Repository): Promise<VerifyRangeItem[]> {
  const readers = await openDiskManifests(job, repository);
  const perDisk = readers.map((r) => pieceRanges(r.info, r.pieces(), rangePieces));
  const count = perDisk.reduce((n, d) => n + d.length, 0);
  const items: VerifyRangeItem[] = [];
  for (const [i, ranges] of perDisk.entries()) {
    const disk = job.disks[i]!;
    for (const r of ranges) {
      items.push({
        backupId: job.backupId,
        vmId: job.vmId,
        repository: job.repository,
        parentBackupId: job.parentBackupId,
        index: items.length,
        count,
        diskId: disk.diskId,
        manifestKey: disk.manifestKey,
        ...r,
      });
    }
  }
  return items;
}

/** Writes the ranges' list where the VerifyRanges Map reads it. */
export async function writeVerifyRanges(items: VerifyRangeItem[], job: VerifyInput, run: { store: ObjectStore; bucket: string }): Promise<VerifyRangeList> {
  if (items.length === 0) throw new VerifyFailed(`backup ${job.backupId} of VM '${job.vmId}' has no manifest pieces to verify by range`);
  const key = verifyRangesKey(job);
  await run.store.put(key, Buffer.from(JSON.stringify(items)));
  return verifyRangeList.parse({ bucket: run.bucket, key, count: items.length });
}

/** How messages name a range: its place, its disk's pieces and chunks. */
export const rangeLabel = (r: VerifyRangeItem) =>
  `${r.index + 1} of ${r.count} (pieces ${r.firstPiece} to ${r.firstPiece + r.pieces - 1}, chunks ${r.from} to ${r.to - 1})`;

/**
 * One range's checks, as Verify makes them for its chunks: the range must be one its manifest's
 * head has (the head may not have changed since the plan), then each object its chunks are in
 * is HEADed (but for the committed parent's packs named by the parent's pieces over the same
 * chunks, of which about PARENT_SAMPLE per range are drawn at random and HEADed anyway).
 */
export async function verifyRange(r: VerifyRangeItem, deps: { repository: Repository; signal?: AbortSignal }): Promise<VerifyOutput> {
  const reader = await openManifestAt(deps.repository, r.backupId, r);
  const each = pieceRanges(reader.info, reader.pieces(), 1);
  if (each[r.firstPiece]?.from !== r.from || each[r.firstPiece + r.pieces - 1]?.to !== r.to) {
    throw new VerifyFailed(
      `range ${rangeLabel(r)} of disk '${r.diskId}' (backup ${r.backupId}) is not a range of manifest ${r.manifestKey} (chunks ${reader.info.from} to ${reader.info.to - 1})`,
    );
  }
  const chunks = { from: r.from, to: r.to };
  const trusted = r.parentBackupId ? await parentPacks(r.parentBackupId, [r.diskId], deps, chunks) : undefined;
  const disk = { diskId: r.diskId, manifestKey: r.manifestKey, reader, range: { ...chunks, label: rangeLabel(r) } };
  return verifyManifests(r.backupId, [disk], { ...deps, ...(trusted ? { trusted } : {}) });
}

/** A failed child's error message: Lambda's cause is `{ errorType, errorMessage }` as JSON text. */
function failureMessage(c: ChildResult): string {
  try {
    const parsed = JSON.parse(c.cause ?? '') as { errorMessage?: unknown };
    if (typeof parsed.errorMessage === 'string') return parsed.errorMessage;
  } catch {
    // Not Lambda's JSON: the cause as it is.
  }
  return c.cause || c.error || c.status;
}

/** The ranges' counts summed, once every range passed; the first failed range's error otherwise. */
export function joinRangeResults(input: Pick<JoinVerifyRangesInput, 'backupId' | 'vmId' | 'ranges'>, results: ChildResult[], where: string): VerifyOutput {
  const failed = results.filter((c) => c.status !== 'SUCCEEDED');
  const indexOf = (c: ChildResult) => {
    const index = (c.input as { index?: unknown } | undefined)?.index;
    return typeof index === 'number' ? index : Number.POSITIVE_INFINITY;
  };
  const first = failed.map((c) => ({ c, index: indexOf(c) })).sort((a, b) => a.index - b.index)[0];
  if (first) {
    throw new VerifyFailed(
      `${failureMessage(first.c)} (${failed.length} of ${input.ranges.count} ranges of backup ${input.backupId} of VM '${input.vmId}' failed; every range's result: ${where})`,
    );
  }
  if (results.length !== input.ranges.count) {
    throw new VerifyFailed(
      `backup ${input.backupId} of VM '${input.vmId}': ${results.length} of its ${input.ranges.count} ranges reported (${where}); it is not verified. Run the backup again`,
    );
  }
  const sum: VerifyOutput = { chunksChecked: 0, bytesChecked: 0, checksumsCompared: 0, packsChecked: 0, packsTrusted: 0 };
  for (const c of results) {
    const o = verifyOutput.parse(c.output);
    sum.chunksChecked += o.chunksChecked;
    sum.bytesChecked += o.bytesChecked;
    sum.checksumsCompared += o.checksumsCompared;
    sum.packsChecked += o.packsChecked;
    sum.packsTrusted += o.packsTrusted;
  }
  return sum;
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanVerifyRanges', verifyRequest, async ({ job, rangePieces }) => {
      const repository = await c.repository(job.repository.bucket, job.repository.endpoint);
      return writeVerifyRanges(await planVerifyRanges(job, rangePieces, repository), job, runStore(c, 'Backup'));
    }),
    rangeHandler: lambdaHandler('VerifyRange', verifyRangeItem, async (r, { signal }) => {
      const repository = await c.repository(r.repository.bucket, r.repository.endpoint);
      return verifyOutput.parse(await verifyRange(r, { repository, signal }));
    }),
    joinHandler: lambdaHandler('JoinVerifyRanges', joinVerifyRangesInput, async (input) => {
      // The Map Run's result files are in the stack's run bucket (its ResultWriter's), as the ranges' list.
      const run = runStore(c, 'Backup');
      const { Key } = input.results.ResultWriterDetails;
      const results = await readMapRunResults(run.store, Key);
      return verifyOutput.parse(joinRangeResults(input, results, `s3://${run.bucket}/${Key}`));
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, rangeHandler, joinHandler } = fromEnvironment(makeHandlers);
