/**
 * The file or device a disk is restored into, written in large runs, a few at once. A
 * restore places neighbouring chunks side by side in a shared buffer and hands each such
 * run here (restore-disk.ts): the kernel sees a few multi-MiB positional writes instead of
 * one per chunk. Up to WRITES_IN_FLIGHT of them are under way at once, so the restore's
 * threads that decrypt and decompress never wait for one write to reach the storage before
 * the next is issued, and a device (or a file whose blocks are allocated) gets a queue of
 * them. The writes run on libuv's thread pool, whose other work during a restore is the
 * flushes below (chunks are opened on worker threads and the main thread, not the pool).
 * What is written is flushed to storage as the restore goes (one flush at a time), so the
 * last flush, which the restore waits for, has little left.
 *
 * Runs from page-aligned memory at page-aligned offsets are written with O_DIRECT where
 * the target takes it: the bytes go from the restore's buffer to the storage, with no copy
 * into the page cache (the largest single cost of a buffered restore: bench/MEASUREMENTS.md)
 * and no 2 GiB of dirty pages for the flushes to write back. Everything else (a disk's
 * unaligned tail, zeros, small chunks) is written through the page cache as before.
 */
import { constants } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { Budget } from '../../core/concurrency.ts';

/** Offsets, lengths and memory of an O_DIRECT write are multiples of this (a page covers every logical block size in use). */
const DIRECT_ALIGN = 4096;

/**
 * Bytes written between two flushes (fdatasync) of the target during a restore: flushing on
 * the way costs no more than flushing only at the end (bench/MEASUREMENTS.md).
 */
const FLUSH_BYTES = 256 * 1024 * 1024;

/**
 * Writes under way at once. libuv's pool has 4 threads (UV_THREADPOOL_SIZE) and a restore
 * gives it nothing else but the flushes, so 3 writes and a flush never wait for a thread.
 * The caller holds each write's memory until it settles: it sizes its buffers by this.
 */
export const WRITES_IN_FLIGHT = 3;

const noop = (): void => {};

export class RestoreTarget {
  /** Writes issued (one per run of neighbouring chunks, or of zeros to a device). */
  writes = 0;
  /** Bytes written with O_DIRECT (not through the page cache). */
  directBytes = 0;
  private readonly slots = new Budget(WRITES_IN_FLIGHT);
  /** Writes asked for and not yet settled. */
  private readonly pending = new Set<Promise<void>>();
  private unflushed = 0;
  private flushing: Promise<void> | undefined;
  private flushFailure: unknown;
  private readonly fh: FileHandle;
  /** The target opened again with O_DIRECT, for aligned runs; undefined where the target refuses it. */
  private direct: FileHandle | undefined;
  /** The O_DIRECT handle once a write was refused: other writes may still be using it, so it is closed with the target. */
  private refused: FileHandle | undefined;
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

  /** Whether aligned runs still go around the page cache (false once the target refused an O_DIRECT write, or its open). */
  get writesDirect(): boolean {
    return this.direct !== undefined;
  }

  /**
   * Writes all of `bytes` at `position`, once fewer than WRITES_IN_FLIGHT writes are under
   * way (writes asked for at once may complete in any order: their ranges must not
   * overlap). Resolves once they are in the target (its page cache, or its storage),
   * rejects naming the range and the cause. `bytes` must stay unchanged until then.
   * `aligned`: `bytes` is a view of page-aligned memory (ChunkPool.shareAligned), so it
   * may go around the page cache.
   */
  write(bytes: Uint8Array, position: number, aligned = false): Promise<void> {
    const done = this.slots.take(1).then(() => this.writeAll(bytes, position, aligned).finally(() => this.slots.give(1)));
    const settled: Promise<void> = done.then(noop, noop).finally(() => this.pending.delete(settled));
    this.pending.add(settled);
    return done;
  }

  /** Every write asked for so far (and any asked for meanwhile) has settled. */
  private async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled(this.pending);
  }

  private async writeAll(bytes: Uint8Array, position: number, aligned: boolean): Promise<void> {
    this.writes++;
    let direct = 0;
    try {
      if (aligned && this.direct && [position, bytes.byteOffset, bytes.length].every((n) => n % DIRECT_ALIGN === 0))
        direct = await this.writeDirect(this.direct, bytes, position);
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
   * Writes what it can of `bytes` at `position` with O_DIRECT through `direct`: the bytes
   * written, whole pages. A target that refuses such a write (EINVAL: a file system or a
   * device with larger blocks, or none for O_DIRECT) is written through the page cache from
   * then on, this write's rest too.
   */
  private async writeDirect(direct: FileHandle, bytes: Uint8Array, position: number): Promise<number> {
    let at = 0;
    try {
      while (at < bytes.length) {
        const n = (await direct.write(bytes, at, bytes.length - at, position + at)).bytesWritten;
        if (n <= 0 || n % DIRECT_ALIGN !== 0) return at + Math.max(0, n);
        at += n;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      if (this.direct === direct) {
        this.direct = undefined;
        this.refused = direct;
      }
    }
    return at;
  }

  /** Cuts or extends a file target to `size` bytes, after the writes asked for before. */
  async truncate(size: number): Promise<void> {
    await this.idle();
    await this.fh.truncate(size);
  }

  /** Restored means on the target's storage, not in the page cache: waits for every write, then flushes. */
  async flushed(): Promise<void> {
    await this.idle();
    await this.flushing;
    await this.fh.datasync().catch((err: unknown) => {
      this.flushFailure ??= err;
    });
    if (this.flushFailure)
      throw new Error(`${this.label}: flushing ${this.path} to storage failed: ${(this.flushFailure as Error).message}`, { cause: this.flushFailure });
  }

  /** Closes the target once no write or flush is under way (also after a failed one). */
  async close(): Promise<void> {
    await this.idle();
    await this.flushing;
    await this.direct?.close();
    await this.refused?.close();
    await this.fh.close();
  }
}
