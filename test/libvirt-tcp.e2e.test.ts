/**
 * The libvirt driver with TCP exports, against the real libvirtd: a running guest backed up
 * through a pull-mode job listening on 127.0.0.1 (plain TCP, `insecure`: this machine's
 * shared libvirtd has no backup_tls_x509_cert_dir, and reconfiguring it is not ours to do;
 * the client's TLS is tested against qemu-nbd in nbd-tls.test.ts). Ports in use are skipped,
 * the disk read over TCP equals the guest's own hash at the freeze, an incremental reads the
 * dirty bitmap over TCP, and nothing outlives a release: no job, no scratch file beside the
 * image, no listener.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLabVm, type LabVm } from '../local/vm-lab/lab-vm.ts';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { LibvirtDriver } from '../mover/sources/libvirt/driver.ts';
import { snapshotDir } from '../mover/sources/libvirt/snapshot-folder.ts';
import type { DiskReader } from '../mover/sources/source.ts';

const MiB = 1024 * 1024;
const DISK = 32 * MiB;
const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

async function hold(port: number): Promise<Server | undefined> {
  const s = createServer();
  return new Promise((resolve) => {
    s.once('error', () => resolve(undefined));
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}
const closeServer = (s: Server) => new Promise((r) => s.close(r));

/** Three consecutive ports free now, the first two held by this test (QEMU must skip them). */
async function portsWithTwoHeld(): Promise<{ from: number; held: Server[] }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = await hold(0);
    const from = (first!.address() as AddressInfo).port;
    const second = from < 65533 ? await hold(from + 1) : undefined;
    const third = second ? await hold(from + 2) : undefined;
    if (second && third) {
      await closeServer(third);
      return { from, held: [first!, second] };
    }
    for (const s of [first!, second].filter((x): x is Server => !!x)) await closeServer(s);
  }
  throw new Error('no three consecutive free ports');
}

const accepts = (port: number) =>
  new Promise<boolean>((r) => {
    const c = connect({ host: '127.0.0.1', port }, () => {
      c.destroy();
      r(true);
    });
    c.on('error', () => r(false));
  });

async function sha256Of(reader: DiskReader): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.alloc(4 * MiB);
  for (let at = 0; at < reader.sizeBytes; at += buf.length) {
    const n = Math.min(buf.length, reader.sizeBytes - at);
    await reader.read(buf, at, n);
    h.update(buf.subarray(0, n));
  }
  return h.digest('hex');
}

describe.skipIf(!lab.available)('libvirt driver with TCP exports, on a running guest', () => {
  let dir = '';
  let vm: LabVm;
  let uuid = '';
  let from = 0;
  let held: Server[] = [];
  const workDir = () => join(dir, 'w');
  const driver = () =>
    new LibvirtDriver({
      uri: 'qemu:///system',
      workDir: workDir(),
      exports: { transport: 'tcp', address: '127.0.0.1', ports: [from, from + 2], tls: false, insecure: true },
    });
  /** A backup id whose snapshot starts at the range's first port (so both held ports are tried). */
  const idStartingAtFirstPort = (prefix: string) => {
    for (let i = 0; ; i++) {
      const id = `${prefix}-${i}`;
      if (Number.parseInt(basename(snapshotDir(workDir(), uuid, id)).slice(0, 8), 16) % 3 === 0) return id;
    }
  };
  const scratchFilesBesideImage = async () => (await readdir(join(dir, 'vm'))).filter((f) => f.includes('.lifeboat-'));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-tcp-e2e-'));
    vm = await startLabVm({
      dir: join(dir, 'vm'),
      cacheDir: join(tmpdir(), 'lifeboat-vm-lab-cache'),
      name: `lifeboat-tcp-${process.pid}`,
      sizeBytes: DISK,
      dataBytes: 8 * MiB,
      behaviour: { mode: 'write', writeKiBs: 256 },
    });
    uuid = (await virsh(['domuuid', vm.name])).trim();
    ({ from, held } = await portsWithTwoHeld());
  }, 240_000);

  afterAll(async () => {
    for (const s of held) await closeServer(s);
    await vm?.remove();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('exports on the first free port of the range, reads the frozen disk over TCP, then only the dirty extents, and leaves nothing behind', async () => {
    const d = driver();
    const full = await d.snapshot({ source: vm.name, backupId: idStartingAtFirstPort('full'), parentBackupId: null });
    expect(full.disks.map((x) => x.path)).toEqual([`nbd://127.0.0.1:${from + 2}/vda`]);
    const job = await virsh(['backup-dumpxml', vm.name]);
    expect(job).toMatch(new RegExp(`<server transport='tcp' name='127.0.0.1' port='${from + 2}'/>`));
    expect(await scratchFilesBesideImage()).toHaveLength(1); // libvirt made it beside the image, named after the snapshot
    const reader = await d.openDisk(full.disks[0]!);
    expect(reader.sizeBytes).toBe(DISK);
    const allocated = await reader.allocated!();
    expect(allocated!.length).toBeGreaterThan(0);
    expect(await sha256Of(reader)).toBe((await vm.freezeHashes(1))[0]);
    await reader.close();
    await d.release({ source: vm.name }, full);
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
    expect(await accepts(from + 2)).toBe(false);
    expect(await scratchFilesBesideImage()).toEqual([]);

    await new Promise((r) => setTimeout(r, 3000)); // the guest writes 256 KiB/s meanwhile
    const incr = await d.snapshot({ source: vm.name, backupId: idStartingAtFirstPort('incr'), parentBackupId: 'full', parentCheckpoint: full.checkpoint! });
    expect(incr.disks[0]!.changeTracking).toEqual({ since: full.checkpoint, sinceBackupId: 'full' });
    const again = await d.openDisk(incr.disks[0]!);
    const changed = (await again.changed!())!;
    const dirty = changed.reduce((n, e) => n + e.length, 0);
    expect(dirty).toBeGreaterThan(0);
    expect(dirty).toBeLessThan(DISK / 4);
    expect(await sha256Of(again)).toBe((await vm.freezeHashes(2))[1]);
    await again.close();
    await d.release({ source: vm.name }, incr);
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
    expect(await scratchFilesBesideImage()).toEqual([]);
    await d.pruneCheckpoints(vm.name, []);
  }, 300_000);

  it('knows its TCP job from any mover: another mover clears a job left by a dead one, and releases a snapshot it did not take', async () => {
    const other = (w: string) =>
      new LibvirtDriver({
        uri: 'qemu:///system',
        workDir: join(dir, w),
        exports: { transport: 'tcp', address: '127.0.0.1', ports: [from, from + 2], tls: false, insecure: true },
      });
    const orphan = await other('dead-mover').snapshot({ source: vm.name, backupId: 'orphan' });
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Operation:\s+Backup/);
    // A mover with another work folder (another machine) backs the VM up: the dead one's job is aborted first.
    const next = await other('live-mover').snapshot({ source: vm.name, backupId: 'next' });
    expect(next.disks).toHaveLength(1);
    expect(await scratchFilesBesideImage()).toHaveLength(1);
    // Releasing the orphan's handle now must not touch the running job of another backup.
    await other('live-mover').release({ source: vm.name }, orphan);
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Operation:\s+Backup/);
    // A third mover releases `next` by its handle.
    await other('third-mover').release({ source: vm.name }, next);
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
    expect(await scratchFilesBesideImage()).toEqual([]);
    await other('third-mover').pruneCheckpoints(vm.name, []);
  }, 120_000);

  it('fails naming the ports when every port of the range is in use, and starts no job', async () => {
    const third = await hold(from + 2);
    expect(third).toBeDefined();
    held.push(third!);
    await expect(driver().snapshot({ source: vm.name, backupId: 'busy' })).rejects.toThrow(
      new RegExp(`no free port for VM '${vm.name}'s backup exports on 127.0.0.1: ports .*${from + 2}.* are in use; widen the host's exports.ports`),
    );
    expect(await virsh(['domjobinfo', vm.name])).toMatch(/Job type:\s+None/);
    expect(await scratchFilesBesideImage()).toEqual([]);
  }, 120_000);
});
