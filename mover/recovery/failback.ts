/**
 * Failback's data step on a production mover: a production disk brought from backup
 * `from` to backup `to` by writing only what differs. Both manifests are streamed side by
 * side (ManifestCursor: memory stays flat whatever the disk's size); the chunks to write
 * are fetched from the `to` side's repository (the DR repository, across the WAN), opened
 * and checked against their id before they are written.
 *
 * `hash` mode reads every production chunk and writes where its keyed id differs from the
 * target's. For a disk that still holds `from` that writes exactly the chunks whose ids
 * differ between the two manifests; a disk that no longer matches `from` (changed by hand,
 * restored from another backup) is counted as drift and still made equal to `to`: the full
 * compare-and-write. `trust` mode reads nothing and writes the manifests' difference only:
 * for the final delta, during the outage, onto a disk this failback just made equal to `from`.
 */
import { createHash } from 'node:crypto';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { Corrupt } from '../../contracts/errors.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { FailbackDiskResult } from '../../contracts/failback.ts';
import { isZero } from '../../repository/format.ts';
import type { ManifestEntry, ManifestReader } from '../../repository/types.ts';
import type { Repository } from '../../repository/open.ts';

export interface DeltaSide {
  /** The repository holding `backupId` (production and DR repositories share the master key, as replication makes them). */
  repository: Repository;
  backupId: string;
  /** Named in errors: `production repository lifeboat-primary`. */
  what: string;
}

export interface DiskDeltaInput {
  /** The production disk (a raw image or block device), written in place. */
  path: string;
  diskId: string;
  from: DeltaSide;
  to: DeltaSide;
  mode: 'hash' | 'trust';
  signal?: AbortSignal;
  onProgress?: (p: { diskId: string; chunksDone: number; chunks: number; chunksWritten: number }) => void;
}

async function reader(side: DeltaSide, diskId: string): Promise<ManifestReader> {
  const r = await side.repository.openManifest(side.backupId, diskId);
  if (!r) throw new Corrupt(`the manifest of disk '${diskId}' of backup ${side.backupId} is missing from the ${side.what}`);
  return r;
}

async function readFully(fh: FileHandle, view: Buffer, offset: number): Promise<void> {
  let got = 0;
  while (got < view.length) {
    const { bytesRead } = await fh.read(view, got, view.length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  view.fill(0, got); // past the end reads as zeros
}

/** The target chunk `e` at `offset`, fetched and checked; the sealed bytes fetched. */
async function fetchChunk(d: DiskDeltaInput, e: ManifestEntry, offset: number, length: number): Promise<{ data: Buffer; sent: number }> {
  if (e.id === null) return { data: Buffer.alloc(length), sent: 0 };
  const at = e.location!;
  const where = `chunk ${e.id} in ${at.key} (disk '${d.diskId}', offset ${offset}) in the ${d.to.what}`;
  const body = await d.to.repository.readChunk(at);
  if (!body) throw new Corrupt(`${where} is missing`);
  let data: Buffer;
  try {
    data = await d.to.repository.open(body, e.id);
  } catch (err) {
    throw new Corrupt(`${where} is damaged: ${(err as Error).message}`, err);
  }
  if (data.length !== length || d.to.repository.chunkId(data) !== e.id) throw new Corrupt(`${where} does not match its id`);
  return { data, sent: body.length };
}

export async function applyDiskDelta(d: DiskDeltaInput): Promise<FailbackDiskResult> {
  const started = performance.now();
  const [from, to] = await Promise.all([reader(d.from, d.diskId), reader(d.to, d.diskId)]);
  const f = from.info;
  const t = to.info;
  if (f.chunkSize !== t.chunkSize) {
    throw new RecoveryRequestInvalid(
      `disk '${d.diskId}': backup ${d.from.backupId} has ${f.chunkSize}-byte chunks and backup ${d.to.backupId} ${t.chunkSize}-byte chunks, so their chunk ids cannot be compared; give the DR-site policy the production repository's chunk size`,
    );
  }
  if (f.sizeBytes !== t.sizeBytes) {
    throw new RecoveryRequestInvalid(
      `disk '${d.diskId}' is ${f.sizeBytes} bytes in backup ${d.from.backupId} and ${t.sizeBytes} bytes in backup ${d.to.backupId}: it was resized at the DR site; resize the production disk to ${t.sizeBytes} bytes first`,
    );
  }
  let fh: FileHandle;
  try {
    fh = await openFile(d.path, 'r+');
  } catch (err) {
    throw new RecoveryRequestInvalid(`cannot open the production disk '${d.diskId}' at ${d.path} for writing: ${(err as Error).message}`);
  }
  const r: FailbackDiskResult = {
    diskId: d.diskId,
    path: d.path,
    fromBackupId: d.from.backupId,
    toBackupId: d.to.backupId,
    mode: d.mode,
    chunks: t.to - t.from,
    chunksChanged: 0,
    bytesChanged: 0,
    chunksDrifted: 0,
    chunksWritten: 0,
    bytesWritten: 0,
    bytesSent: 0,
    sha256: null,
    seconds: 0,
  };
  const fromCursor = from.cursor();
  const toCursor = to.cursor();
  const whole = d.mode === 'hash' ? createHash('sha256') : undefined;
  try {
    const st = await fh.stat();
    if (st.isFile() && st.size !== t.sizeBytes) {
      throw new RecoveryRequestInvalid(
        `the production disk '${d.diskId}' at ${d.path} is ${st.size} bytes, the DR VM's disk ${t.sizeBytes}: resize it to ${t.sizeBytes} bytes first (qemu-img resize)`,
      );
    }
    const buf = Buffer.alloc(t.chunkSize);
    for (let i = 0; i < r.chunks; i++) {
      d.signal?.throwIfAborted();
      const offset = i * t.chunkSize;
      const length = Math.min(t.chunkSize, t.sizeBytes - offset);
      const [b, e] = [(await fromCursor.at(i))!, (await toCursor.at(i))!];
      if (b.id !== e.id) {
        r.chunksChanged++;
        r.bytesChanged += length;
      }
      let write = b.id !== e.id;
      let view: Buffer = buf.subarray(0, length);
      if (d.mode === 'hash') {
        await readFully(fh, view, offset);
        const have = isZero(view) ? null : d.to.repository.chunkId(view);
        if (have !== b.id) r.chunksDrifted++;
        write = have !== e.id;
      }
      if (write) {
        const { data, sent } = await fetchChunk(d, e, offset, length);
        await fh.write(data, 0, length, offset);
        r.chunksWritten++;
        r.bytesWritten += length;
        r.bytesSent += sent;
        view = data;
      }
      whole?.update(view);
      if ((i + 1) % 64 === 0 || i + 1 === r.chunks) d.onProgress?.({ diskId: d.diskId, chunksDone: i + 1, chunks: r.chunks, chunksWritten: r.chunksWritten });
    }
    await fh.sync();
  } finally {
    await Promise.all([fromCursor.close(), toCursor.close()]);
    await fh.close();
  }
  r.sha256 = whole ? whole.digest('hex') : null;
  r.seconds = (performance.now() - started) / 1000;
  return r;
}
