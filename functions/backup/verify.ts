/**
 * Verify: every chunk the VM's new manifests reference exists in the repository with
 * the stored size the mover recorded. Reads manifests and HEADs the objects they reference
 * (repository/referenced.ts: each pack once, whatever the manifest's version); never
 * downloads chunk data.
 *
 * A backup with a parent HEADs only the packs its parent's manifests do not name (the packs
 * it wrote, and those it found in the index), plus a few of the parent's at random: about
 * 2% of a 100 GiB VM's packs when 2% changed, not all of them. Why the parent's packs need
 * no HEAD: the parent was committed, so every pack it names was HEADed at that size by its
 * own Verify (or its parent's, back to a first backup, which HEADs everything); packs are
 * never rewritten (movers never overwrite, pack ids are random); and garbage collection
 * deletes only packs no manifest names, none while a backup runs, while the parent's
 * manifest, read here, still names them. So a pack named by the parent at the size the new
 * manifest records is there at that size, unless something outside Lifeboat removed or
 * damaged it: the random sample catches gross loss cheaply, and deep verification (which
 * reads every chunk) remains the full check. A parent whose manifest is gone (pruned) or
 * unreadable vouches for nothing: every pack is HEADed then. Replication's VerifyReplica
 * passes no parent: a DR copy is checked in full.
 *
 * One invocation checks at most `rangePieces` manifest pieces (the workflow passes it); a
 * backup with more fails fast with `Verify.MustSplit` and is verified by range
 * (verify-ranges.ts), each range with these same checks.
 */
import { VerifyFailed, VerifyMustSplit } from '../../contracts/errors.ts';
import type { ObjectInfo } from '../../core/object-store.ts';
import { pieceCount, referencedObjects, type ReferencedObject } from '../../repository/referenced.ts';
import { PARENT_SAMPLE, verifyOutput, verifyRequest, type VerifyInput, type VerifyOutput } from '../../contracts/backup-steps.ts';
import type { Repository } from '../../repository/open.ts';
import type { ManifestReader } from '../../repository/types.ts';
import { mapLimit } from '../../core/concurrency.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { RECENT_CHUNKS as RECENT, RecentIds, RecentMap } from '../../repository/manifest/recent.ts';

/** Most parent packs remembered as verified (beyond that they are HEADed): bounds Verify's memory on huge disks. */
const MAX_TRUSTED = 500_000;

/** A manifest Verify checks: a disk's, whole or (Verify by range) chunks `range.from` … `range.to - 1`, opened already or not. */
export interface VerifiedManifest {
  diskId: string;
  manifestKey: string;
  reader?: ManifestReader;
  /** Its chunks checked here, on piece boundaries, and how messages name the range. */
  range?: { from: number; to: number; label: string };
}

type VerifyDeps = {
  repository: Repository;
  concurrency?: number;
  random?: () => number;
  /** Aborted when the invocation has answered TimeoutError: the work stops at the next piece. */
  signal?: AbortSignal;
};

/**
 * Verifies the backup in this invocation when its manifests have at most `rangePieces` pieces
 * in all (every backup of disks up to ~2 TiB at the default); otherwise fails with
 * `Verify.MustSplit`, which the workflow catches into Verify by range (verify-ranges.ts), so
 * the usual backup pays no extra state. Only the manifests' heads are read to decide.
 */
export async function verify(input: VerifyInput, deps: VerifyDeps & { rangePieces?: number }): Promise<VerifyOutput> {
  const readers = await openDiskManifests(input, deps.repository);
  const pieces = readers.reduce((n, r) => n + pieceCount(r.info, r.pieces()), 0);
  if (deps.rangePieces !== undefined && pieces > deps.rangePieces) throw new VerifyMustSplit(input.backupId, pieces, deps.rangePieces);
  const trusted = input.parentBackupId ? await parentPacks(input.parentBackupId, Object.keys(input.parentManifests), deps) : undefined;
  const disks = input.disks.map((d, i) => ({ ...d, reader: readers[i]! }));
  return verifyManifests(input.backupId, disks, { ...deps, ...(trusted ? { trusted } : {}) });
}

/** The backup's disk manifests, opened (their heads only), after checking there is one result per snapshot disk. */
export async function openDiskManifests(input: VerifyInput, repository: Repository): Promise<ManifestReader[]> {
  if (!input.snapshot || input.disks.length !== input.snapshot.disks.length) {
    throw new VerifyFailed(
      `backup ${input.backupId} of VM '${input.vmId}' has ${input.disks.length} disk results for ${input.snapshot?.disks.length ?? 0} snapshot disks`,
    );
  }
  return Promise.all(input.disks.map((d) => openManifestAt(repository, input.backupId, d)));
}

/** The manifest of `disk` at its key; Verify fails naming it when it is missing. */
export async function openManifestAt(repository: Repository, backupId: string, disk: { diskId: string; manifestKey: string }): Promise<ManifestReader> {
  const sealed = await repository.store.get(disk.manifestKey);
  if (!sealed) throw new VerifyFailed(`manifest ${disk.manifestKey} of disk '${disk.diskId}' is missing`);
  return repository.manifestFromSealed(sealed, backupId, disk.diskId);
}

/**
 * The packs the committed parent's manifests name, with the size each records (see the
 * module's comment for why they need no HEAD). A manifest that is gone or unreadable adds
 * nothing.
 */
export async function parentPacks(
  parentBackupId: string,
  diskIds: string[],
  deps: VerifyDeps,
  /** Only the parent's pieces covering these chunks (Verify by range: the range's own chunks). */
  chunks: { from: number; to: number } = { from: 0, to: Number.POSITIVE_INFINITY },
): Promise<Map<string, number>> {
  const packs = new Map<string, number>();
  for (const diskId of diskIds) {
    try {
      const parent = await deps.repository.openManifest(parentBackupId, diskId);
      if (!parent) continue;
      for await (const batch of parent.batches({ from: chunks.from })) {
        if (batch.firstChunk >= chunks.to) break;
        for (const p of batch.packs) if (packs.size < MAX_TRUSTED) packs.set(p.id, p.size);
      }
    } catch {
      // An unreadable parent vouches for nothing: its packs are HEADed like new ones.
    }
  }
  return packs;
}

/**
 * Every chunk the backup's disk manifests reference is in `store`: each object holding them
 * (`referencedObjects`) HEADed once (also when several disks share it) and of exactly the
 * size the manifest records, which covers every chunk's range (the manifest's reader checked
 * that each lies within its pack's recorded size), and of the SHA-256 the manifest records
 * where it kept one and the store keeps one too. Verify runs it on a new backup;
 * VerifyReplica on the copy in a DR repository.
 */
export async function verifyManifests(
  backupId: string,
  disks: VerifiedManifest[],
  deps: VerifyDeps & {
    /** Packs already verified at these sizes (the committed parent's): not HEADed, but for a random sample. */
    trusted?: ReadonlyMap<string, number>;
  },
): Promise<VerifyOutput> {
  let chunksChecked = 0;
  let bytesChecked = 0;
  let checksumsCompared = 0;
  let packsChecked = 0;
  let packsTrusted = 0;
  const trustedSeen = new Set<string>();
  const random = deps.random ?? Math.random;
  /** Each of the parent's packs is drawn for a HEAD with this chance: PARENT_SAMPLE of them expected. */
  const draw = PARENT_SAMPLE / Math.max(1, deps.trusted?.size ?? 1);
  /** A parent's pack at the size it recorded needs no HEAD, unless drawn for the sample. */
  const needsHead = (o: ReferencedObject) => {
    if (deps.trusted?.get(o.id) !== o.size) return true;
    if (trustedSeen.has(o.id)) return false;
    trustedSeen.add(o.id);
    if (random() < draw) return true;
    packsTrusted++;
    return false;
  };
  const concurrency = deps.concurrency ?? 16;
  /** Objects HEADed lately (disks and pieces share packs): each one's size and checksum in the store, or undefined when missing. Bounded. */
  const heads = new RecentMap<Promise<ObjectInfo | undefined>>(RECENT);
  const headObject = (o: ReferencedObject): Promise<ObjectInfo | undefined> => {
    let info = heads.get(o.key);
    if (!info) {
      info = deps.repository.store.head(o.key).then((got) => {
        if (!got) return undefined;
        if (o.kind === 'pack') packsChecked++;
        bytesChecked += got.size;
        return got;
      });
      heads.set(o.key, info);
    }
    return info;
  };
  for (const disk of disks) {
    const manifest = disk.reader ?? (await openManifestAt(deps.repository, backupId, disk));
    const to = disk.range?.to ?? Number.POSITIVE_INFINITY;
    const where = disk.range ? `, range ${disk.range.label}` : '';
    // Chunks counted once each (a repeat of a recent one is not counted again); a piece at a time.
    const recent = new RecentIds();
    for await (const batch of manifest.batches(disk.range ? { from: disk.range.from } : {})) {
      if (batch.firstChunk >= to) break;
      deps.signal?.throwIfAborted();
      const refs = referencedObjects(batch, (id) => recent.fresh(id));
      await mapLimit(refs.objects.filter(needsHead), concurrency, async (o) => {
        const what = `${o.kind} ${o.key} of disk '${disk.diskId}'${where} (backup ${backupId})`;
        const got = await headObject(o);
        if (got === undefined) throw new VerifyFailed(`${what} is missing from the repository`);
        if (got.size !== o.size) throw new VerifyFailed(`${what} is ${got.size} bytes, the manifest expects ${o.size}`);
        if (o.sha256 && got.sha256) {
          checksumsCompared++;
          if (got.sha256 !== o.sha256) throw new VerifyFailed(`${what} has SHA-256 ${got.sha256} in the store, the manifest expects ${o.sha256}`);
        }
      });
      chunksChecked += refs.chunks;
    }
  }
  return { chunksChecked, bytesChecked, checksumsCompared, packsChecked, packsTrusted };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('Verify', verifyRequest, async ({ job, rangePieces }, { signal }) => {
      const { bucket, endpoint } = job.repository;
      return verifyOutput.parse(await verify(job, { repository: await c.repository(bucket, endpoint), signal, rangePieces }));
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
