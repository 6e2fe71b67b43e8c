/** What the mover gives its recovery tasks (restore, verify, replicate, DR, failback): repositories, logging, limits, its work folder. */
import type { RepositoryLocation } from '../../contracts/endpoints.ts';
import type { Repository } from '../../repository/open.ts';
import type { Logger } from '../worker.ts';

export interface RecoveryTaskDeps {
  /** The repository a task names, opened once per process. */
  repository(repository: RepositoryLocation): Promise<Repository>;
  logger: Logger;
  parallelism: number;
  /** Bytes of a restore's reads in flight (default: mover/pipeline/restore-disk.ts RESTORE_DEFAULTS). */
  restoreInFlightBytes?: number;
  /** The mover's work folder: restore tests run under `<workDir>/restore-tests`; restores into a storage pool keep their records and raw copies there. */
  workDir: string;
  /** This mover's name, and how often a restore's or verification's disk writes its progress object (contracts/progress.ts; default 5 s). */
  moverName?: string;
  progressEveryMs?: number;
}
