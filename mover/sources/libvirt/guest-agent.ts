/**
 * Commands run inside a guest through the QEMU guest agent (`guest-exec`, then
 * `guest-exec-status` until it exits), via `virsh qemu-agent-command`: the policy's
 * pre/post quiesce hooks. The guest's answer is untrusted input: it is parsed with
 * checks, and its output is kept short.
 */
import { SourceUnavailable } from '../../../contracts/errors.ts';
import type { Virsh } from './virsh.ts';

export interface GuestExecResult {
  exitCode: number;
  /** The end of its standard output and error (at most 2 KiB each). */
  stdout: string;
  stderr: string;
}

const TAIL = 2048;
const tail = (b64: unknown) => (typeof b64 === 'string' ? Buffer.from(b64, 'base64').toString('utf8').slice(-TAIL) : '');

async function agent(virsh: Virsh, domain: string, command: object, signal?: AbortSignal): Promise<Record<string, unknown>> {
  const out = await virsh.run(['qemu-agent-command', '--timeout', '30', '--', domain, JSON.stringify(command)], { ...(signal ? { signal } : {}) });
  try {
    const parsed = JSON.parse(out) as { return?: unknown };
    if (parsed && typeof parsed.return === 'object' && parsed.return !== null) return parsed.return as Record<string, unknown>;
  } catch {
    /* below */
  }
  throw new SourceUnavailable(
    `the guest agent of VM '${domain}' answered ${JSON.stringify(command).slice(0, 60)} with something that is not a result: ${out.slice(0, 200)}`,
  );
}

/** Runs `argv` in the guest and waits for it (up to `timeoutSeconds`); throws if it cannot be started or does not end. */
export async function guestExec(virsh: Virsh, domain: string, argv: string[], timeoutSeconds: number, signal?: AbortSignal): Promise<GuestExecResult> {
  const started = await agent(virsh, domain, { execute: 'guest-exec', arguments: { path: argv[0], arg: argv.slice(1), 'capture-output': true } }, signal);
  const pid = started.pid;
  if (typeof pid !== 'number') throw new SourceUnavailable(`the guest agent of VM '${domain}' started ${argv[0]} but gave no pid`);
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (;;) {
    signal?.throwIfAborted();
    const s = await agent(virsh, domain, { execute: 'guest-exec-status', arguments: { pid } }, signal);
    if (s.exited === true) {
      return {
        exitCode: typeof s.exitcode === 'number' ? s.exitcode : typeof s.signal === 'number' ? 128 + s.signal : -1,
        stdout: tail(s['out-data']),
        stderr: tail(s['err-data']),
      };
    }
    if (Date.now() > deadline) {
      throw new SourceUnavailable(
        `${argv.join(' ')} in VM '${domain}' did not end within ${timeoutSeconds} s (hookTimeoutSeconds); it keeps running in the guest`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
