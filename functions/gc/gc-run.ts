/**
 * One garbage collection's state, shared by its phases (gc.ts runs them in order): the
 * request, the report being filled in, the marks, the index as read after the mark, and
 * what is under Object Lock retention (objects, and index objects this run wrote).
 */
import type { z } from 'zod';
import { emptyReport, type GcReport } from '../../contracts/gc-report.ts';
import type { ListedObject, RepositoryAdmin } from '../../repository/admin.ts';
import type { Repository } from '../../repository/open.ts';
import type { ConsolidationSettings } from '../../repository/maintenance/consolidate.ts';
import { IndexMap, type IndexEntry } from '../../repository/maintenance/index-map.ts';
import { markNew, noMarks, type Marks } from '../../repository/maintenance/mark.ts';
import type { RetentionReader } from '../../repository/object-lock.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import type { GcLease } from './gc-lease.ts';
import type { gcRequest } from './gc-request.ts';

export interface GcDeps {
  admin: RepositoryAdmin;
  repository: Repository;
  recovery?: RecoveryCatalog;
  /** Backups running now (`vmId/backupId`); the sweep deletes only while there are none. */
  running?: () => Promise<string[]>;
  now: () => Date;
  /** Keys deleted per request and per manifest re-check. */
  batchSize?: number;
  /** When and how far index objects are merged (default CONSOLIDATION). */
  consolidation?: ConsolidationSettings;
  /** Milliseconds the invocation has left (Lambda's context); consolidation stops in time. */
  remainingMs?: () => number;
  /** The repository's GC lease (none: nothing guards against a second collection). */
  lease?: GcLease;
  /** Every backup's status in the catalog, by backup id: failed backups' manifests are garbage (repository/maintenance/mark.ts). */
  backupStatuses?: () => Promise<Map<string, string>>;
  /**
   * Object Lock retention as the store reports it (HEAD). With `objectLockDays`, every
   * candidate whose default retention has run out is asked: lock extension
   * (gc/extend-locks.ts) may have set it later.
   */
  locks?: RetentionReader;
}

export const HOUR_MS = 3_600_000;

export class GcRun {
  readonly deps: GcDeps;
  readonly gcId: string;
  readonly request: z.output<typeof gcRequest>;
  readonly started: Date;
  readonly report: GcReport;
  /** Objects younger than this (ms since the epoch) are in the grace period. */
  readonly graceEdge: number;
  /** Every backup's status in the catalog, by backup id. */
  readonly statuses: Map<string, string>;
  /** Manifests marked so far. */
  readonly seen = new Set<string>();
  readonly marks: Marks = noMarks();
  /** The index as read after the mark (a pack a manifest names was indexed before the manifest was written). */
  index = new IndexMap();
  /** Index objects this run wrote, under retention from now on when the repository locks objects. */
  readonly lockedIndexes = new Set<string>();
  /** Index objects this run wrote (never merged by the same run: an entry moves once a run). */
  readonly writtenIndexes = new Set<string>();
  /** Packs an index object lists that are stored (listed under `packs/` after the index was read). */
  readonly storedPacks = new Set<string>();
  private firstExpiry = Infinity;

  private constructor(gcId: string, request: z.output<typeof gcRequest>, deps: GcDeps, started: Date, statuses: Map<string, string>) {
    this.deps = deps;
    this.gcId = gcId;
    this.request = request;
    this.started = started;
    const graceHours = request.graceHours ?? 48;
    this.report = emptyReport(gcId, request.bucket, request.dryRun === true, started, graceHours);
    this.graceEdge = started.getTime() - graceHours * HOUR_MS;
    this.statuses = statuses;
  }

  /** A collection starting now; a deferred one goes on counting its deferrals from its record. */
  static async start({ gcId, request }: { gcId: string; request: z.output<typeof gcRequest> }, deps: GcDeps): Promise<GcRun> {
    const started = deps.now();
    const previous = await deps.recovery?.getRecord('GC', gcId);
    const statuses = (await deps.backupStatuses?.()) ?? new Map<string, string>();
    const run = new GcRun(gcId, request, deps, started, statuses);
    run.report.deferrals = (previous?.deferrals as number | undefined) ?? 0;
    return run;
  }

  /** Marks what the manifests not seen yet reference; `late` is told each object they name. Returns how many were read. */
  markNew(marks: Marks, late?: (manifest: string, key: string) => void): Promise<number> {
    const markDeps = { ...this.deps, backupStatus: (id: string) => this.statuses.get(id) };
    return markNew(markDeps, this.seen, marks, late, { unreadable: this.report.unreadableManifests });
  }

  /** The report's counts for the object's kind. */
  countsOf(key: string) {
    return key.startsWith('packs/') ? this.report.packs : this.report.chunks;
  }

  /** Until when the repository's default retention locks an object written then (-Infinity: no Object Lock). */
  lockedUntil(lastModified: Date): number {
    return this.request.objectLockDays ? lastModified.getTime() + this.request.objectLockDays * 24 * HOUR_MS : -Infinity;
  }

  /** Counts an object kept because it is under retention until `until`. */
  lock(o: ListedObject, until: number): void {
    const { locked } = this.report;
    locked.count++;
    locked.bytes += o.size;
    this.firstExpiry = Math.min(this.firstExpiry, until);
    if (locked.sample.length < 10) locked.sample.push(o.key);
  }

  /** Notes in the report when the first retention that kept an object runs out. */
  noteFirstExpiry(): void {
    if (this.firstExpiry !== Infinity) this.report.locked.firstExpiry = new Date(this.firstExpiry).toISOString();
  }

  /** When an index object listing this pack is under retention: until when (it cannot be replaced before). */
  indexLock(packId: string): number | undefined {
    const now = this.started.getTime();
    let until: number | undefined;
    for (const e of this.index.listing(packId)) {
      const t = this.lockedIndexes.has(e.indexId) ? now + this.request.objectLockDays! * 24 * HOUR_MS : this.lockedUntil(e.lastModified);
      if (t > now) until = Math.max(until ?? t, t);
    }
    return until;
  }

  /** Notes index objects this run wrote. */
  wrote(ids: readonly string[]): void {
    for (const id of ids) {
      this.writtenIndexes.add(id);
      if (this.request.objectLockDays) this.lockedIndexes.add(id);
    }
  }

  /** An index object consolidation may merge: read by this run (not written by it), not under retention. */
  mergeable(e: IndexEntry): boolean {
    return !this.writtenIndexes.has(e.indexId) && this.lockedUntil(e.lastModified) <= this.started.getTime();
  }

  /** Seconds since the collection started. */
  seconds(): number {
    return (this.deps.now().getTime() - this.started.getTime()) / 1000;
  }
}
