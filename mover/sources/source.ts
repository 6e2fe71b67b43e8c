import type { DiskRef, SnapshotResult } from '../../core/jobs.ts';
import type { Extent } from './allocation.ts';

/**
 * A hypervisor source driver: freezes a VM's disks, hands out readers for them and
 * releases the freeze. Every method must be safe to call again (tasks are retried).
 */
export interface SourceDriver {
  snapshot(source: string, backupId: string): Promise<SnapshotResult>;
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
