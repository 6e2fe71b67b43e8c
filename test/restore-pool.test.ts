/**
 * Restoring into a libvirt storage pool, the parts that need no libvirtd: the volumes'
 * names, the room a disk needs in a pool, the refusals before anything is created, the
 * restored domain's disks as pool volumes, and the request's `define.pool`.
 */
import { describe, expect, it } from 'vitest';
import { restoreRequest } from '../functions/restore/restore.ts';
import { bytesNeeded, StoragePool, volumeName, volumeXml } from '../mover/recovery/pool-volumes.ts';
import { backedUpDisks, parseDomainXml, restoredDomainXml } from '../mover/sources/libvirt/domain-xml.ts';
import { Virsh } from '../mover/sources/libvirt/virsh.ts';

const MiB = 1024 * 1024;
const DOMAIN = `<domain type='qemu'>
  <name>web-1</name>
  <uuid>0c8a9f3e-1111-2222-3333-444455556666</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>`;

describe('volume names', () => {
  it('names a volume after the restored domain, the disk and the format', () => {
    expect(volumeName('web-1-copy', 'vda', 'qcow2')).toBe('web-1-copy-vda.qcow2');
    expect(volumeName('web-1-copy', 'vdb', 'raw')).toBe('web-1-copy-vdb.raw');
  });

  it('keeps a disk id that is not a plain device name from escaping the pool', () => {
    expect(volumeName('d', '../x y', 'raw')).toBe('d-.._x_y.raw');
    expect(volumeName('d', '../x y', 'raw')).not.toContain('/');
  });
});

describe('volume definitions', () => {
  it("makes qcow2 volumes compat 1.1, which can hold the bitmaps of the restored VM's next incremental backups", () => {
    const xml = volumeXml({ name: 'c-vda.qcow2', capacity: 64 * MiB, format: 'qcow2', filePool: true });
    expect(xml).toContain("<target><format type='qcow2'/><compat>1.1</compat></target>");
    expect(xml).toContain(`<capacity unit='bytes'>${64 * MiB}</capacity><allocation unit='bytes'>0</allocation>`);
  });

  it('gives a raw volume a format in a file pool only, and escapes the name', () => {
    expect(volumeXml({ name: 'c-vda.raw', capacity: 1, format: 'raw', filePool: true })).toContain("<target><format type='raw'/></target>");
    expect(volumeXml({ name: 'c-vda.raw', capacity: 1, format: 'raw', filePool: false })).toContain('<target></target>');
    expect(volumeXml({ name: "a<'&", capacity: 1, format: 'raw', filePool: true })).toContain('<name>a&lt;&apos;&amp;</name>');
  });
});

describe('room a disk needs in a pool', () => {
  it("is the disk's data in a file pool (thin volumes), with qcow2 tables on top", () => {
    expect(bytesNeeded({ poolType: 'dir', format: 'raw', sizeBytes: 64 * MiB, dataBytes: 10 * MiB })).toBe(10 * MiB);
    const q = bytesNeeded({ poolType: 'netfs', format: 'qcow2', sizeBytes: 64 * MiB, dataBytes: 10 * MiB });
    expect(q).toBeGreaterThan(10 * MiB);
    expect(q).toBeLessThan(13 * MiB);
  });

  it('is the whole disk in a block pool, whose volumes are allocated whole', () => {
    expect(bytesNeeded({ poolType: 'logical', format: 'raw', sizeBytes: 64 * MiB, dataBytes: 10 * MiB })).toBe(64 * MiB);
  });

  it('refuses an inactive pool and one without room, naming the pool, the disk and what to do', async () => {
    const pool = new StoragePool(new Virsh('qemu:///system'), 'vmstore');
    await expect(pool.checkRoom(MiB, 'disk vda', { type: 'dir', active: false, availableBytes: 100 * MiB })).rejects.toMatchObject({
      name: 'Recovery.RequestInvalid',
      message: expect.stringMatching(/storage pool 'vmstore' on qemu:\/\/\/system is not active: start it \(virsh pool-start vmstore\)/),
    });
    await expect(pool.checkRoom(20 * MiB, "disk vda (volume 'x-vda.raw')", { type: 'dir', active: true, availableBytes: 5 * MiB })).rejects.toThrow(
      /storage pool 'vmstore' on qemu:\/\/\/system has 5\.0 MiB available; disk vda \(volume 'x-vda\.raw'\) needs 20\.0 MiB: free space in the pool/,
    );
    await expect(pool.checkRoom(5 * MiB, 'disk vda', { type: 'dir', active: true, availableBytes: 5 * MiB })).resolves.toBeUndefined();
  });
});

describe('a restored domain on pool volumes', () => {
  it('points each restored disk at its volume by pool and name, with its format, and reads back as such', () => {
    const xml = restoredDomainXml(DOMAIN, {
      name: 'web-1-copy',
      consoleLog: '/r/console.log',
      disks: {
        vda: { pool: 'vmstore', volume: 'web-1-copy-vda.qcow2', format: 'qcow2' },
        vdb: { pool: 'vmstore', volume: 'web-1-copy-vdb.raw', format: 'raw' },
      },
    });
    expect(xml).toContain('<disk type="volume" device="disk"><driver name="qemu" type="qcow2"/><source pool="vmstore" volume="web-1-copy-vda.qcow2"/>');
    expect(xml).toContain('<disk type="volume" device="disk"><driver name="qemu" type="raw"/><source pool="vmstore" volume="web-1-copy-vdb.raw"/>');
    expect(xml).not.toContain('/v/a.qcow2');
    expect(xml).not.toContain('/dev/sdb');
    const info = parseDomainXml(xml.replace('<name>', '<uuid>00000000-0000-0000-0000-000000000000</uuid><name>'), 'copy');
    expect(info.disks.map((d) => [d.target, d.type, d.format, d.volume])).toEqual([
      ['vda', 'volume', 'qcow2', { pool: 'vmstore', name: 'web-1-copy-vda.qcow2' }],
      ['vdb', 'volume', 'raw', { pool: 'vmstore', name: 'web-1-copy-vdb.raw' }],
    ]);
  });

  it('is backed up like any other: its volume disks are read (a network disk still is not)', () => {
    const xml = restoredDomainXml(DOMAIN, { name: 'c', consoleLog: '/c', disks: { vda: { pool: 'vmstore', volume: 'c-vda.qcow2', format: 'qcow2' } } });
    const info = parseDomainXml(xml.replace('<name>', '<uuid>u</uuid><name>'), 'c');
    expect(backedUpDisks(info, 'c').map((d) => [d.target, d.volume?.name])).toEqual([['vda', 'c-vda.qcow2']]);
    const network = { ...info, disks: [{ target: 'vdb', device: 'disk', type: 'network', format: 'raw', readonly: false }] };
    expect(() => backedUpDisks(network, 'c')).toThrow(/vdb of c is a network disk; the libvirt driver reads file, block and storage pool volume disks only/);
  });

  it('escapes pool and volume names it writes into the definition', () => {
    const xml = restoredDomainXml(DOMAIN, { name: 'n', consoleLog: '/c', disks: { vda: { pool: 'p"&', volume: "v'<", format: 'raw' } } });
    expect(parseDomainXml(xml.replace('<name>', '<uuid>u</uuid><name>'), 'n').disks[0]!.volume).toEqual({ pool: 'p"&', name: "v'<" });
  });
});

describe('the restore request', () => {
  const base = { vmId: 'vm', target: '/r', moverGroup: 'g' };

  it('takes a storage pool with define', () => {
    expect(restoreRequest.parse({ ...base, define: { uri: 'qemu:///system', pool: 'vm-store_1', format: 'raw' } }).define).toMatchObject({
      pool: 'vm-store_1',
      format: 'raw',
    });
  });

  it('refuses a pool name virsh could take for an option or a path, naming the key', () => {
    for (const pool of ['--all', '../x', '', 'a b']) {
      const r = restoreRequest.safeParse({ ...base, define: { uri: 'qemu:///system', pool } });
      expect(r.success, pool).toBe(false);
      expect(JSON.stringify(r.error?.issues), pool).toMatch(/"pool"/);
    }
  });
});
