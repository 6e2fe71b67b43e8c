import type { DiskRef, SnapshotResult } from '../../core/jobs.ts';

/** A part of a disk that may hold data (everything outside every extent reads as zeros). */
export interface Extent {
  offset: number;
  length: number;
}

/**
 * A hypervisor source driver: freezes a VM's disks, hands out readers for them and
 * releases the freeze. Every method must be safe to call again (tasks are retried).
 */
/** What a snapshot may be given: hypervisor-neutral, every driver honours both. */
export interface SnapshotOptions {
  /** Aborted when the task times out or is stopped: the driver stops its work (kills any tool it started) and rejects. */
  signal?: AbortSignal;
  /** Called when the snapshot makes progress (a copy grew), so a long one is not taken for a stalled one. */
  progress?: () => void;
}

export interface SourceDriver {
  snapshot(source: string, backupId: string, options?: SnapshotOptions): Promise<SnapshotResult>;
  /** Opens a frozen disk for reading. */
  openDisk(disk: DiskRef): Promise<DiskReader>;
  /** Releases the snapshot; a no-op when it is already gone. */
  release(source: string, snapshot: SnapshotResult): Promise<void>;
}

export interface DiskReader {
  readonly sizeBytes: number;
  /** Reads up to `length` bytes at `offset` into `buf`; returns the count read. */
  read(buf: Buffer, offset: number, length: number): Promise<number>;
  /**
   * The parts of the disk that may hold data, in order; every other byte reads as zeros
   * and is not read (a thin disk's holes). Undefined, or a method resolving to undefined:
   * the source cannot tell, and every byte is read.
   */
  allocated?(): Promise<Extent[] | undefined>;
  close(): Promise<void>;
}

/**
 * Whether [offset, offset + length) meets any of `extents` (in order, not overlapping):
 * a binary search, so a disk of millions of chunks needs no per-chunk map.
 */
export function holdsData(extents: readonly Extent[], offset: number, length: number): boolean {
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = extents[mid]!;
    if (e.offset + e.length <= offset) lo = mid + 1;
    else hi = mid;
  }
  const first = extents[lo];
  return first !== undefined && first.offset < offset + length;
}
