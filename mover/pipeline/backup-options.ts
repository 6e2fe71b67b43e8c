/** What `backupDisk` is given: one disk of a snapshot, its parent, the repository and its limits. */
import type { DiskRef, DiskSegment } from '../../contracts/jobs.ts';
import type { Repository } from '../../repository/open.ts';
import type { RepositoryIndex } from '../../repository/types.ts';
import type { DiskReader } from '../sources/source.ts';
import type { ChunkPool } from './chunk-pool.ts';

export interface BackupDiskOptions {
  repository: Repository;
  reader: DiskReader;
  disk: DiskRef;
  backupId: string;
  chunkSize: number;
  /** The parent backup's manifest key for this disk, if any. */
  parentManifestKey?: string;
  parentBackupId?: string | null;
  /** Chunk ids quarantined by the control plane: never taken from the parent manifest (VmJob.healChunks). */
  healChunks?: ReadonlySet<string>;
  parallelism?: number;
  /** Worker threads for ids and sealing (default: the process-wide pool). */
  pool?: ChunkPool;
  /** zstd level for chunks (default CHUNK_ZSTD_LEVEL, 1: backup-chunk.ts). */
  compressionLevel?: number;
  /**
   * The repository's index, for chunks the parent does not have, asked for when the first
   * such chunk comes (default: the repository's `index`, refreshed).
   */
  index?: () => Promise<RepositoryIndex>;
  /** Pack size in bytes (default 8 MiB). */
  packBytes?: number;
  /** Transfer only this chunk-aligned part of the disk, to a segment manifest (see keys.segmentId). */
  segment?: DiskSegment | null;
  signal?: AbortSignal;
  onProgress?: (p: { bytesScanned: number; sizeBytes: number; bytesStored: number }) => void;
}
