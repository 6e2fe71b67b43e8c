/**
 * PlanDispatch and JoinSegments, around the Dispatch map of the Backup workflow.
 *
 * PlanDispatch turns a snapshot's disks into transfer items: a disk up to the job's
 * segment size is one item; a larger one is cut into chunk-aligned segments, each its
 * own activity task, so several movers of the group read one disk in parallel.
 * JoinSegments joins the segments' manifests into the disk's manifest by naming their
 * pieces (format 3: no entry is read or rewritten), written to the
 * repository before Verify reads it, and their counters into one result per disk.
 */
import { z } from 'zod';
import { BadTaskInput, Corrupt } from '../../contracts/errors.ts';
import { objectKeys } from '../../repository/format.ts';
import { type DiskResult, diskResult, type DispatchItem, segmentManifestId, type TransferStats, type VmJob, vmJob } from '../../contracts/jobs.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { checkHead, type ManifestHead } from '../../repository/manifest/head.ts';
import type { Repository } from '../../repository/open.ts';
import { segmentPieces } from '../../repository/join.ts';

export function planDispatch(job: VmJob): DispatchItem[] {
  if (!job.snapshot) throw new BadTaskInput(`VM '${job.vmId}' has no snapshot to dispatch`);
  const chunk = job.repository.chunkSize;
  // Segments are whole chunks; at least one chunk.
  const segmentBytes = Math.max(chunk, Math.floor((job.segmentBytes || Number.MAX_SAFE_INTEGER) / chunk) * chunk);
  const items: DispatchItem[] = [];
  for (const disk of job.snapshot.disks) {
    if (disk.sizeBytes <= segmentBytes) {
      items.push({ disk, segment: null });
      continue;
    }
    const count = Math.ceil(disk.sizeBytes / segmentBytes);
    for (let index = 0; index < count; index++) {
      const offset = index * segmentBytes;
      items.push({ disk, segment: { index, count, offset, length: Math.min(segmentBytes, disk.sizeBytes - offset) } });
    }
  }
  return items;
}

const sumStats = (a: TransferStats, b: TransferStats): TransferStats => ({
  bytesScanned: a.bytesScanned + b.bytesScanned,
  bytesNew: a.bytesNew + b.bytesNew,
  bytesZero: a.bytesZero + b.bytesZero,
  bytesUnallocated: (a.bytesUnallocated ?? 0) + (b.bytesUnallocated ?? 0),
  bytesUnchanged: (a.bytesUnchanged ?? 0) + (b.bytesUnchanged ?? 0),
  bytesRead: (a.bytesRead ?? 0) + (b.bytesRead ?? 0),
  bytesUploaded: a.bytesUploaded + b.bytesUploaded,
  bytesStored: a.bytesStored + b.bytesStored,
  chunks: a.chunks + b.chunks,
  zeroChunks: a.zeroChunks + b.zeroChunks,
  parentChunks: a.parentChunks + b.parentChunks,
  dedupedChunks: a.dedupedChunks + b.dedupedChunks,
  uploadedChunks: a.uploadedChunks + b.uploadedChunks,
  storageRetries: (a.storageRetries ?? 0) + (b.storageRetries ?? 0),
  // Segments run in parallel: the disk took as long as its slowest segment.
  seconds: Math.max(a.seconds, b.seconds),
});

export async function joinSegments(input: { job: VmJob; transfers: DiskResult[] }, repository: Repository): Promise<DiskResult[]> {
  const { job } = input;
  const byDisk = new Map<string, DiskResult[]>();
  for (const t of input.transfers) byDisk.set(t.diskId, [...(byDisk.get(t.diskId) ?? []), t]);
  const out: DiskResult[] = [];
  for (const disk of job.snapshot?.disks ?? []) {
    const parts = byDisk.get(disk.diskId) ?? [];
    const whole = parts.find((p) => !p.segment);
    if (whole) {
      out.push(whole);
      continue;
    }
    const count = parts[0]?.segment?.count ?? 0;
    const indexes = new Set(parts.map((p) => p.segment!.index));
    if (count === 0 || indexes.size !== count || parts.length !== count) {
      throw new Corrupt(
        `disk '${disk.diskId}' of backup ${job.backupId}: expected ${count || 'its'} segment results, got segments [${[...indexes].sort().join(', ')}]`,
      );
    }
    parts.sort((a, b) => a.segment!.index - b.segment!.index);
    // The disk's manifest names the segments' pieces as they are: no entry is read or written again.
    const head: ManifestHead = {
      version: 3,
      backupId: job.backupId,
      diskId: disk.diskId,
      sizeBytes: disk.sizeBytes,
      chunkSize: job.repository.chunkSize,
      from: 0,
      to: Math.ceil(disk.sizeBytes / job.repository.chunkSize),
      owners: [],
      pieces: [],
    };
    for (const part of parts) {
      const seg = part.segment!;
      const id = segmentManifestId(disk.diskId, seg.index);
      const m = await repository.openManifest(job.backupId, id);
      if (!m) throw new Corrupt(`segment manifest ${objectKeys.manifest(job.backupId, id)} is missing: the segment's transfer did not finish`);
      if (m.info.chunkSize !== head.chunkSize || m.info.sizeBytes !== disk.sizeBytes)
        throw new Corrupt(`segment manifest ${id} of backup ${job.backupId} does not match its disk`);
      const pieces = segmentPieces(m);
      const first = seg.offset / head.chunkSize;
      const end = Math.ceil((seg.offset + seg.length) / head.chunkSize);
      if (m.info.from !== first || m.info.to !== end)
        throw new Corrupt(`segment manifest ${id} of backup ${job.backupId} covers chunks ${m.info.from} to ${m.info.to}, its segment ${first} to ${end}`);
      for (const p of pieces) {
        let owner = head.owners.indexOf(p.owner);
        if (owner < 0) owner = head.owners.push(p.owner) - 1;
        head.pieces.push([owner, p.firstChunk, p.count, p.bytes]);
      }
    }
    // Checked as any reader checks it (the segments cover the disk, each once, in order) before it is stored.
    checkHead(JSON.parse(JSON.stringify(head)) as Record<string, unknown>, job.backupId, disk.diskId);
    const headBytes = await repository.putManifestHead(head);
    const manifestKey = objectKeys.manifest(job.backupId, disk.diskId);
    const stats = parts.map((p) => p.stats).reduce(sumStats);
    // Segments share their snapshot's change tracking: any segment that could not use it says why.
    const tracking = parts.find((p) => p.changeTracking?.used === false)?.changeTracking ?? parts[0]!.changeTracking;
    out.push({
      diskId: disk.diskId,
      sizeBytes: disk.sizeBytes,
      manifestKey,
      stats: { ...stats, bytesStored: stats.bytesStored + headBytes },
      ...(tracking ? { changeTracking: tracking } : {}),
    });
  }
  return out;
}

export const planDispatchInput = z.looseObject({ job: vmJob });
export const joinSegmentsInput = z.looseObject({ job: vmJob, transfers: z.array(diskResult) });

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanDispatch', planDispatchInput, async ({ job }) => planDispatch(job)),
    joinHandler: lambdaHandler('JoinSegments', joinSegmentsInput, async (input) => {
      const { bucket, endpoint } = input.job.repository;
      return joinSegments(input, await c.repository(bucket, endpoint));
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, joinHandler } = fromEnvironment(makeHandlers);
