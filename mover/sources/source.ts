import type { DiskRef, SnapshotResult } from '../../core/jobs.ts';

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
  close(): Promise<void>;
}
