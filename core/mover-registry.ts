/**
 * Mover registration. Movers hold no catalog access (least privilege: their group's
 * Activity, and get/put in the repository bucket), so a mover registers the one way it
 * can: it puts a small JSON record at `movers/<name>.json` in the repository bucket when
 * it starts, when its state changes (draining, upgrading, stopped) and every
 * `heartbeatSeconds` while it runs. The control plane reads them (core/mover-fleet.ts,
 * `lifeboat movers`) and tells a live mover from a stale one by `seenAt`. No new IAM
 * permission, no new endpoint, and a mover that cannot reach the bucket could not back
 * anything up anyway. The records hold no secrets (no keys, no credentials).
 */

export const MOVER_RECORD_FORMAT = 'lifeboat-mover/1';

export type MoverState = 'running' | 'draining' | 'upgrading' | 'stopped';

export interface MoverRegistration {
  format: typeof MOVER_RECORD_FORMAT;
  name: string;
  group: string;
  activityArn: string;
  version: string;
  capabilities: {
    /** Source drivers this mover can read (e.g. `folder`). */
    sources: string[];
    /** Activity task kinds it runs (e.g. `snapshot`, `dispatch`, `releaseSnapshot`). */
    tasks: string[];
  };
  slots: number;
  tasksInFlight: number;
  state: MoverState;
  /** Set while `state` is `upgrading`: the version being installed. */
  upgradingTo?: string;
  hostname: string;
  pid: number;
  startedAt: string;
  seenAt: string;
  /** How often the record is rewritten while running: a reader calls it stale after a few of these. */
  heartbeatSeconds: number;
}

export const moverRecordKey = (name: string) => `movers/${name}.json`;
export const MOVER_RECORD_PREFIX = 'movers/';

/** A mover name becomes an object key: keep it to letters, digits, dot, dash and underscore. */
export function isMoverName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name);
}

/** Parses a record; undefined (not an exception) for an object that is not one. */
export function parseMoverRegistration(bytes: Uint8Array): MoverRegistration | undefined {
  try {
    const r = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<MoverRegistration>;
    if (r.format !== MOVER_RECORD_FORMAT || typeof r.name !== 'string' || typeof r.version !== 'string' || typeof r.seenAt !== 'string') return undefined;
    return r as MoverRegistration;
  } catch {
    return undefined;
  }
}
