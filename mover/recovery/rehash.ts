/**
 * The final check of a restore: read back what was written, recompute every chunk's
 * keyed id and compare it with the manifest (all-zero where the manifest has a hole),
 * and compute the SHA-256 of the whole disk. One chunk-sized buffer: memory stays flat.
 */
import { createHash } from 'node:crypto';
import { open as openFile } from 'node:fs/promises';
import { chunkId, isZero, type Manifest, type RepositoryKeys } from '../../repository/format.ts';
import { chunkLocation } from '../../repository/packs.ts';
import { RestoreMismatch } from '../../contracts/recovery-errors.ts';

export interface RehashResult {
  chunksVerified: number;
  /** Hex SHA-256 of the disk as written. */
  sha256: string;
}

/**
 * `device`: the target is written in place and may be larger than the disk (a block
 * device reports size 0 to stat); only its first `sizeBytes` are checked.
 */
export async function rehashDisk(o: { keys: RepositoryKeys; manifest: Manifest; path: string; device?: boolean; signal?: AbortSignal; onProgress?: (bytesDone: number) => void }): Promise<RehashResult> {
  const m = o.manifest;
  const fh = await openFile(o.path, 'r');
  try {
    const st = await fh.stat();
    const size = st.size;
    if (o.device ? st.isFile() && size < m.sizeBytes : size !== m.sizeBytes) throw new RestoreMismatch(`disk '${m.diskId}' of backup ${m.backupId}: ${o.path} is ${size} bytes, the backup's disk is ${m.sizeBytes}`);
    const buf = Buffer.alloc(m.chunkSize);
    const whole = createHash('sha256');
    let chunksVerified = 0;
    for (let i = 0; i < m.chunks.length; i++) {
      o.signal?.throwIfAborted();
      const offset = i * m.chunkSize;
      const length = Math.min(m.chunkSize, m.sizeBytes - offset);
      const view = buf.subarray(0, length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(view, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got !== length) throw new RestoreMismatch(`disk '${m.diskId}' of backup ${m.backupId}: ${o.path} ended at offset ${offset + got} while re-reading`);
      const expected = m.chunks[i] ?? null;
      if (expected === null) {
        if (!isZero(view)) throw new RestoreMismatch(`disk '${m.diskId}' of backup ${m.backupId}: ${o.path} at offset ${offset} holds data where the backup has zeros`);
      } else if (chunkId(o.keys, view) !== expected) {
        const at = chunkLocation(m, expected);
        const stored = `${at.key}${at.pack ? ` bytes ${at.offset}+${at.length}` : ''}`;
        throw new RestoreMismatch(`disk '${m.diskId}' of backup ${m.backupId}: ${o.path} at offset ${offset} does not match chunk ${expected} (stored in ${stored}; written wrong, or changed since)`);
      }
      chunksVerified++;
      whole.update(view);
      o.onProgress?.(offset + length);
    }
    return { chunksVerified, sha256: whole.digest('hex') };
  } finally {
    await fh.close();
  }
}
