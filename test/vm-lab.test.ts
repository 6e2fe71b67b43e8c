import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { convertToRaw, createQcow2, guestCmdline, guestDomainXml, type GuestDisk } from '../local/vm-lab/domain.ts';
import { buildGuest, guestSourcesPresent, moduleLoadOrder, type GuestImage } from '../local/vm-lab/guest.ts';
import { ensureLibvirtd, virsh, waitForConsoleLine } from '../local/vm-lab/libvirtd.ts';

const MiB = 1024 * 1024;
const GUEST_CACHE = join(tmpdir(), 'lifeboat-vm-lab-cache');

describe('vm-lab without a hypervisor', () => {
  it('orders kernel modules after their dependencies, from modules.dep', () => {
    const dep = [
      'kernel/drivers/virtio/virtio_ring.ko:',
      'kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko:',
      'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
    ].join('\n');
    expect(moduleLoadOrder(dep, ['virtio_pci', 'virtio_blk'])).toEqual([
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci.ko',
      'kernel/drivers/block/virtio_blk.ko',
    ]);
    expect(() => moduleLoadOrder(dep, ['virtio_console'])).toThrow(/virtio_console/);
  });

  it('gives the domain the agent channel only when asked, and runs QEMU as root without relabelling', () => {
    const spec = {
      name: 'a&b',
      disks: [{ path: '/d/x.qcow2', format: 'qcow2', target: 'vda' } satisfies GuestDisk],
      kernel: '/k',
      initrd: '/i',
      cmdline: guestCmdline({ mode: 'idle' }),
      serialLog: '/s.log',
      memoryMiB: 128,
    };
    const withAgent = guestDomainXml({ ...spec, agent: true });
    expect(withAgent).toContain("<domain type='qemu'>");
    expect(withAgent).toContain('<name>a&amp;b</name>');
    expect(withAgent).toContain("name='org.qemu.guest_agent.0'");
    expect(withAgent).toContain("<seclabel type='static' model='dac' relabel='no'>");
    expect(withAgent).toContain('lifeboat.mode=idle');
    expect(withAgent).not.toContain('<interface');
    expect(guestDomainXml({ ...spec, agent: false })).not.toContain('guest_agent');
  });
});

// A machine without the packages skips the VM tests; CI must have them (.ci/run installs them).
const libvirt = await ensureLibvirtd();
const labReason = !libvirt.available
  ? libvirt.reason
  : (await guestSourcesPresent())
    ? undefined
    : 'the guest packages (linux-image-amd64, busybox-static, qemu-guest-agent) are missing';
if (labReason && process.env.CI) throw new Error(`CI must run the VM lab tests: ${labReason}`);

describe.skipIf(labReason !== undefined)('vm-lab guest on qemu:///system (TCG)', () => {
  let guest: GuestImage;
  let dir: string;
  const domains: string[] = [];

  beforeAll(async () => {
    guest = await buildGuest(GUEST_CACHE);
  });

  afterEach(async () => {
    for (const name of domains.splice(0)) {
      await virsh(['destroy', name]).catch(() => undefined);
      await virsh(['undefine', name]).catch(() => undefined);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function startGuest(disk: GuestDisk, opts: { agent: boolean; cmdline: string }) {
    const name = `lifeboat-test-${randomBytes(4).toString('hex')}`;
    const serialLog = join(dir, `${name}.console.log`);
    const xml = join(dir, `${name}.xml`);
    await writeFile(xml, guestDomainXml({ name, disks: [disk], ...guest, serialLog, memoryMiB: 128, ...opts }));
    await virsh(['define', xml]);
    domains.push(name);
    await virsh(['start', name]);
    const stopped = async () => !(await virsh(['domstate', name])).includes('running');
    return { name, serialLog, stopped };
  }

  const writes = async (name: string) => Number(/wr_req (\d+)/.exec(await virsh(['domblkstat', name, 'vda']))?.[1]);
  const sha256File = (path: string) =>
    new Promise<string>((resolve, reject) => {
      const h = createHash('sha256');
      createReadStream(path)
        .on('data', (b) => h.update(b))
        .on('end', () => resolve(h.digest('hex')))
        .on('error', reject);
    });
  const until = async (what: string, test: () => Promise<boolean>, timeoutMs: number) => {
    for (const deadline = Date.now() + timeoutMs; !(await test()); ) {
      if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };

  it('boots, writes, freezes at a stable disk through the agent, and a restored copy hashes as at the freeze', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vm-lab-'));
    const disk = join(dir, 'vda.qcow2');
    await createQcow2(disk, 64 * MiB);
    const vm = await startGuest({ path: disk, format: 'qcow2', target: 'vda' }, { agent: true, cmdline: guestCmdline({ writeKiBs: 128 }) });
    await waitForConsoleLine(vm.serialLog, /LIFEBOAT-GUEST READY mode=write/, 60_000, undefined, { stopped: vm.stopped });
    expect(await virsh(['qemu-agent-command', vm.name, '{"execute":"guest-ping"}'])).toContain('"return":{}');

    const before = await writes(vm.name);
    await until('the guest writer wrote twice more', async () => (await writes(vm.name)) >= before + 2, 20_000);

    await virsh(['domfsfreeze', vm.name]);
    const frozen = await waitForConsoleLine(vm.serialLog, /LIFEBOAT-FREEZE sha256=([0-9a-f]{64})/, 30_000);
    // While frozen the disk holds still: the image, read beside the running QEMU, is
    // what the guest hashed, and a second look a moment later finds it unchanged.
    const copy = join(dir, 'restored.raw');
    await convertToRaw(disk, copy, { shared: true });
    const atFreeze = await writes(vm.name);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await writes(vm.name)).toBe(atFreeze);
    expect(await sha256File(copy)).toBe(frozen.match[1]);

    await virsh(['domfsthaw', vm.name]);
    await waitForConsoleLine(vm.serialLog, /LIFEBOAT-THAW/, 10_000, undefined, { from: frozen.end });
    await until('the writer resumed after the thaw', async () => (await writes(vm.name)) > atFreeze, 20_000);
    await virsh(['destroy', vm.name]);

    // The copy booted in check mode reports the same hash as at the freeze.
    const check = await startGuest({ path: copy, format: 'raw', target: 'vda' }, { agent: false, cmdline: guestCmdline({ mode: 'check' }) });
    const reported = await waitForConsoleLine(check.serialLog, /LIFEBOAT-DISK sha256=([0-9a-f]{64})/, 60_000, undefined, { stopped: check.stopped });
    expect(reported.match[1]).toBe(frozen.match[1]);
    await until('the check guest powered off', check.stopped, 20_000);
  });
});
