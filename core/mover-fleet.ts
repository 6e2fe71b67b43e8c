/**
 * The mover fleet as `lifeboat movers` shows it, read from the registration records movers
 * put in the repository bucket (core/mover-registry.ts explains why there and not the
 * catalog). A record older than `staleAfterBeats` heartbeats is `stale` (the
 * mover died or lost its network); `stopped` is a mover that drained and exited.
 */
import type { ObjectStore } from './object-store.ts';
import { MOVER_RECORD_PREFIX, parseMoverRegistration, type MoverRegistration } from './mover-registry.ts';
import { compareVersions, isVersion, MIN_MOVER_VERSION } from './version.ts';

export type MoverStatus = 'live' | 'stale' | 'stopped';

export interface MoverView extends MoverRegistration {
  status: MoverStatus;
  /** Seconds since the mover last wrote its record. */
  ageSeconds: number;
  /** False when the mover is older than the jobs' minimum version (it will upgrade at its next job). */
  upToDate: boolean;
}

export async function listMovers(deps: {
  store: Pick<ObjectStore, 'get' | 'list'>;
  now: () => Date;
  staleAfterBeats?: number;
  minMoverVersion?: string;
}): Promise<MoverView[]> {
  const now = deps.now().getTime();
  const min = deps.minMoverVersion ?? MIN_MOVER_VERSION;
  const out: MoverView[] = [];
  for await (const { key } of deps.store.list(MOVER_RECORD_PREFIX)) {
    if (!key.endsWith('.json')) continue;
    const bytes = await deps.store.get(key);
    const r = bytes && parseMoverRegistration(bytes);
    if (!r) continue;
    const ageSeconds = Math.max(0, (now - Date.parse(r.seenAt)) / 1000);
    const status: MoverStatus = r.state === 'stopped' ? 'stopped' : ageSeconds > (deps.staleAfterBeats ?? 3) * r.heartbeatSeconds ? 'stale' : 'live';
    out.push({ ...r, status, ageSeconds: Math.round(ageSeconds), upToDate: isVersion(r.version) && compareVersions(r.version, min) >= 0 });
  }
  return out.sort((a, b) => a.group.localeCompare(b.group) || a.name.localeCompare(b.name));
}
