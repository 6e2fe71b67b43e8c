/**
 * The file or device a disk is restored into, written in large runs, one write at a time.
 * A restore places neighbouring chunks side by side in a shared buffer and hands each such
 * run here (restore-disk.ts): the kernel sees a few multi-MiB positional writes instead of
 * one per chunk, and never two at once (concurrent writes into one file contend on its
 * inode lock: with ext4, two writers cost ~25x the kernel time of one, measured with dd).
 * The writes run on libuv's thread pool, so no thread that decrypts or decompresses ever
 * waits for the disk. What is written is flushed to storage as the restore goes (one
 * flush at a time), so the last flush, which the restore waits for, has little left.
 *
 * Runs from page-aligned memory at page-aligned offsets are written with O_DIRECT where
 * the target takes it: the bytes go from the restore's buffer to the storage, with no copy
 * into the page cache (the largest single cost of a buffered restore: bench/MEASUREMENTS.md)
 * and no 2 GiB of dirty pages for the flushes to write back. Everything else (a disk's
 * unaligned tail, zeros, small chunks) is written through the page cache as before.
 */
import { constants } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';

/** Offsets, lengths and memory of an O_DIRECT write are multiples of this (a page covers every logical block size in use). */
const DIRECT_ALIGN = 4096;

/**
 * Bytes written between two flushes (fdatasync) of the target during a restore: flushing on
 * the way costs no more than flushing only at the end (bench/MEASUREMENTS.md).
 */
const FLUSH_BYTES = 256 * 1024 * 1024;

export class RestoreTarget {
  /** Writes issued (one per run of neighbouring chunks, or of zeros to a device). */
  writes = 0;
  private queue: Promise<void> = Promise.resolve();
  private unflushed = 0;
  private flushing: Promise<void> | undefined;
  private flushFailure: unknown;
  private readonly fh: FileHandle;
  /** The target opened again with O_DIRECT, for aligned runs; undefined where the target refuses it (tmpfs). */
  private direct: FileHandle | undefined;
  private readonly path: string;
  /** Names the restore in errors (`disk 'd1'`). */
  private readonly label: string;

  private constructor(fh: FileHandle, direct: FileHandle | undefined, path: string, label: string) {
    this.fh = fh;
    this.direct = direct;
    this.path = path;
    this.label = label;
  }

  /** Opens `path`: a 'file' is created or truncated, a 'device' is written in place. */
  static async open(path: string, kind: 'file' | 'device', label: string): Promise<RestoreTarget> {
    const fh = await openFile(path, kind === 'device' ? 'r+' : 'w');
    const direct = await openFile(path, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
    return new RestoreTarget(fh, direct, path, label);
  }

  /** Bytes written with O_DIRECT (not through the page cache). */
  directBytes = 0;

  /**
   * Writes all of `bytes` at `position`, after every write asked for before it: resolves
   * once they are in the target (its page cache, or its storage), rejects naming the range
   * and the cause. `bytes` must stay unchanged until then. `aligned`: `bytes` is a view of
   * page-aligned memory (ChunkPool.shareAligned), so it may go around the page cache.
   */
  write(bytes: Uint8Array, position: number, aligned = false): Promise<void> {
    const done = this.queue.then(() => this.writeAll(bytes, position, aligned));
    this.queue = done.catch(() => {});
    return done;
  }

  private async writeAll(bytes: Uint8Array, position: number, aligned: boolean): Promise<void> {
    this.writes++;
    let direct = 0;
    try {
      if (aligned && this.direct && [position, bytes.byteOffset, bytes.length].every((n) => n % DIRECT_ALIGN === 0))
        direct = await this.writeDirect(bytes, position);
      for (let at = direct; at < bytes.length; ) at += (await this.fh.write(bytes, at, bytes.length - at, position + at)).bytesWritten;
    } catch (err) {
      throw new Error(`${this.label}: writing ${bytes.length} bytes at offset ${position} of ${this.path} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.directBytes += direct;
    this.unflushed += bytes.length - direct;
    if (this.unflushed >= FLUSH_BYTES && !this.flushing) {
      this.unflushed = 0;
      // A failed flush fails the restore at its end (Linux reports a writeback error to one flush only).
      this.flushing = this.fh
        .datasync()
        .catch((err: unknown) => {
          this.flushFailure ??= err;
        })
        .finally(() => {
          this.flushing = undefined;
        });
    }
  }

  /**
   * Writes what it can of `bytes` at `position` with O_DIRECT: the bytes written, whole
   * pages. A target that refuses such a write (EINVAL: a file system or a device with
   * larger blocks) is written through the page cache from then on.
   */
  private async writeDirect(bytes: Uint8Array, position: number): Promise<number> {
    let at = 0;
    try {
      while (at < bytes.length) {
        const n = (await this.direct!.write(bytes, at, bytes.length - at, position + at)).bytesWritten;
        if (n <= 0 || n % DIRECT_ALIGN !== 0) return at + Math.max(0, n);
        at += n;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      const direct = this.direct;
      this.direct = undefined;
      await direct?.close();
    }
    return at;
  }

  /** Cuts or extends a file target to `size` bytes, after the writes asked for before. */
  async truncate(size: number): Promise<void> {
    await this.queue;
    await this.fh.truncate(size);
  }

  /** Restored means on the target's storage, not in the page cache: waits for every write, then flushes. */
  async flushed(): Promise<void> {
    await this.queue;
    await this.flushing;
    await this.fh.datasync().catch((err: unknown) => {
      this.flushFailure ??= err;
    });
    if (this.flushFailure)
      throw new Error(`${this.label}: flushing ${this.path} to storage failed: ${(this.flushFailure as Error).message}`, { cause: this.flushFailure });
  }

  /** Closes the target once no write or flush is under way (also after a failed one). */
  async close(): Promise<void> {
    await this.queue;
    await this.flushing;
    await this.direct?.close();
    await this.fh.close();
  }
}
