/**
 * The file or device a disk is restored into, written in large runs, one write at a time.
 * A restore places neighbouring chunks side by side in a shared buffer and hands each such
 * run here (restore-disk.ts): the kernel sees a few multi-MiB positional writes instead of
 * one per chunk, and never two at once (concurrent writes into one file contend on its
 * inode lock: with ext4, two writers cost ~25x the kernel time of one, measured with dd).
 * The writes run on libuv's thread pool, so no thread that decrypts or decompresses ever
 * waits for the disk. What is written is flushed to storage as the restore goes (one
 * flush at a time), so the last flush, which the restore waits for, has little left.
 */
import { open as openFile, type FileHandle } from 'node:fs/promises';

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
  private readonly path: string;
  /** Names the restore in errors (`disk 'd1'`). */
  private readonly label: string;

  private constructor(fh: FileHandle, path: string, label: string) {
    this.fh = fh;
    this.path = path;
    this.label = label;
  }

  /** Opens `path`: a 'file' is created or truncated, a 'device' is written in place. */
  static async open(path: string, kind: 'file' | 'device', label: string): Promise<RestoreTarget> {
    return new RestoreTarget(await openFile(path, kind === 'device' ? 'r+' : 'w'), path, label);
  }

  /**
   * Writes all of `bytes` at `position`, after every write asked for before it: resolves
   * once they are in the target (its page cache), rejects naming the range and the cause.
   * `bytes` must stay unchanged until then.
   */
  write(bytes: Uint8Array, position: number): Promise<void> {
    const done = this.queue.then(() => this.writeAll(bytes, position));
    this.queue = done.catch(() => {});
    return done;
  }

  private async writeAll(bytes: Uint8Array, position: number): Promise<void> {
    this.writes++;
    try {
      for (let at = 0; at < bytes.length; ) at += (await this.fh.write(bytes, at, bytes.length - at, position + at)).bytesWritten;
    } catch (err) {
      throw new Error(`${this.label}: writing ${bytes.length} bytes at offset ${position} of ${this.path} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.unflushed += bytes.length;
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
    await this.fh.close();
  }
}
