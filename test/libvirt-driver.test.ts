/**
 * The libvirt driver's edges that need no running guest: the domain definitions it reads
 * and writes, and its errors for an unreachable host, a VM that is not there and a disk it
 * cannot read, against the real libvirtd (a defined, never started domain).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLibvirtd, virsh } from '../local/vm-lab/libvirtd.ts';
import { backedUpDisks, parseDomainXml, qemuOwner, restoredDomainXml } from '../mover/sources/libvirt/domain-xml.ts';
import { checkpointXml, pullBackupXml, tcpBackupXml, tracksChanges } from '../mover/sources/libvirt/backup-xml.ts';
import { LibvirtDriver } from '../mover/sources/libvirt/driver.ts';
import { snapshotDir } from '../mover/sources/libvirt/snapshot-folder.ts';

const DOMAIN = `<domain type='qemu'>
  <name>web-1</name>
  <uuid>0c8a9f3e-1111-2222-3333-444455556666</uuid>
  <metadata><lifeboat:tags xmlns:lifeboat="https://lifeboat.dev/libvirt/1">gold, db</lifeboat:tags></metadata>
  <memory unit='KiB'>131072</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/img'><host name='ceph' port='6789'/></source><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso'/><target dev='sda'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><target dev='vnet0'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64056</label></seclabel>
</domain>`;

describe('domain definitions', () => {
  it("reads identity, disks, the agent channel, tags and QEMU's user", () => {
    const info = parseDomainXml(DOMAIN, 'web-1');
    expect(info).toMatchObject({ name: 'web-1', uuid: '0c8a9f3e-1111-2222-3333-444455556666', agentChannel: true, tags: ['gold', 'db'] });
    expect(info.disks.map((d) => [d.target, d.type, d.device, d.format, d.readonly])).toEqual([
      ['vda', 'file', 'disk', 'qcow2', false],
      ['vdb', 'network', 'disk', 'raw', false],
      ['sda', 'file', 'cdrom', 'raw', true],
    ]);
    expect(qemuOwner(DOMAIN)).toEqual({ uid: 64055, gid: 64056 });
  });

  it('refuses a network disk, naming it and what to do', () => {
    expect(() => backedUpDisks(parseDomainXml(DOMAIN, "VM 'web-1'"), "VM 'web-1'")).toThrow(/disk vdb of VM 'web-1' is a network disk; .*exclude the VM/);
  });

  it('rejects what is not a domain definition', () => {
    expect(() => parseDomainXml('<domain><name>x</name></domain>', 'x')).toThrow(/no <name> or <uuid>/);
    expect(() => parseDomainXml('<domain', 'x')).toThrow(/not valid XML|no <name>/);
  });

  it('defines a restored copy with its own name, no UUID or MAC, restored disks, a console file, and no network for a test', () => {
    const xml = restoredDomainXml(DOMAIN, { name: 'web-1-copy', disks: { vda: { path: '/r/vda.qcow2', format: 'qcow2' } }, consoleLog: '/r/console.log' });
    const info = parseDomainXml(xml.replace('<name>', '<uuid>00000000-0000-0000-0000-000000000000</uuid><name>'), 'copy');
    expect(info.name).toBe('web-1-copy');
    expect(xml).not.toContain('0c8a9f3e-1111');
    expect(xml).not.toContain('52:54:00:aa:bb:cc');
    expect(info.disks.map((d) => [d.target, d.source, d.format])).toEqual([['vda', '/r/vda.qcow2', 'qcow2']]); // vdb (not restored) and the CD-ROM dropped
    expect(xml).toMatch(/<serial type="file"><source path="\/r\/console.log"\/>/);
    expect(xml).not.toContain("type='pty'");
    expect(restoredDomainXml(DOMAIN, { name: 'n', disks: {}, consoleLog: '/c', withoutNetwork: true })).not.toContain('<interface');
  });

  it("escapes what it puts into the backup job's XML", () => {
    const xml = pullBackupXml([{ target: "vd'a", device: 'disk', type: 'file', format: 'raw', readonly: false }], '/w/<d>', '/w/s&.sock', 'cp"1');
    expect(xml).toContain("name='vd&apos;a'");
    expect(xml).toContain('/w/s&amp;.sock');
    expect(xml).toContain('<incremental>cp&quot;1</incremental>');
  });

  it('tracks changes of qcow2 disks only: a raw disk gets no bitmap in the checkpoint and is exported whole in an incremental job', () => {
    const disks = [
      { target: 'vda', device: 'disk', type: 'file', format: 'qcow2', readonly: false, source: '/i/a.qcow2' },
      { target: 'vdb', device: 'disk', type: 'file', format: 'raw', readonly: false, source: '/i/b.raw' },
    ];
    expect(disks.map(tracksChanges)).toEqual([true, false]);
    const cp = checkpointXml('lifeboat-b1', disks);
    expect(cp).toContain("<disk name='vda' checkpoint='bitmap'/>");
    expect(cp).toContain("<disk name='vdb' checkpoint='no'/>");
    const incr = pullBackupXml(disks, '/w/d', '/w/d/nbd.sock', 'lifeboat-b0');
    expect(incr).toContain("<disk name='vda' backup='yes' type='file'>");
    expect(incr).toContain("<disk name='vdb' backup='yes' backupmode='full' type='file'>");
    expect(pullBackupXml(disks, '/w/d', '/w/d/nbd.sock', undefined)).not.toContain('backupmode');
    expect(tcpBackupXml(disks, { address: 'h', port: 1, tls: true, mark: 'm' }, 'lifeboat-b0')).toContain(
      "<disk name='vdb' backup='yes' backupmode='full' type='file'>",
    );
  });

  it('exports on TCP with TLS when asked, the scratch files on the hypervisor named after the snapshot', () => {
    const disks = [{ target: 'vda', device: 'disk', type: 'file', format: 'qcow2', readonly: false, source: '/var/lib/libvirt/images/web-1.qcow2' }];
    const beside = tcpBackupXml(disks, { address: 'kvm-01.example.com', port: 10811, tls: true, mark: '0123456789abcdef' }, 'lifeboat-b0');
    expect(beside).toContain("<server transport='tcp' name='kvm-01.example.com' port='10811' tls='yes'/>");
    expect(beside).toContain("<scratch file='/var/lib/libvirt/images/web-1.qcow2.lifeboat-0123456789abcdef.scratch'/>");
    expect(beside).toContain('<incremental>lifeboat-b0</incremental>');
    const inDir = tcpBackupXml(disks, { address: '10.0.0.5', port: 10809, tls: false, scratchDir: '/srv/scratch', mark: '0123456789abcdef' }, undefined);
    expect(inDir).toContain("<server transport='tcp' name='10.0.0.5' port='10809'/>");
    expect(inDir).toContain("<scratch file='/srv/scratch/lifeboat-0123456789abcdef-vda.qcow2'/>");
    expect(inDir).not.toContain('incremental');
  });

  it('keeps snapshot folders short enough for unix sockets, and refuses a work folder too deep', () => {
    expect(snapshotDir('/var/lib/lifeboat-mover/work/libvirt', 'u', 'b')).toMatch(/^\/var\/lib\/lifeboat-mover\/work\/libvirt\/[0-9a-f]{16}$/);
    expect(() => snapshotDir(`/${'x'.repeat(100)}`, 'u', 'b')).toThrow(/too deep .* LIFEBOAT_WORK_DIR/);
  });
});

const lab = await ensureLibvirtd();
if (!lab.available && process.env.CI) throw new Error(`libvirt is needed by this test in CI: ${lab.reason}`);

describe.skipIf(!lab.available)('libvirt driver errors against libvirtd', () => {
  let dir: string;
  const name = `lifeboat-drv-${process.pid}`;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-drv-'));
    const xml = DOMAIN.replace('<name>web-1</name>', `<name>${name}</name>`)
      .replace(/<uuid>.*<\/uuid>/, '')
      .replace(/<seclabel[\s\S]*<\/seclabel>/, '');
    await writeFile(join(dir, 'd.xml'), xml);
    await virsh(['define', join(dir, 'd.xml')]);
  });
  afterAll(async () => {
    await virsh(['undefine', name]).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });

  it('names a VM that does not exist and what to do', async () => {
    const d = new LibvirtDriver({ uri: 'qemu:///system', workDir: join(dir, 'w') });
    await expect(d.snapshot({ source: 'no-such-domain', backupId: 'b1' })).rejects.toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringMatching(/VM 'no-such-domain' on qemu:\/\/\/system does not exist: .*discovery/),
    });
  });

  it('refuses a network disk before anything is started, and leaves nothing behind', async () => {
    const d = new LibvirtDriver({ uri: 'qemu:///system', workDir: join(dir, 'w') });
    await expect(d.snapshot({ source: name, backupId: 'b1' })).rejects.toThrow(/disk vdb .* is a network disk/);
    expect(await virsh(['checkpoint-list', '--name', name])).toBe('\n');
  });

  it('names an unreachable libvirt host', async () => {
    const d = new LibvirtDriver({ uri: 'qemu+tcp://127.0.0.1:1/system', workDir: join(dir, 'w'), timeoutMs: 20_000 });
    await expect(d.snapshot({ source: name, backupId: 'b1' })).rejects.toMatchObject({
      name: 'Mover.SourceUnavailable',
      message: expect.stringMatching(/cannot reach libvirt at qemu\+tcp:\/\/127\.0\.0\.1:1\/system .*Check the host's "uri"/),
    });
  });
});
