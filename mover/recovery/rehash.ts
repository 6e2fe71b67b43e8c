/**
 * The final check of a restore: read back what was written, recompute every chunk's
 * keyed id and compare it with the manifest (all-zero where the manifest has a hole),
 * and compute the SHA-256 of the whole disk. One buffer of about 4 MiB: memory stays flat.
 */
import { createHash } from 'node:crypto';
import { open as openFile } from 'node:fs/promises';
import { isZero } from '../../repository/format.ts';
import type { Repository } from '../../repository/open.ts';
import type { ManifestReader } from '../../repository/types.ts';
import { RestoreMismatch } from '../../contracts/recovery-errors.ts';

/** Bytes re-read at once (whole chunks). */
const BLOCK_BYTES = 4 * 1024 * 1024;

export interface RehashResult {
  chunksVerified: number;
  /** Hex SHA-256 of the disk as written. */
  sha256: string;
}

/**
 * `device`: the target is written in place and may be larger than the disk (a block
 * device reports size 0 to stat); only its first `sizeBytes` are checked. The manifest is
 * read a batch (a format-3 piece) at a time.
 */
export async function rehashDisk(o: {
  /** Whose keyed ids the manifest names. */
  repository: Pick<Repository, 'chunkId'>;
  manifest: ManifestReader;
  path: string;
  device?: boolean;
  signal?: AbortSignal;
  onProgress?: (bytesDone: number) => void;
}): Promise<RehashResult> {
  const { backupId, diskId, sizeBytes, chunkSize } = o.manifest.info;
  const fh = await openFile(o.path, 'r');
  try {
    const st = await fh.stat();
    const size = st.size;
    if (o.device ? st.isFile() && size < sizeBytes : size !== sizeBytes)
      throw new RestoreMismatch(`disk '${diskId}' of backup ${backupId}: ${o.path} is ${size} bytes, the backup's disk is ${sizeBytes}`);
    // Read in blocks of whole chunks (about 4 MiB): one read per block, not per chunk.
    const perBlock = Math.max(1, Math.floor(BLOCK_BYTES / chunkSize));
    const buf = Buffer.alloc(perBlock * chunkSize);
    const whole = createHash('sha256');
    let chunksVerified = 0;
    for await (const b of o.manifest.batches()) {
      for (let k0 = 0; k0 < b.count; k0 += perBlock) {
        o.signal?.throwIfAborted();
        const start = (b.firstChunk + k0) * chunkSize;
        const length = Math.min(Math.min(perBlock, b.count - k0) * chunkSize, sizeBytes - start);
        let got = 0;
        while (got < length) {
          const { bytesRead } = await fh.read(buf, got, length - got, start + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        if (got !== length) throw new RestoreMismatch(`disk '${diskId}' of backup ${backupId}: ${o.path} ended at offset ${start + got} while re-reading`);
        for (let at = 0, k = k0; at < length; at += chunkSize, k++) {
          const offset = start + at;
          const view = buf.subarray(at, Math.min(at + chunkSize, length));
          const expected = b.id(k);
          if (expected === null) {
            if (!isZero(view))
              throw new RestoreMismatch(`disk '${diskId}' of backup ${backupId}: ${o.path} at offset ${offset} holds data where the backup has zeros`);
          } else if (o.repository.chunkId(view) !== expected) {
            const loc = b.location(k)!;
            const stored = `${loc.key}${loc.pack ? ` bytes ${loc.offset}+${loc.length}` : ''}`;
            throw new RestoreMismatch(
              `disk '${diskId}' of backup ${backupId}: ${o.path} at offset ${offset} does not match chunk ${expected} (stored in ${stored}; written wrong, or changed since)`,
            );
          }
          chunksVerified++;
        }
        whole.update(buf.subarray(0, length));
        o.onProgress?.(start + length);
      }
    }
    return { chunksVerified, sha256: whole.digest('hex') };
  } finally {
    await fh.close();
  }
}
