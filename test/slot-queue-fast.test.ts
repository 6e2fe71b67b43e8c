/**
 * AcquireSlot's fast path (functions/backup/slot-queue.ts `trySlot`) on a real catalog
 * (dynalite), racing the fair queue as the workflow does: each VM tries the fast path and,
 * told to queue, waits in line on a task token held by the embedded stack's ActivityBroker
 * and answered through its Step Functions API (SendTaskSuccess).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SlotLease, VmJob } from '../contracts/jobs.ts';
import { acquireSlot, releaseSlot, trySlot, type SlotQueueDeps } from '../functions/backup/slot-queue.ts';
import type { SlotQueueCatalog } from '../functions/catalog/slot-queue-catalog.ts';
import type { ActivityBroker } from '../local/activities.ts';
import { slotJob, startSlotQueueRig, type SlotQueueRig } from './helpers/slot-queue-rig.ts';

/** Ticks of one clock for the whole test, so events of different VMs compare (the catalog's `now` too). */
let tick = 0;
const now = () => ++tick;
let broker: ActivityBroker;
let deps: SlotQueueDeps;
let rig: SlotQueueRig;

beforeAll(async () => {
  rig = await startSlotQueueRig(now);
  ({ broker, deps } = rig);
});
afterAll(() => rig?.close());

const job = slotJob;

/** What the test saw of one VM: how it got its slots and when (ticks of the shared clock). */
interface Seen {
  vmId: string;
  fast: boolean;
  /** The fast path was entered (fast VMs), or the VM's place in line was written (queued VMs). */
  arrived: number;
  /** The slots were its own (fast: the fast path returned; queued: the grant was being sent). */
  got: number;
}

/**
 * One VM as the workflow runs it: the fast path, else a wait in line; then a backup of a few
 * ms, then ReleaseSlot. `holding` counts the slots held as the VMs see them: raised after a
 * grant, lowered before the release, so it never exceeds what the catalog holds.
 */
async function runVm(j: VmJob, d: SlotQueueDeps, limit: number, seen: Seen[], holding: { n: number; keys: Set<string>; max: number }) {
  const arrived = now();
  const fast = await trySlot(j, d);
  let lease: SlotLease;
  if ('lease' in fast) {
    lease = fast.lease;
    seen.push({ vmId: j.vmId, fast: true, arrived, got: now() });
  } else {
    const { token, result } = broker.awaitCallback(`AcquireSlot ${j.vmId}`);
    const queued = { vmId: j.vmId, fast: false, arrived: 0, got: 0 };
    const q = Object.create(d.queue) as SlotQueueCatalog;
    q.enqueue = async (...a) => {
      const w = await d.queue.enqueue(...a);
      queued.arrived = now();
      return w;
    };
    await acquireSlot(j, token, { ...d, queue: q });
    lease = (await result) as SlotLease; // resolved as the grant is sent, before the waiter leaves the line
    queued.got = now();
    seen.push(queued);
  }
  for (const k of lease.keys) {
    expect(holding.keys.has(k), `${j.vmId} got ${k}, which another VM holds`).toBe(false);
    holding.keys.add(k);
  }
  holding.n++;
  holding.max = Math.max(holding.max, holding.n);
  expect(holding.n, `${j.vmId}: more VMs hold slots than the host has`).toBeLessThanOrEqual(limit);
  await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 20)));
  holding.n--;
  for (const k of lease.keys) holding.keys.delete(k);
  j.slot = lease;
  await releaseSlot(j, d);
}

describe("AcquireSlot's fast path", () => {
  it('takes a free slot at once when nobody waits, and refuses when the host is full or someone waits', async () => {
    const scopes = [{ scope: 'host:f1', limit: 1 }];
    const a = job('run-f', 'a', scopes);
    expect(await trySlot(a, deps)).toEqual({ lease: { holder: 'run-f/a', keys: ['SLOT#host:f1|SLOT#0'] } });
    expect(await trySlot(job('run-f', 'b', scopes), deps)).toEqual({ queue: 'host:f1' }); // full
    const b = job('run-f', 'b', scopes);
    const { token, result } = broker.awaitCallback('AcquireSlot b');
    await acquireSlot(b, token, deps); // b waits in line
    await releaseSlot(a, deps); // the slot goes to b, in line
    b.slot = (await result) as SlotLease;
    await releaseSlot(b, deps);
    // A waiter not served yet (here one whose token Step Functions will refuse) keeps the fast path away from a free slot.
    await deps.queue.enqueue('run-f/c', scopes, 'dead-token', now());
    expect(await trySlot(job('run-f', 'd', scopes), deps)).toEqual({ queue: 'host:f1' });
    expect(await deps.queue.slotsOf('host:f1')).toEqual([]); // d gave back the slot it had taken
    await deps.queue.forget('run-f/c');
  });

  it('never overbooks a host and never jumps a waiter while many VMs acquire and release at once', async () => {
    const LIMIT = 3;
    const scopes = [{ scope: 'host:crowd', limit: LIMIT }];
    const seen: Seen[] = [];
    const holding = { n: 0, keys: new Set<string>(), max: 0 };
    // Two VMs hold two of the three slots from the start (a grant takes longer than a short backup here, so without
    // them the host would rarely fill up); the crowd races for the third, and the two give theirs back midway.
    const long = [job('run-c', 'long-0', scopes), job('run-c', 'long-1', scopes)];
    for (const j of long) {
      const got = await trySlot(j, deps);
      if (!('lease' in got)) throw new Error(`${j.vmId} found the host busy`);
      j.slot = got.lease;
      for (const k of got.lease.keys) holding.keys.add(k);
      holding.n++;
    }
    // VMs keep arriving, one every few tens of ms, while others hold, wait or release: each arrival races the releases.
    const vms: Promise<void>[] = [];
    const arrivals = (async () => {
      for (let i = 0; i < 20; i++) {
        vms.push(runVm(job('run-c', `vm-${String(i).padStart(2, '0')}`, scopes), deps, LIMIT, seen, holding));
        await new Promise((r) => setTimeout(r, 10 + Math.floor(Math.random() * 40)));
      }
    })();
    while (seen.length < 3) await new Promise((r) => setTimeout(r, 10)); // midway
    for (const j of long) {
      holding.n--;
      for (const k of j.slot!.keys) holding.keys.delete(k);
      vms.push(releaseSlot(j, deps));
    }
    await arrivals;
    await Promise.all(vms);
    expect(seen).toHaveLength(20);
    expect(holding.max).toBe(LIMIT); // the host was full: the race was real
    expect(seen.some((s) => s.fast)).toBe(true);
    expect(seen.some((s) => !s.fast)).toBe(true);
    // No jump: a VM that arrived on the fast path after a waiter was in line got its slots after that waiter did.
    for (const f of seen.filter((s) => s.fast))
      for (const w of seen.filter((s) => !s.fast && s.arrived < f.arrived))
        expect(f.got, `${f.vmId} (fast) got its slot before ${w.vmId}, in line since before it arrived`).toBeGreaterThan(w.got);
    expect(await deps.queue.slotsOf('host:crowd')).toEqual([]);
    expect((await deps.queue.entries('host:crowd')).entries).toEqual([]);
  });
});
