/**
 * The scheduled sweep of test failover leftovers: the Discover workflow (hourly) lists the
 * DR sites (ListDrSites) and runs `sweepTestFailovers` on each DR mover group, over every
 * libvirt host the group serves. A run whose cleanup never ran left a folder older than any
 * TestFailover execution can be (in the site's replica folder, seen by every mover of the
 * group), its isolated network and a domain: all three go; a younger run's are left alone.
 * Real libvirtd, real mover processes; no guest boots. The group's second libvirt host is a
 * libvirtd of its own (its own sockets, configuration and state folders, in a mount
 * namespace of its own): the old run's domain there goes too.
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_FAILOVER_PREFIX } from '../contracts/dr.ts';
import { loadConfig } from '../core/config.ts';
import { listDrSites } from '../functions/replicate/dr-sites.ts';
import { runExecution } from '../local/client.ts';
import { drLabConfig } from '../local/vm-lab/dr-lab.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { TEST_FAILOVER_LEFTOVER_SECONDS, TEST_FAILOVERS } from '../mover/recovery/test-failover-cleanup.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const lab = await ensureLibvirtd();
const sh = (cmd: string, args: string[]) =>
  new Promise<string>((ok, fail) =>
    execFile(cmd, args, { timeout: 60_000 }, (err, out, errOut) => (err ? fail(new Error(`${cmd}: ${errOut || err.message}`)) : ok(out))),
  );

/**
 * A second libvirtd with its own sockets, configuration and state: in a mount namespace of its
 * own, /run/libvirt, /var/lib/libvirt, /etc/libvirt (a copy without domains or networks),
 * /var/cache/libvirt and /var/log/libvirt are folders of `dir`; its sockets are in `dir/sock`.
 */
async function startSecondLibvirtd(dir: string): Promise<{ uri: string; stop: () => Promise<void> }> {
  for (const d of ['run', 'lib', 'cache', 'log', 'sock']) await mkdir(join(dir, d), { recursive: true });
  await cp('/etc/libvirt', join(dir, 'etc'), { recursive: true, filter: (f) => !/\/qemu\/(networks\/)?[^/]+\.xml$|autostart/.test(f) });
  await writeFile(join(dir, 'etc', 'libvirtd.conf'), `${await readFile(join(dir, 'etc', 'libvirtd.conf'), 'utf8')}\nunix_sock_dir = "${join(dir, 'sock')}"\n`);
  const binds = ['run:/run/libvirt', 'lib:/var/lib/libvirt', 'etc:/etc/libvirt', 'cache:/var/cache/libvirt', 'log:/var/log/libvirt'].map((b) => {
    const [from, to] = b.split(':');
    return `mount --bind ${join(dir, from!)} ${to}`;
  });
  const pids = { logd: join(dir, 'virtlogd.pid'), libvirtd: join(dir, 'libvirtd.pid') };
  await sh('unshare', [
    '-m',
    '--propagation',
    'private',
    'sh',
    '-c',
    [...binds, `virtlogd -d -p ${pids.logd}`, `libvirtd -d -p ${pids.libvirtd}`].join(' && '),
  ]);
  const uri = `qemu+unix:///system?socket=${join(dir, 'sock', 'libvirt-sock')}`;
  for (let i = 0; ; i++) {
    try {
      await sh('virsh', ['-c', uri, 'version']);
      break;
    } catch (err) {
      if (i > 100) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const stop = async () => {
    for (const f of [pids.libvirtd, pids.logd]) {
      const pid = Number(await readFile(f, 'utf8').catch(() => '0'));
      if (pid > 0) process.kill(pid, 'SIGTERM');
    }
  };
  return { uri, stop };
}
// Keys as testRunKey makes them (7 base-36 characters), unique to this process.
const key = (tag: string) => `${tag}${(process.pid % 36 ** 5).toString(36).padStart(5, '0')}`;
const oldKey = key('zo');
const youngKey = key('zy');
const names = (out: string) =>
  out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
const ours = async () => ({
  domains: names(await virsh(['list', '--all', '--name'])).filter(
    (n) => n.startsWith(`${TEST_FAILOVER_PREFIX}${oldKey}`) || n.startsWith(`${TEST_FAILOVER_PREFIX}${youngKey}`),
  ),
  networks: names(await virsh(['net-list', '--all', '--name'])).filter(
    (n) => n === `${TEST_FAILOVER_PREFIX}${oldKey}` || n === `${TEST_FAILOVER_PREFIX}${youngKey}`,
  ),
});
let t: TestStack;
let work: string;
let second: { uri: string; stop: () => Promise<void> } | undefined;
const virsh2 = (args: string[]) => sh('virsh', ['-c', second!.uri, ...args]);
/** The DR site's replica folder: test failovers keep their overlays there, where every mover of the group sees them. */
let replicaDir: string;

/** What a test failover run `k` leaves when its cleanup never runs: its folder (aged `ageSeconds`), its isolated network and a (shut off) domain. */
async function leftover(k: string, ageSeconds: number): Promise<void> {
  const folder = join(replicaDir, TEST_FAILOVERS, k);
  await mkdir(folder, { recursive: true });
  await writeFile(join(folder, 'vm.qcow2'), 'overlay');
  const net = `${TEST_FAILOVER_PREFIX}${k}`;
  await writeFile(join(work, `${k}.net.xml`), `<network><name>${net}</name><bridge name='${net.replace(/-/g, '')}' stp='off'/></network>\n`);
  await virsh(['net-create', join(work, `${k}.net.xml`)]);
  await writeFile(
    join(work, `${k}.xml`),
    `<domain type='qemu'><name>${net}-vm</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>\n`,
  );
  await virsh(['define', join(work, `${k}.xml`)]);
  const at = new Date(Date.now() - ageSeconds * 1000);
  await utimes(folder, at, at);
}

describe.skipIf(!lab.available)('the scheduled sweep of test failover leftovers (Discover workflow)', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lbsweep-'));
    const base = drLabConfig(loadConfig(), { prodNet: 'lbsw-prod', drNet: 'lbsw-dr', policyId: 'p-sweep', vmIds: ['sw-a'], keepPoints: 2 });
    // A second libvirt host served by the DR group, a daemon of its own: the sweep covers every host of the group.
    second = await startSecondLibvirtd(join(work, 'libvirtd-2'));
    const config = {
      ...base,
      hosts: [...base.hosts, { id: 'kvm-dr2', driver: 'libvirt' as const, uri: second.uri, maxConcurrentBackups: 2 }],
      moverGroups: base.moverGroups.map((g) => (g.id === 'dr' ? { ...g, hosts: ['kvm-dr2'] } : g)),
    };
    // Two DR movers: whichever runs the sweep finds the leftovers, none of which is in a mover's own folder.
    t = await startTestStack({ groups: { 'site-a': 1, dr: 2 }, config, moverEnv: { LIFEBOAT_WORK_DIR: work } });
    replicaDir = join(t.stack.endpoints.dataDir, 'sites', 'site-dr', base.repositories[1]!.replication!.standbyPath!);
  }, 600_000);
  afterAll(async () => {
    for (const k of [oldKey, youngKey]) {
      await virsh(['undefine', `${TEST_FAILOVER_PREFIX}${k}-vm`]).catch(() => {});
      if (second) await virsh2(['undefine', `${TEST_FAILOVER_PREFIX}${k}-vm`]).catch(() => {});
      await virsh(['net-destroy', `${TEST_FAILOVER_PREFIX}${k}`]).catch(() => {});
    }
    await t?.close();
    await second?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  }, 120_000);

  it('lists each DR mover group with every libvirt URI it serves', async () => {
    const { sites } = await listDrSites({ runId: 'd-1' }, { catalog: t.stack.catalog });
    expect(sites).toEqual([
      {
        moverGroup: 'dr',
        run: { runId: 'd-1', test: true, uri: 'qemu:///system', moverGroup: 'dr', vms: [], replicaDirs: [replicaDir] },
        uris: [second!.uri],
      },
    ]);
  });

  it("removes an old run's domain, network and folder on the DR site, and leaves a younger run's alone", async () => {
    await leftover(oldKey, TEST_FAILOVER_LEFTOVER_SECONDS + 3600);
    await leftover(youngKey, 3600);
    expect((await ours()).domains).toHaveLength(2);
    // On the second host: a domain of each run (their networks are on the first: a bridge name is the host's).
    for (const k of [oldKey, youngKey]) await virsh2(['define', join(work, `${k}.xml`)]);
    expect(names(await virsh(['list', '--all', '--name'])).filter((n) => n === `${TEST_FAILOVER_PREFIX}${oldKey}-vm`)).toHaveLength(1);

    const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines.Discover!, {}, { pollMs: 300 });
    expect(d.status, d.cause).toBe('SUCCEEDED');
    const out = JSON.parse(d.output!) as {
      sweeps: { moverGroup: string; swept?: { domains: string[]; networks: string[]; folders: string[] }; error?: unknown }[];
    };
    const old = `${TEST_FAILOVER_PREFIX}${oldKey}`;
    expect(out.sweeps).toEqual([
      { moverGroup: 'dr', swept: { domains: [`${old}-vm`, `${old}-vm`], networks: [old], folders: [join(replicaDir, TEST_FAILOVERS, oldKey)] } },
    ]);
    expect(names(await virsh2(['list', '--all', '--name']))).toEqual([`${TEST_FAILOVER_PREFIX}${youngKey}-vm`]);
    expect(await ours()).toEqual({ domains: [`${TEST_FAILOVER_PREFIX}${youngKey}-vm`], networks: [`${TEST_FAILOVER_PREFIX}${youngKey}`] });
    expect(await readdir(join(replicaDir, TEST_FAILOVERS))).toEqual([youngKey]);
  }, 300_000);
});
