/** The mover's deployment files agree with the mover's settings and are valid for systemd. */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MOVER_NODE_FLAGS, moverStartEnv } from '../mover/start-settings.ts';

const read = (p: string) => readFileSync(new URL(`../${p}`, import.meta.url), 'utf8');
const unit = read('deploy/lifeboat-mover.service');
const envExample = read('deploy/mover.env.example');
const moverMain = read('mover/main.ts');

/** `NAME=value` lines of the example, commented-out ones included. */
const exampleSettings = () => new Map([...envExample.matchAll(/^#?([A-Z][A-Z0-9_]+)=(.*)$/gm)].map((m) => [m[1]!, m[2]!]));
/** Every LIFEBOAT_* setting the mover reads. */
const moverSettings = () => new Set([...moverMain.matchAll(/\b(LIFEBOAT_[A-Z0-9_]+)\b/g)].map((m) => m[1]!));

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('mover.env.example', () => {
  it('names every setting the mover reads, and none it does not', () => {
    const example = new Set([...exampleSettings().keys()].filter((k) => k.startsWith('LIFEBOAT_')));
    const mover = moverSettings();
    mover.delete('LIFEBOAT_HANDOVER_FILE'); // internal: set by the mover for its own re-exec
    expect([...mover].filter((k) => !example.has(k)).sort(), 'settings missing from the example').toEqual([]);
    expect([...example].filter((k) => !mover.has(k)).sort(), 'settings the mover does not read').toEqual([]);
  });

  it('configures an AWS mover: Activity, KMS key, region and credentials profile set, local endpoints and key file commented out', () => {
    const active = new Map([...envExample.matchAll(/^([A-Z][A-Z0-9_]+)=(.*)$/gm)].map((m) => [m[1]!, m[2]!]));
    expect(active.get('LIFEBOAT_ACTIVITY_ARN')).toMatch(/^arn:aws:states:[a-z0-9-]+:\d{12}:activity:/);
    expect(active.get('LIFEBOAT_KMS_KEY_ID')).toMatch(/^arn:aws:kms:/);
    for (const k of ['AWS_REGION', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'LIFEBOAT_MOVER_NAME']) expect(active.get(k), k).toBeTruthy();
    for (const k of ['LIFEBOAT_SFN_ENDPOINT', 'LIFEBOAT_S3_ENDPOINT', 'LIFEBOAT_KEY_FILE']) expect(active.has(k), k).toBe(false);
  });
});

describe('lifeboat-mover.service', () => {
  it('reads the environment file, runs mover/main.ts, and waits longer than the drain grace time before SIGKILL', () => {
    expect(unit).toMatch(/^EnvironmentFile=\/etc\/lifeboat\/mover\.env$/m);
    expect(unit).toMatch(/^ExecStart=\S+node (--\S+ )*\S+\/mover\/main\.ts$/m);
    expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
    const stopSeconds = Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)?.[1]);
    const graceMs = Number(exampleSettings().get('LIFEBOAT_SHUTDOWN_GRACE_MS'));
    expect(stopSeconds * 1000).toBeGreaterThan(graceMs);
    expect(unit).toMatch(/^StateDirectory=lifeboat-mover$/m);
    expect(exampleSettings().get('LIFEBOAT_MOVER_HOME')).toBe('/var/lib/lifeboat-mover');
    expect(unit).toMatch(/^User=lifeboat$/m); // never root
  });

  it('starts the mover with the settings the embedded stack and the bench use (mover/start-settings.ts), its compile cache in its CacheDirectory', () => {
    const lines = [...unit.matchAll(/^Environment=(.*)$/gm)].map((m) => m[1]!);
    const set = Object.fromEntries(
      lines
        .flatMap((l) => l.split(/\s+/))
        .filter(Boolean)
        .map((kv) => kv.split('=') as [string, string]),
    );
    const cacheDirectory = /^CacheDirectory=(\S+)$/m.exec(unit)?.[1];
    expect(cacheDirectory).toBe('lifeboat-mover');
    expect(set).toEqual(moverStartEnv(`/var/cache/${cacheDirectory}`));
    const flags = /^ExecStart=\S+node ((?:--\S+ )*)\S+$/m.exec(unit)?.[1]?.trim().split(' ') ?? [];
    expect(flags).toEqual([...MOVER_NODE_FLAGS]);
  });

  it('is Type=notify with a watchdog the mover pings, restarts on failure within a start limit, and never loops on a configuration error', () => {
    expect(unit).toMatch(/^Type=notify$/m);
    expect(unit).toMatch(/^NotifyAccess=all$/m); // the pings come from systemd-notify, a child of the mover
    expect(Number(/^WatchdogSec=(\d+)$/m.exec(unit)?.[1])).toBeGreaterThanOrEqual(10);
    expect(unit).toMatch(/^Restart=on-failure$/m);
    expect(unit).toMatch(/^RestartPreventExitStatus=2$/m);
    // Start limits belong to [Unit] (systemd ignores them in [Service] with a warning).
    const unitSection = unit.slice(unit.indexOf('[Unit]'), unit.indexOf('[Service]'));
    expect(unitSection).toMatch(/^StartLimitIntervalSec=\d+$/m);
    expect(unitSection).toMatch(/^StartLimitBurst=\d+$/m);
    expect(unit).toMatch(/^RestrictAddressFamilies=.*AF_UNIX/m); // NOTIFY_SOCKET is a unix socket
    expect(exampleSettings().get('LIFEBOAT_METRICS_ADDRESS')).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  const analyze = spawnSync('systemd-analyze', ['--version']).status === 0;
  it.skipIf(!analyze)('passes systemd-analyze verify (with the paths of this machine)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-unit-'));
    dirs.push(dir);
    const file = join(dir, 'lifeboat-mover.service');
    // Point at files that exist here; everything else is verified as written.
    writeFileSync(
      file,
      unit
        .replace(/^ExecStart=.*$/m, `ExecStart=${process.execPath} ${join(process.cwd(), 'mover/main.ts')}`)
        .replace(/^EnvironmentFile=.*$/m, `EnvironmentFile=-${join(dir, 'mover.env')}`)
        .replace(/^User=.*$/m, 'User=root')
        .replace(/^Group=.*$/m, 'Group=root')
        .replace(/^WorkingDirectory=.*$/m, `WorkingDirectory=${dir}`),
    );
    const out = execFileSync('systemd-analyze', ['verify', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).toBe('');
  });
});
