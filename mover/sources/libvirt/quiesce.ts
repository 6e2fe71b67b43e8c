/**
 * Quiescing a guest through its agent for a backup job: the policy's `pre` hook, the file
 * systems frozen (`domfsfreeze`), the job started, thawed always, the `post` hook; and, when
 * the agent does not answer, a crash-consistent snapshot that says why.
 */
import { SourceUnavailable } from '../../../contracts/errors.ts';
import type { Consistency, QuiesceSettings } from '../../../contracts/jobs.ts';
import type { DomainInfo } from './domain-xml.ts';
import { guestExec } from './guest-agent.ts';
import type { Virsh } from './virsh.ts';

/**
 * Runs `take` with the guest quiesced, thawing always: the policy's `pre` hook in the
 * guest, its file systems frozen through the agent, then `take`, thaw, the `post` hook.
 * Without an agent that answers, the snapshot is crash-consistent and says why (or, when
 * hooks are configured and must not be skipped, the backup fails).
 */
export async function quiesced<T>(
  virsh: Virsh,
  agentTimeoutSeconds: number | undefined,
  info: DomainInfo,
  q: QuiesceSettings | undefined,
  signal: AbortSignal | undefined,
  take: () => Promise<T>,
): Promise<{ base: T; level: Consistency }> {
  const hooks = !!(q?.pre || q?.post);
  const mustRunHooks = hooks && (q?.onHookFailure ?? 'fail') === 'fail';
  const crash = async (reason: string) => {
    if (mustRunHooks) {
      throw new SourceUnavailable(
        `VM '${info.name}' could not be quiesced as its policy asks: ${reason}. Make the guest agent run and the hooks exit 0 in the guest, or set the policy's quiesce.onHookFailure to "continue" to take crash-consistent backups meanwhile`,
      );
    }
    return { base: await take(), level: { level: 'crash' as const, reason: hooks ? `${reason}; hooks not run` : reason } };
  };
  if (!info.agentChannel) return crash('the VM has no guest agent channel (org.qemu.guest_agent.0)');
  const timeout = String(agentTimeoutSeconds ?? 10);
  try {
    await virsh.run(['qemu-agent-command', '--timeout', timeout, '--', info.name, '{"execute":"guest-ping"}'], { ...(signal ? { signal } : {}) });
  } catch (err) {
    return crash(`the guest agent did not answer within ${timeout} s (${(err as Error).message.slice(0, 200)})`);
  }
  const hookTimeout = q?.hookTimeoutSeconds ?? 300;
  let preRan = false;
  if (q?.pre) {
    const problem = await hook(virsh, info.name, 'pre', q.pre, hookTimeout, signal);
    if (problem) return crash(problem);
    preRan = true;
  }
  let frozen: string;
  try {
    frozen = (await virsh.run(['domfsfreeze', '--', info.name], { ...(signal ? { signal } : {}) })).trim();
  } catch (err) {
    // An agent that stopped answering mid-freeze may still have frozen them: thaw, bounded.
    await virsh.run(['domfsthaw', '--', info.name], { timeoutMs: Number(timeout) * 1000 }).catch(() => {});
    await postHook(virsh, info.name, q, hookTimeout);
    return crash(`the guest agent could not freeze the file systems (${(err as Error).message.slice(0, 200)})`);
  }
  let base: T;
  try {
    base = await take();
  } finally {
    await virsh.run(['domfsthaw', '--', info.name]).catch(() => {}); // the guest is never left frozen by us
  }
  const post = await postHook(virsh, info.name, q, hookTimeout);
  const how = `file systems frozen by the guest agent (${frozen || 'none mounted'})`;
  return {
    base,
    level: preRan ? { level: 'application', reason: `the pre hook ran, then ${how}${post}` } : { level: 'filesystem', reason: `${how}${post}` },
  };
}

/** Runs a hook in the guest; returns what went wrong, or undefined when it exited 0. */
async function hook(
  virsh: Virsh,
  domain: string,
  which: 'pre' | 'post',
  argv: string[],
  timeoutSeconds: number,
  signal?: AbortSignal,
): Promise<string | undefined> {
  try {
    const r = await guestExec(virsh, domain, argv, timeoutSeconds, signal);
    if (r.exitCode === 0) return undefined;
    return `the ${which} hook ${argv.join(' ')} exited ${r.exitCode}${r.stderr.trim() ? `: ${r.stderr.trim().slice(-300)}` : ''}`;
  } catch (err) {
    return `the ${which} hook ${argv.join(' ')} could not run: ${(err as Error).message.slice(0, 300)}`;
  }
}

/** The post hook after a thaw: its failure does not undo a consistent snapshot, it is noted. */
async function postHook(virsh: Virsh, domain: string, q: QuiesceSettings | undefined, timeoutSeconds: number): Promise<string> {
  if (!q?.post) return '';
  const problem = await hook(virsh, domain, 'post', q.post, timeoutSeconds);
  return problem ? `; ${problem}` : '; the post hook ran';
}
