/**
 * PlanDispatch and JoinSegments, around the Dispatch map of the Backup workflow.
 *
 * PlanDispatch turns a snapshot's disks into transfer items: a disk up to the job's
 * segment size is one item; a larger one is cut into chunk-aligned segments, each its
 * own activity task, so several movers of the group read one disk in parallel.
 * JoinSegments merges the segments' manifests into the disk's manifest (written to the
 * repository before Verify reads it) and their counters into one result per disk.
 */
import { z } from 'zod';
import { BadTaskInput, Corrupt } from '../../contracts/errors.ts';
import { decodeManifest, encodeManifest, keys, MANIFEST_VERSION, objectCrc32, type RepositoryKeys } from '../../repository/format.ts';
import { chunkLocation, packedManifest, type ChunkLocation } from '../../repository/packs.ts';
import { type DiskResult, diskResult, type DispatchItem, segmentManifestId, type TransferStats, type VmJob, vmJob } from '../../contracts/jobs.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

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
  bytesScanned: a.bytesScanned + b.bytesScanned, bytesNew: a.bytesNew + b.bytesNew, bytesZero: a.bytesZero + b.bytesZero,
  bytesUnallocated: (a.bytesUnallocated ?? 0) + (b.bytesUnallocated ?? 0),
  bytesUnchanged: (a.bytesUnchanged ?? 0) + (b.bytesUnchanged ?? 0), bytesRead: (a.bytesRead ?? 0) + (b.bytesRead ?? 0),
  bytesUploaded: a.bytesUploaded + b.bytesUploaded, bytesStored: a.bytesStored + b.bytesStored, chunks: a.chunks + b.chunks,
  zeroChunks: a.zeroChunks + b.zeroChunks, parentChunks: a.parentChunks + b.parentChunks, dedupedChunks: a.dedupedChunks + b.dedupedChunks,
  uploadedChunks: a.uploadedChunks + b.uploadedChunks, storageRetries: (a.storageRetries ?? 0) + (b.storageRetries ?? 0),
  // Segments run in parallel: the disk took as long as its slowest segment.
  seconds: Math.max(a.seconds, b.seconds),
});

export async function joinSegments(input: { job: VmJob; transfers: DiskResult[] }, deps: { store: ObjectStore; keys: RepositoryKeys }): Promise<DiskResult[]> {
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
      throw new Corrupt(`disk '${disk.diskId}' of backup ${job.backupId}: expected ${count || 'its'} segment results, got segments [${[...indexes].sort().join(', ')}]`);
    }
    parts.sort((a, b) => a.segment!.index - b.segment!.index);
    const base = { backupId: job.backupId, diskId: disk.diskId, sizeBytes: disk.sizeBytes, chunkSize: job.repository.chunkSize };
    const chunks: (string | null)[] = new Array(Math.ceil(disk.sizeBytes / base.chunkSize)).fill(null);
    const where = new Map<string, ChunkLocation>();
    for (const part of parts) {
      const seg = part.segment!;
      const id = segmentManifestId(disk.diskId, seg.index);
      const sealed = await deps.store.get(keys.manifest(job.backupId, id));
      if (!sealed) throw new Corrupt(`segment manifest ${keys.manifest(job.backupId, id)} is missing: the segment's transfer did not finish`);
      const m = await decodeManifest(deps.keys, sealed, job.backupId, id);
      if (m.chunkSize !== base.chunkSize || m.sizeBytes !== disk.sizeBytes) throw new Corrupt(`segment manifest ${id} of backup ${job.backupId} does not match its disk`);
      if (m.version !== MANIFEST_VERSION) throw new Corrupt(`segment manifest ${id} of backup ${job.backupId} has format ${m.version}, written by an older mover; run the backup again`);
      const first = seg.offset / base.chunkSize;
      const end = Math.ceil((seg.offset + seg.length) / base.chunkSize);
      for (let i = first; i < end; i++) {
        const c = m.chunks[i] ?? null;
        chunks[i] = c;
        if (c !== null && !where.has(c)) where.set(c, chunkLocation(m, c));
      }
    }
    const joined = packedManifest(base, chunks, (c) => where.get(c)!);
    const sealed = await encodeManifest(deps.keys, joined);
    const manifestKey = keys.manifest(job.backupId, disk.diskId);
    await deps.store.put(manifestKey, sealed, { crc32: objectCrc32(sealed) });
    const stats = parts.map((p) => p.stats).reduce(sumStats);
    // Segments share their snapshot's change tracking: any segment that could not use it says why.
    const tracking = parts.find((p) => p.changeTracking?.used === false)?.changeTracking ?? parts[0]!.changeTracking;
    out.push({ diskId: disk.diskId, sizeBytes: disk.sizeBytes, manifestKey, stats: { ...stats, bytesStored: stats.bytesStored + sealed.length }, ...(tracking ? { changeTracking: tracking } : {}) });
  }
  return out;
}

export const planDispatchInput = z.looseObject({ job: vmJob });
export const joinSegmentsInput = z.looseObject({ job: vmJob, transfers: z.array(diskResult) });

export const planHandler = lambdaHandler('PlanDispatch', planDispatchInput, async ({ job }) => planDispatch(job));
export const joinHandler = lambdaHandler('JoinSegments', joinSegmentsInput, async (input) => {
  const c = clients();
  const { bucket, endpoint } = input.job.repository;
  return joinSegments(input, { store: c.store(bucket, endpoint), keys: await c.repositoryKeys(bucket, endpoint) });
});
