import type { DiscoveredVm } from '../../contracts/discovery.ts';
import type { DiskRef, QuiesceSettings, SnapshotResult } from '../../contracts/jobs.ts';

/** A part of a disk that may hold data (everything outside every extent reads as zeros). */
export interface Extent {
  offset: number;
  length: number;
}

/** What a snapshot is asked for: the VM, the backup, and the parent it may read changes since. */
export interface SnapshotRequest {
  /** Where the driver finds the VM: a folder (folder driver), a domain name or UUID (libvirt). */
  source: string;
  backupId: string;
  parentBackupId?: string | null;
  /** The parent backup's checkpoint: a driver that tracks changes offers those since it. */
  parentCheckpoint?: string | null;
  /** Commands run in the guest around the freeze (drivers with a guest agent). */
  quiesce?: QuiesceSettings;
}

/**
 * A hypervisor source driver: freezes a VM's disks, hands out readers for them and
 * releases the freeze. Every method must be safe to call again (tasks are retried).
 * Hypervisor-neutral: libvirt (`libvirt/`) and the folder of images (`folder.ts`) today,
 * vSphere (VDDK/NBD) fits the same shape.
 */
/** What a snapshot may be given: hypervisor-neutral, every driver honours both. */
export interface SnapshotOptions {
  /** Aborted when the task times out or is stopped: the driver stops its work (kills any tool it started) and rejects. */
  signal?: AbortSignal;
  /** Called when the snapshot makes progress (a copy grew), so a long one is not taken for a stalled one. */
  progress?: () => void;
}

export interface SourceDriver {
  snapshot(req: SnapshotRequest, options?: SnapshotOptions): Promise<SnapshotResult>;
  /** Opens a frozen disk for reading. */
  openDisk(disk: DiskRef): Promise<DiskReader>;
  /** Releases the snapshot; a no-op when it is already gone. */
  release(req: { source: string }, snapshot: SnapshotResult): Promise<void>;
  /**
   * Releases whatever snapshot this driver made for `backupId`, without its handle: the
   * cleanup of a backup whose Snapshot task never returned (the mover or the control
   * plane died meanwhile). A no-op when there is none.
   */
  releaseBackup?(req: { source: string }, backupId: string): Promise<void>;
}

/**
 * A driver that can list its host's VMs (the Discover workflow): the names first, then each
 * VM's facts, so a host of many VMs is described a page at a time.
 */
export interface VmInventory {
  vmNames(opts?: { signal?: AbortSignal }): Promise<string[]>;
  /** Undefined: the VM disappeared since it was listed. */
  describeVm(name: string, opts?: { signal?: AbortSignal }): Promise<DiscoveredVm | undefined>;
}

/** The driver's inventory, when it has one (the folder driver has none: its VMs are added by hand). */
export function inventoryOf(driver: SourceDriver): VmInventory | undefined {
  const d = driver as Partial<VmInventory>;
  return typeof d.vmNames === 'function' && typeof d.describeVm === 'function' ? (driver as unknown as VmInventory) : undefined;
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
  /**
   * The parts of the disk written since the checkpoint the disk's `changeTracking` names,
   * in order (a dirty bitmap). Undefined: the source cannot tell, and every byte is read.
   */
  changed?(): Promise<Extent[] | undefined>;
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
