/**
 * A running lab VM for the demo, the benches and the libvirt tests: the lab's guest
 * booted from a qcow2 disk pre-filled with data (so a full backup has something to move),
 * its console read for the guest's marks, and removed with everything it made.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestTimeout, VmLabUnavailable } from './errors.ts';
import { guestCmdline, guestDomainXml, type GuestBehaviour } from './domain.ts';
import { buildGuest } from './guest.ts';
import { virsh, waitForConsoleLine } from './libvirtd.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface LabVmOptions {
  /** Folder for the VM's disk, console log and definition (created; removed by `remove`). */
  dir: string;
  /** Where built guests are cached between runs. */
  cacheDir: string;
  name: string;
  sizeBytes: number;
  /** Bytes of random data written at the start of the disk before boot (default: a quarter of it). */
  dataBytes?: number;
  behaviour?: GuestBehaviour;
  /** The disk image's format (default qcow2; raw images get no changed-block tracking). */
  format?: 'qcow2' | 'raw';
  agent?: boolean;
  /** How long the first boot may take to print READY (and its agent to answer), default 120 s: a loaded machine's TCG boot takes longer. */
  bootTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface LabVm {
  name: string;
  disk: string;
  serialLog: string;
  /**
   * The sha256 hashes the guest printed at each freeze, oldest first, once there are at
   * least `count` (the guest prints each a few seconds after its freeze).
   */
  freezeHashes(count?: number, timeoutMs?: number): Promise<string[]>;
  /**
   * Waits until QEMU has counted `count` more write requests to the guest's disk than when
   * called: the writer pauses at each freeze until that freeze's hash is printed, which can
   * take long under TCG on a loaded machine, so a fixed sleep may see no write at all.
   */
  writes(count: number, timeoutMs?: number): Promise<void>;
  /**
   * Starts the shut-off domain and waits until the guest is ready and (when it has one)
   * its agent answers. QEMU truncates the console file at start: earlier marks are gone.
   */
  start(timeoutMs?: number): Promise<void>;
  /** Pulls the plug: SIGKILLs QEMU (its qcow2 is left as after a power cut) and waits until libvirt sees the domain off. */
  powerCut(timeoutMs?: number): Promise<void>;
  /** Destroys and undefines the domain (with its checkpoints' metadata) and removes its folder. */
  remove(): Promise<void>;
}

/** Defines and starts a lab VM and waits until the guest says it is ready. */
export async function startLabVm(o: LabVmOptions): Promise<LabVm> {
  const guest = await buildGuest(o.cacheDir);
  await mkdir(o.dir, { recursive: true });
  const format = o.format ?? 'qcow2';
  const disk = join(o.dir, `vda.${format}`);
  const serialLog = join(o.dir, 'console.log');
  await prefilledImage(disk, format, o.sizeBytes, o.dataBytes ?? Math.floor(o.sizeBytes / 4 / MiB) * MiB);
  const xmlPath = join(o.dir, 'domain.xml');
  await writeFile(
    xmlPath,
    guestDomainXml({
      name: o.name,
      disks: [{ path: disk, format, target: 'vda' }],
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guestCmdline(o.behaviour ?? {}),
      serialLog,
      agent: o.agent ?? true,
      memoryMiB: 192,
    }),
  );
  const vm: LabVm = {
    name: o.name,
    disk,
    serialLog,
    freezeHashes: async (count = 0, timeoutMs = 120_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hashes = [...(await readFile(serialLog, 'utf8').catch(() => '')).matchAll(/LIFEBOAT-FREEZE sha256=([0-9a-f]{64})/g)].map((m) => m[1]!);
        if (hashes.length >= count) return hashes;
        if (Date.now() > deadline)
          throw new GuestTimeout(`guest ${o.name} printed ${hashes.length} freeze hashes of ${count} within ${timeoutMs / 1000} s (console: ${serialLog})`);
        await new Promise((r) => setTimeout(r, 500));
      }
    },
    writes: async (count, timeoutMs = 120_000) => {
      const deadline = Date.now() + timeoutMs;
      const written = async () => Number(/wr_req\s+(\d+)/.exec(await virsh(['domblkstat', o.name, 'vda']))?.[1] ?? Number.NaN);
      const from = await written();
      for (;;) {
        const now = await written();
        if (now - from >= count) return;
        if (Date.now() > deadline)
          throw new GuestTimeout(`guest ${o.name} wrote ${now - from} blocks of ${count} within ${timeoutMs / 1000} s (console: ${serialLog})`);
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    start: async (timeoutMs = 180_000) => {
      await virsh(['start', o.name]);
      await waitForConsoleLine(serialLog, /LIFEBOAT-GUEST READY/, timeoutMs, o.signal);
      if (o.agent ?? true) await waitForAgent(o.name, timeoutMs, o.signal);
    },
    powerCut: async (timeoutMs = 30_000) => {
      const pid = Number((await readFile(`/run/libvirt/qemu/${o.name}.pid`, 'utf8')).trim());
      process.kill(pid, 'SIGKILL');
      const deadline = Date.now() + timeoutMs;
      while ((await virsh(['domstate', o.name])).trim() !== 'shut off') {
        if (Date.now() > deadline)
          throw new GuestTimeout(`libvirt still reports ${o.name} running ${timeoutMs / 1000} s after its QEMU (pid ${pid}) was killed`);
        await sleep(200, undefined, { signal: o.signal });
      }
    },
    remove: async () => {
      await virsh(['destroy', o.name]).catch(() => {});
      await virsh(['undefine', '--checkpoints-metadata', o.name]).catch(() => virsh(['undefine', o.name]).catch(() => {}));
      await rm(o.dir, { recursive: true, force: true });
    },
  };
  try {
    await virsh(['define', xmlPath]);
    await virsh(['start', o.name]);
    await waitForConsoleLine(serialLog, /LIFEBOAT-GUEST READY/, o.bootTimeoutMs ?? 120_000, o.signal);
    if (o.agent ?? true) await waitForAgent(o.name, o.bootTimeoutMs ?? 120_000, o.signal);
  } catch (err) {
    await vm.remove();
    throw err;
  }
  return vm;
}

/**
 * Waits until the guest agent answers a ping. qemu-ga starts after the guest prints READY
 * and libvirt sees the channel connect a moment later; under TCG on a loaded host that
 * takes seconds.
 */
async function waitForAgent(name: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await virsh(['qemu-agent-command', '--timeout', '5', name, '{"execute":"guest-ping"}']);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new GuestTimeout(`the guest agent of ${name} did not answer within ${timeoutMs / 1000} s: ${(err as Error).message}`);
    }
    await sleep(500, undefined, { signal });
  }
}

/** An image whose first `dataBytes` are random (the rest unallocated: a hole in a raw file). */
async function prefilledImage(path: string, format: 'qcow2' | 'raw', sizeBytes: number, dataBytes: number): Promise<void> {
  const raw = format === 'raw' ? path : `${path}.fill.raw`;
  try {
    await writeFile(raw, '');
    for (let at = 0; at < dataBytes; at += 8 * MiB) await writeFile(raw, randomBytes(Math.min(8 * MiB, dataBytes - at)), { flag: 'a' });
    await run('truncate', ['-s', String(sizeBytes), raw]);
    if (format === 'qcow2') await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path]);
  } catch (err) {
    throw new VmLabUnavailable(`the lab VM's disk ${path} could not be made: ${(err as { stderr?: string }).stderr?.trim() ?? String(err)}`, err);
  } finally {
    if (format === 'qcow2') await rm(raw, { force: true });
  }
}
