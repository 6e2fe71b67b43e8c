/** Stopping a lab guest's agent (SIGSTOP), for tests of what Lifeboat does when it does not answer. */
import { virsh } from '../../local/vm-lab/libvirtd.ts';

/**
 * Stops the guest agent of `domain` and returns once it no longer answers a ping within
 * 2 s. guest-exec returns as soon as its shell is forked, so the agent stops a moment later
 * (seconds under TCG on a loaded machine); a test that went on at once could find it answering.
 */
export async function stopGuestAgent(domain: string): Promise<void> {
  const kill = { execute: 'guest-exec', arguments: { path: '/bin/sh', arg: ['-c', 'kill -STOP $(pidof qemu-ga)'] } };
  await virsh(['qemu-agent-command', domain, JSON.stringify(kill)]);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const ping = virsh(['qemu-agent-command', '--timeout', '2', domain, '{"execute":"guest-ping"}'], { timeoutMs: 10_000 });
    if (
      !(await ping.then(
        () => true,
        () => false,
      ))
    )
      return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`the guest agent of ${domain} still answers 60 s after it was sent SIGSTOP`);
}
