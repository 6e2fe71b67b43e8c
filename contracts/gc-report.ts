/** What a garbage collection reports (functions/gc/gc.ts fills it in; the GC record in the catalog keeps it). */

/** Objects of one kind under one prefix, as the collection found and treated them. */
export interface SweptObjects {
  total: number;
  referenced: number;
  protectedByGrace: number;
  /** Deleted (or, on a dry run, that would be deleted). */
  deleted: number;
  /** Unreferenced when marked, then referenced by a manifest written during the sweep: kept. */
  spared: number;
}

export interface GcReport {
  gcId: string;
  bucket: string;
  dryRun: boolean;
  startedAt: string;
  graceHours: number;
  manifests: number;
  /** Format-1 chunk objects (`chunks/`). */
  chunks: SweptObjects;
  /** Format-2 packs (`packs/`). */
  packs: SweptObjects;
  /**
   * Index objects (`index/`): read, and replaced by a copy without the deleted packs
   * (`rewritten`) or deleted because they listed deleted packs only (`dropped`); on a dry
   * run, what would be.
   */
  index: {
    objects: number;
    rewritten: number;
    dropped: number;
    /**
     * Packs a manifest references that no index object listed (a replication stopped
     * between copying a pack and indexing it), now listed by new index objects; on a dry
     * run, how many there are.
     */
    reindexed: number;
  };
  /**
   * Small index objects merged into fewer, larger ones after the sweep (repository/maintenance/consolidate.ts),
   * when more than 64 could be; on a dry run, what would be. Not done when the sweep was
   * deferred (the workflow collects again).
   */
  consolidation: {
    /** Index objects after the sweep (those this run read or wrote; not those movers wrote since). */
    objectsBefore: number;
    /** … and after merging. */
    objectsAfter: number;
    /** Small index objects, not under retention, that could be merged. */
    candidates: number;
    /** Index objects merged and deleted. */
    merged: number;
    /** Merged index objects written. */
    written: number;
    /** Chunk entries the merged objects list. */
    entries: number;
    /** Entries of merged objects left out: packs that no longer exist, or that another index object already lists. */
    entriesDropped: number;
    /** Why merging stopped before the end (time, a refused request, an object gone meanwhile), or null. */
    stopped: string | null;
  };
  /**
   * Chunks in packs that stay (a manifest references another chunk in them) that no
   * manifest references, by the index at the mark: space only rewriting packs would
   * free, which garbage collection does not do. A chunk stored twice whose manifests
   * name the other copy is not counted.
   */
  reclaimableInPacks: { chunks: number; bytes: number };
  /** Stored bytes of the chunk objects and packs deleted (or that a dry run would delete). */
  bytesFreed: number;
  /**
   * Damaged chunk objects kept under `quarantine/` for forensics (QuarantineDamage). Never
   * swept and not part of `chunks` or `packs`. Delete them by hand (or by a lifecycle rule
   * on the prefix) once examined.
   */
  quarantine: { objects: number; bytes: number };
  /**
   * Unreferenced chunk objects and packs still under Object Lock retention (by the default
   * retention, or a later retain-until HEAD reported: gc/extend-locks.ts), packs an index
   * object under retention lists (it cannot be replaced yet), and failed backups' manifests
   * still under retention: not attempted, collected by a run after `firstExpiry`.
   */
  locked: { count: number; bytes: number; firstExpiry: string | null; sample: string[] };
  /** Deletions the store refused (permissions, a lock this run did not know of). */
  failed: { key: string; reason: string }[];
  /** Manifests written during the sweep that reference a deleted chunk object or pack (should stay empty). */
  lateReferences: { manifest: string; object: string }[];
  /**
   * Manifests (and VM configurations) of backups the catalog records `failed`: never
   * marked, so the packs only they reference are swept; deleted once older than the grace
   * period (or, on a dry run, would be).
   */
  failedBackups: { objects: number; deleted: number; protectedByGrace: number };
  /** Manifests of `running` backups that do not open (an upload cut off): not marked, not fatal. */
  unreadableManifests: { manifest: string; reason: string }[];
  /** Set when the sweep stopped (or never began) because backups were running. */
  deferred: { backups: string[] } | null;
  /** Times this collection was deferred before it ran (from its catalog record). */
  deferrals: number;
  seconds: number;
}

/** A report with nothing found yet. */
export function emptyReport(gcId: string, bucket: string, dryRun: boolean, started: Date, graceHours: number): GcReport {
  const counts = (): SweptObjects => ({ total: 0, referenced: 0, protectedByGrace: 0, deleted: 0, spared: 0 });
  return {
    gcId,
    bucket,
    dryRun,
    startedAt: started.toISOString(),
    graceHours,
    manifests: 0,
    chunks: counts(),
    packs: counts(),
    index: { objects: 0, rewritten: 0, dropped: 0, reindexed: 0 },
    consolidation: { objectsBefore: 0, objectsAfter: 0, candidates: 0, merged: 0, written: 0, entries: 0, entriesDropped: 0, stopped: null },
    reclaimableInPacks: { chunks: 0, bytes: 0 },
    bytesFreed: 0,
    quarantine: { objects: 0, bytes: 0 },
    failedBackups: { objects: 0, deleted: 0, protectedByGrace: 0 },
    unreadableManifests: [],
    locked: { count: 0, bytes: 0, firstExpiry: null, sample: [] },
    failed: [],
    lateReferences: [],
    deferred: null,
    deferrals: 0,
    seconds: 0,
  };
}
