/**
 * Versions of the Lifeboat software, from one source of truth: the `version` of
 * package.json. The control plane and the mover of one build share it; a job names the
 * oldest mover version allowed to run it (`VmJob.minMoverVersion`), and a mover older
 * than that upgrades itself from a signed release first (mover/upgrade.ts).
 */
import pkg from '../package.json' with { type: 'json' };

/** The version of this build (package.json). */
export const LIFEBOAT_VERSION: string = pkg.version;

/**
 * The oldest mover version the jobs of this control plane accept: this build's version,
 * so a control plane upgrade brings every mover up to the same build at its next job.
 */
export const MIN_MOVER_VERSION: string = LIFEBOAT_VERSION;

const SEMVER = /^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$/;

/** True for `major.minor.patch` with an optional `-prerelease`. */
export function isVersion(v: unknown): v is string {
  return typeof v === 'string' && SEMVER.test(v);
}

/**
 * Orders two versions as semver does (numeric parts, then a prerelease sorts before its
 * release). Negative when `a` is older than `b`. Throws on a string that is not a version.
 */
export function compareVersions(a: string, b: string): number {
  const pa = SEMVER.exec(a);
  const pb = SEMVER.exec(b);
  if (!pa) throw new Error(`'${a}' is not a version (expected major.minor.patch, e.g. 1.4.2)`);
  if (!pb) throw new Error(`'${b}' is not a version (expected major.minor.patch, e.g. 1.4.2)`);
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return d;
  }
  const ra = pa[4];
  const rb = pb[4];
  if (ra === rb) return 0;
  if (ra === undefined) return 1;
  if (rb === undefined) return -1;
  const xa = ra.split('.');
  const xb = rb.split('.');
  for (let i = 0; i < Math.max(xa.length, xb.length); i++) {
    const x = xa[i];
    const y = xb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    if (!Number.isNaN(nx) && !Number.isNaN(ny)) {
      if (nx !== ny) return nx - ny;
    } else if (Number.isNaN(nx) !== Number.isNaN(ny)) {
      return Number.isNaN(nx) ? 1 : -1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

/**
 * The minimum mover version Plan writes into each job: LIFEBOAT_MIN_MOVER_VERSION when
 * set (a control-plane setting, e.g. to roll movers forward to a newer published release
 * before the control plane itself changes), else {@link MIN_MOVER_VERSION}.
 */
export function minMoverVersion(env: NodeJS.ProcessEnv = process.env): string {
  const v = env.LIFEBOAT_MIN_MOVER_VERSION;
  if (v === undefined || v === '') return MIN_MOVER_VERSION;
  if (!isVersion(v)) throw new Error(`LIFEBOAT_MIN_MOVER_VERSION=${v} is not a version (expected major.minor.patch, e.g. 1.4.2)`);
  return v;
}
