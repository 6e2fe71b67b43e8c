/**
 * libvirt domain XML for the lab's guest ({@link buildGuest}) and its disk images.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { VmLabUnavailable } from './errors.ts';
import { xmlEscape } from '../../mover/sources/libvirt/backup-xml.ts';

const run = promisify(execFile);

/** One virtio disk of a guest domain. */
export interface GuestDisk {
  /** Absolute path of the image file. */
  path: string;
  format: 'qcow2' | 'raw';
  /** Guest device name; the guest's writer and `check` mode use `vda`. */
  target: 'vda' | 'vdb' | 'vdc' | 'vdd';
}

/** What {@link guestDomainXml} needs; every path absolute. */
export interface GuestDomainSpec {
  name: string;
  disks: readonly GuestDisk[];
  kernel: string;
  initrd: string;
  /** Appended after `console=ttyS0`, e.g. {@link guestCmdline}'s result. */
  cmdline: string;
  /** File that receives the guest's serial console (ttyS0). */
  serialLog: string;
  /** Adds the `org.qemu.guest_agent.0` virtio-serial channel, which qemu-ga in the guest serves. */
  agent: boolean;
  memoryMiB: number;
}

/** How the guest's `/init` behaves (see README.md). */
export interface GuestBehaviour {
  /** `write` (default): keep writing 64 KiB blocks to /dev/vda; `idle`: write nothing; `check`: print the disk's sha256 and power off. */
  mode?: 'write' | 'idle' | 'check';
  /** The writer's rate in KiB/s (default 64, i.e. one 64 KiB block a second). */
  writeKiBs?: number;
  /**
   * Hash the disk at each freeze (`LIFEBOAT-FREEZE sha256=`, default true). The writer waits
   * for the hash, which takes minutes for a disk of gigabytes under TCG: benches turn it off.
   */
  freezeHash?: boolean;
  /** Start qemu-ga when the domain has the agent channel (default true); false: the channel is there and nobody answers (a readiness check that never passes). */
  agent?: boolean;
}

/** The kernel command line for a behaviour: `lifeboat.mode=… lifeboat.write_kib_s=…`. */
export function guestCmdline(b: GuestBehaviour = {}): string {
  const rate = b.writeKiBs ?? 64;
  if (!Number.isInteger(rate) || rate < 1) throw new RangeError(`writeKiBs must be a positive integer, got ${rate}`);
  return `lifeboat.mode=${b.mode ?? 'write'} lifeboat.write_kib_s=${rate}${b.freezeHash === false ? ' lifeboat.freeze_hash=0' : ''}${b.agent === false ? ' lifeboat.agent=0' : ''}`;
}

/**
 * A `<domain type='qemu'>` (TCG: KVM guests hang on these machines) booting the kernel
 * directly, with virtio disks, the serial console written to a file, no network, and the
 * guest agent channel when asked. QEMU runs as root through the domain's own DAC
 * `<seclabel>`, without relabelling, so the default qemu.conf (`libvirt-qemu` user,
 * dynamic ownership) needs no edit and the caller's files keep their owners.
 * Any stop (poweroff, reboot, crash) ends the domain: `check` mode powers off when done,
 * and a guest panic reboots (`panic=-1`) into a stopped domain instead of a loop.
 * `no_timer_check`: under TCG on a loaded host the kernel's early check of the IO-APIC
 * timer can miss its ticks and panic ("IO-APIC + timer doesn't work"); the virtual timer
 * works, so the check is skipped, as is usual for guests.
 */
export function guestDomainXml(spec: GuestDomainSpec): string {
  const e = xmlEscape;
  const disks = spec.disks.map(
    (d) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='${d.format}'/>
      <source file='${e(d.path)}'/>
      <target dev='${d.target}' bus='virtio'/>
    </disk>`,
  );
  const agent = spec.agent
    ? `
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>`
    : '';
  return `<domain type='qemu'>
  <name>${e(spec.name)}</name>
  <memory unit='MiB'>${spec.memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${e(spec.kernel)}</kernel>
    <initrd>${e(spec.initrd)}</initrd>
    <cmdline>${e(`console=ttyS0 quiet panic=-1 no_timer_check ${spec.cmdline}`)}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
${disks.join('\n')}
    <serial type='file'>
      <source path='${e(spec.serialLog)}'/>
      <target port='0'/>
    </serial>${agent}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'>
    <label>+0:+0</label>
  </seclabel>
</domain>
`;
}

async function qemuImg(args: readonly string[]): Promise<string> {
  try {
    return (await run('qemu-img', args)).stdout;
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr?.trim();
    throw new VmLabUnavailable(`qemu-img ${args.join(' ')} failed${stderr ? `: ${stderr}` : ''} (Debian package qemu-utils)`, e);
  }
}

/** Creates an empty (all-zero, unallocated) qcow2 image of `sizeBytes` at `path`. */
export async function createQcow2(path: string, sizeBytes: number): Promise<void> {
  await qemuImg(['create', '-q', '-f', 'qcow2', path, String(sizeBytes)]);
}

/**
 * Copies an image's guest-visible content into a raw file (`qemu-img convert`). Pass
 * `shared: true` to read an image a running domain holds open (`-U`); it is consistent
 * only while the guest is quiet, e.g. frozen (the freeze hook flushes the disk).
 */
export async function convertToRaw(src: string, dst: string, opts: { shared?: boolean } = {}): Promise<void> {
  await qemuImg(['convert', ...(opts.shared ? ['-U'] : []), '-O', 'raw', src, dst]);
}
