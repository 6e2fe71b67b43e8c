/**
 * Failback's domain steps: find the production domain's disk images (it must be shut off
 * while they are written), shut the DR VM down cleanly within a deadline, and start the
 * production VM and wait for its sign of life.
 */
import { DrVmDidNotStop, ProductionNotReady, type DomainRef } from '../../contracts/failback.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { BootCheck } from '../../contracts/recovery-jobs.ts';
import { parseDomainXml } from '../sources/libvirt/domain-xml.ts';
import { isNoDomain, Virsh } from '../sources/libvirt/virsh.ts';
import { waitForSignOfLife } from './define-domain.ts';

const POLL_MS = 500;
/** How often a DR VM still running is asked again to shut down. */
const ASK_AGAIN_MS = 10_000;

async function state(virsh: Virsh, name: string): Promise<string> {
  return (await virsh.run(['domstate', '--', name])).trim();
}

async function xmlOf(ref: DomainRef, role: string): Promise<string> {
  try {
    return await new Virsh(ref.uri).run(['dumpxml', '--inactive', '--', ref.name]);
  } catch (err) {
    if (isNoDomain(err)) throw new RecoveryRequestInvalid(`the ${role} '${ref.name}' is not defined on ${ref.uri}: check the VM's "source" in the inventory`);
    throw err;
  }
}

/**
 * The production domain's disk images by target (`vda` → path), for writing in place. The
 * domain must be shut off (a running guest would overwrite the failback's writes and see
 * its disk change under it), and its disks raw files or block devices.
 */
export async function productionDisks(ref: DomainRef): Promise<Map<string, string>> {
  const info = parseDomainXml(await xmlOf(ref, 'production VM'), `domain '${ref.name}' on ${ref.uri}`);
  const s = await state(new Virsh(ref.uri), ref.name);
  if (s !== 'shut off') {
    throw new RecoveryRequestInvalid(
      `the production VM '${ref.name}' on ${ref.uri} is ${s}: failback writes its disks and must find it shut off (it runs at the DR site now); shut it down (virsh shutdown ${ref.name}) and run the Failback again`,
    );
  }
  const disks = new Map<string, string>();
  for (const d of info.disks.filter((x) => x.device === 'disk')) {
    if (!d.source || (d.type !== 'file' && d.type !== 'block'))
      throw new RecoveryRequestInvalid(`disk '${d.target}' of the production VM '${ref.name}' is a ${d.type} disk: failback writes file and block disks only`);
    if (d.format !== 'raw')
      throw new RecoveryRequestInvalid(
        `disk '${d.target}' of the production VM '${ref.name}' is ${d.format} (${d.source}): failback writes raw images and block devices in place; convert it (qemu-img convert -O raw) and point the domain at the raw image, or restore the VM from the DR site's backup instead`,
      );
    disks.set(d.target, d.source);
  }
  return disks;
}

/**
 * Shuts the DR VM down cleanly (guest agent, else ACPI) and waits until it is shut off;
 * a VM shut off already is fine. After `timeoutSeconds` it is left running and the error
 * names it: nothing has been switched yet.
 */
export async function stopDrVm(
  ref: DomainRef,
  timeoutSeconds: number,
  o: { signal?: AbortSignal; onWait?: () => void } = {},
): Promise<{ domain: string; state: string; seconds: number; stoppedAt: string }> {
  const started = performance.now();
  const virsh = new Virsh(ref.uri);
  await xmlOf(ref, 'DR VM');
  const done = () => ({ domain: ref.name, state: 'shut off', seconds: (performance.now() - started) / 1000, stoppedAt: new Date().toISOString() });
  if ((await state(virsh, ref.name)) === 'shut off') return done();
  const deadline = started + timeoutSeconds * 1000;
  // Each request within the deadline (a hung guest agent must not hold virsh past it), and
  // asked again every few seconds: an agent busy or reconnecting at the first request gets
  // another chance. Whether the guest obeys, the state says.
  let answer = 'none';
  let askedAt = -Infinity;
  const ask = async () => {
    askedAt = performance.now();
    const within = { timeoutMs: Math.max(1000, Math.round(deadline - askedAt)) };
    try {
      await virsh.run(['shutdown', '--mode', 'agent', '--', ref.name], within);
      answer = 'its agent: request taken';
    } catch (err) {
      answer = `its agent: ${(err as Error).message}`;
      await virsh.run(['shutdown', '--mode', 'acpi', '--', ref.name], within).catch(() => {});
    }
  };
  for (;;) {
    const s = await state(virsh, ref.name);
    if (s === 'shut off') return done();
    if (performance.now() >= deadline) {
      throw new DrVmDidNotStop(
        `the DR VM '${ref.name}' on ${ref.uri} did not shut down within ${timeoutSeconds} s (it is ${s}; asked through its guest agent and ACPI; last answer from ${answer}). Nothing was switched: production is not started and the DR VM keeps running. Next: shut it down from inside the guest, or give it longer ("shutdownTimeoutSeconds"), then run the Failback again`,
      );
    }
    if (performance.now() - askedAt >= ASK_AGAIN_MS) await ask();
    o.signal?.throwIfAborted();
    o.onWait?.();
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** The serial console's file of a domain, if it writes one. */
function serialLog(xml: string): string | undefined {
  const m = /<serial type=['"]file['"]>\s*<source path=['"]([^'"]+)['"]/.exec(xml);
  return m?.[1]
    ?.replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

/** Starts the production VM and waits for its sign of life; throws naming the VM and what it last printed when it does not come. */
export async function startProductionVm(ref: DomainRef, check: BootCheck, o: { signal?: AbortSignal; onWait?: () => void } = {}) {
  const virsh = new Virsh(ref.uri);
  const xml = await xmlOf(ref, 'production VM');
  const log = serialLog(xml);
  if (check.consoleLine !== undefined && !log)
    throw new RecoveryRequestInvalid(
      `the production VM '${ref.name}' writes no serial console file, so readiness by console line cannot be seen: use "readiness": {"agent": true}`,
    );
  await virsh.run(['start', '--', ref.name]);
  const r = await waitForSignOfLife(virsh, ref.name, log ?? '/dev/null', check, o.signal, o.onWait);
  if (!r.passed)
    throw new ProductionNotReady(
      `the production VM '${ref.name}' on ${ref.uri} was started but is not ready: ${r.reason}. It is left running; the DR VM stays shut off. Next: look at its console, then start the DR VM again if production cannot serve`,
    );
  return {
    domain: ref.name,
    state: await state(virsh, ref.name),
    readySeconds: r.seconds,
    readyAt: new Date().toISOString(),
    line: r.line,
    ...(r.agent !== undefined ? { agent: r.agent } : {}),
  };
}
