/**
 * A usable `qemu:///system` on a machine without systemd (CI, the demo), a small
 * `virsh` runner and a tail of a guest's serial console file.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { GuestTimeout, VmLabUnavailable } from './errors.ts';

const run = promisify(execFile);

/** The libvirt URI every VM lab helper talks to. */
export const LIBVIRT_URI = 'qemu:///system';

/** Whether the lab can run VMs here, and if not, why (the demo falls back to a folder VM). */
export type LibvirtStatus =
  | { available: true; uri: string /** libvirtd was started by this call. */; startedHere: boolean }
  | { available: false; reason: string };

/** Where a tool is, searching PATH and the sbin folders a non-login PATH may lack. */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) if (d && existsSync(join(d, name))) return join(d, name);
  return undefined;
}

/**
 * Makes `qemu:///system` answer: when `virsh version` does not, starts `virtlogd -d`
 * (libvirt sends QEMU's stdio and chardev logs through it) and `libvirtd -d`, then waits
 * for `virsh version`. Leaves /etc alone: QEMU's user comes from each domain's
 * `<seclabel>` ({@link guestDomainXml} runs it as root, which the qemu.conf default
 * `libvirt-qemu` user would need instead). Safe to call from several processes at once:
 * a second libvirtd finds the first one's pid file and exits.
 * Resolves `{ available: false, reason }` when virsh, libvirtd, virtlogd or
 * qemu-system-x86_64 is not installed; throws {@link VmLabUnavailable} when they are
 * but the daemon does not answer within `timeoutMs`.
 */
export async function ensureLibvirtd(opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<LibvirtStatus> {
  const tools = { virsh: 'libvirt-clients', libvirtd: 'libvirt-daemon', virtlogd: 'libvirt-daemon', 'qemu-system-x86_64': 'qemu-system-x86' };
  const path: Record<string, string> = {};
  for (const [tool, pkg] of Object.entries(tools)) {
    const found = findTool(tool);
    if (!found) return { available: false, reason: `${tool} is not installed (Debian package ${pkg})` };
    path[tool] = found;
  }
  if (
    !existsSync('/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so') &&
    !existsSync('/usr/lib64/libvirt/connection-driver/libvirt_driver_qemu.so')
  ) {
    return { available: false, reason: "libvirt's QEMU driver is not installed (Debian package libvirt-daemon-driver-qemu)" };
  }
  if (await virshAnswers()) return { available: true, uri: LIBVIRT_URI, startedHere: false };

  // Either may already run (a pid-file lock makes a second one exit non-zero): only
  // virsh answering counts.
  await run(path.virtlogd!, ['-d']).catch(() => undefined);
  const started = await run(path.libvirtd!, ['-d']).then(
    () => undefined,
    (e: unknown) => e,
  );
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  while (Date.now() < deadline) {
    opts.signal?.throwIfAborted();
    if (await virshAnswers()) return { available: true, uri: LIBVIRT_URI, startedHere: started === undefined };
    await sleep(250, undefined, { signal: opts.signal });
  }
  throw new VmLabUnavailable(`libvirtd did not answer on ${LIBVIRT_URI} within ${opts.timeoutMs ?? 30_000} ms`, started);
}

async function virshAnswers(): Promise<boolean> {
  try {
    const { stdout } = await run('virsh', ['-c', LIBVIRT_URI, 'version'], { timeout: 10_000 });
    return /hypervisor/i.test(stdout);
  } catch {
    return false;
  }
}

/**
 * Runs `virsh -c qemu:///system ...args` and resolves its stdout. A failure is a
 * {@link VmLabUnavailable} whose message carries virsh's stderr.
 */
export async function virsh(args: readonly string[], opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await run('virsh', ['-c', LIBVIRT_URI, ...args], { signal: opts.signal, timeout: opts.timeoutMs ?? 60_000 });
    return stdout;
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr?.trim();
    throw new VmLabUnavailable(`virsh ${args.join(' ')} failed${stderr ? `: ${stderr}` : ''}`, e);
  }
}

/** A console line {@link waitForConsoleLine} found. */
export interface ConsoleLine {
  match: RegExpMatchArray;
  /** Byte offset just past the line: pass it as `from` to wait for a later line. */
  end: number;
}

/**
 * Waits until a complete line of the serial console file `serialLog` (at or after byte
 * `from`) matches `regex`. Reads from `from` each poll, so the caller need not start
 * waiting before the guest prints. `stopped`, polled about once a second, ends the wait
 * early when it resolves true (the domain is no longer running). Rejects with
 * {@link GuestTimeout} (carrying the console's tail) after `timeoutMs` or when stopped,
 * or with the signal's reason when aborted.
 */
export async function waitForConsoleLine(
  serialLog: string,
  regex: RegExp,
  timeoutMs: number,
  signal?: AbortSignal,
  opts: { from?: number; stopped?: () => Promise<boolean> } = {},
): Promise<ConsoleLine> {
  const deadline = Date.now() + timeoutMs;
  const lineRegex = new RegExp(regex.source, regex.flags.replace('g', ''));
  const find = (text: string): ConsoleLine | undefined => {
    let pos = 0;
    for (;;) {
      const nl = text.indexOf('\n', pos);
      if (nl < 0) return undefined;
      const match = lineRegex.exec(text.slice(pos, nl).replace(/\r$/, ''));
      if (match) return { match, end: (opts.from ?? 0) + nl + 1 };
      pos = nl + 1;
    }
  };
  for (let polls = 1; ; polls++) {
    signal?.throwIfAborted();
    let text = await readText(serialLog, opts.from ?? 0);
    let found = find(text);
    if (found) return found;
    let why = Date.now() > deadline ? `within ${timeoutMs} ms` : undefined;
    if (!why && opts.stopped && polls % 8 === 0 && (await opts.stopped())) {
      // The guest may have printed the line just before it stopped.
      text = await readText(serialLog, opts.from ?? 0);
      found = find(text);
      if (found) return found;
      why = 'before the guest stopped';
    }
    if (why) throw new GuestTimeout(`no console line matching ${regex} in ${serialLog} ${why}; its tail:\n${text.slice(-2000)}`);
    await sleep(125, undefined, { signal });
  }
}

/** The file from byte `from` on, one char per byte so that offsets stay byte offsets. */
async function readText(path: string, from: number): Promise<string> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return '';
  try {
    return (await fh.readFile()).subarray(from).toString('latin1');
  } finally {
    await fh.close();
  }
}
