/**
 * The fair slot queue (functions/backup/slot-queue.ts) on a real catalog (dynalite), its
 * waiters' task tokens held by the embedded stack's ActivityBroker and answered through its
 * Step Functions API with the SDK's SendTaskSuccess, as AcquireSlot's `.waitForTaskToken`
 * task is answered in the workflow.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmJob } from '../contracts/jobs.ts';
import { acquireSlot, probeOrder, releaseSlot, REQUEUE_GRACE_MS, serve, takeSlots, type SlotQueueDeps } from '../functions/backup/slot-queue.ts';
import type { SlotQueueCatalog } from '../functions/catalog/slot-queue-catalog.ts';
import type { ActivityBroker } from '../local/activities.ts';
import { slotJob, startSlotQueueRig, type SlotQueueRig } from './helpers/slot-queue-rig.ts';

let clock = 1_000_000;
let broker: ActivityBroker;
let deps: SlotQueueDeps;
let rig: SlotQueueRig;

beforeAll(async () => {
  rig = await startSlotQueueRig(() => clock++);
  ({ broker, deps } = rig);
});
afterAll(() => rig?.close());

const job = slotJob;

/** A VM in line: its AcquireSlot task's token (held by the broker, as the workflow's wait is), and its grant once sent. */
function waiter(j: VmJob, opts: { timeoutSeconds?: number; signal?: AbortSignal } = {}) {
  const { token, result } = broker.awaitCallback(`AcquireSlot ${j.vmId}`, opts);
  const granted = result.then((lease) => {
    j.slot = lease as VmJob['slot'];
    return j;
  });
  granted.catch(() => {});
  return { job: j, token, granted };
}

describe('takeSlots', () => {
  it('takes a slot in every scope or none, and counts one the holder already has', async () => {
    const scopes = [
      { scope: 'host:t', limit: 2 },
      { scope: 'datastore:t/ds1', limit: 1 },
    ];
    const a = await takeSlots('r/a', scopes, deps);
    const first = probeOrder('r/a', [0, 1])[0]!;
    expect(a).toEqual({ lease: { holder: 'r/a', keys: [`SLOT#host:t|SLOT#${first}`, 'SLOT#datastore:t/ds1|SLOT#0'] } });
    // The host has a second slot but the datastore is full: b gets nothing and keeps nothing.
    expect(await takeSlots('r/b', scopes, deps)).toEqual({ full: 'datastore:t/ds1' });
    expect(await takeSlots('r/c', [scopes[0]!], deps)).toEqual({ lease: { holder: 'r/c', keys: [`SLOT#host:t|SLOT#${1 - first}`] } });
    // A grant whose answer was lost is taken again, not doubled.
    expect(await takeSlots('r/a', scopes, deps)).toEqual(a);
  });

  it("gives each holder its own order of a scope's free slots, so a host's VMs arriving at once mostly try different ones", () => {
    const free = Array.from({ length: 10 }, (_, i) => i);
    const orders = Array.from({ length: 10 }, (_, i) => probeOrder(`run/vm-${i}`, free));
    for (const o of orders) expect([...o].sort((x, y) => x - y)).toEqual(free);
    expect(probeOrder('run/vm-3', free)).toEqual(orders[3]);
    // In index order all ten would try slot 0 first (and nine of them slot 1 next, ...).
    expect(new Set(orders.map((o) => o[0])).size).toBeGreaterThanOrEqual(5);
    expect(probeOrder('run/vm-0', [7])).toEqual([7]);
  });

  it('never gives two VMs of a burst the same slot, and refuses the one past the limit', async () => {
    const scopes = [{ scope: 'host:burst', limit: 10 }];
    const got = await Promise.all(Array.from({ length: 11 }, (_, i) => takeSlots(`burst/vm-${i}`, scopes, deps)));
    const keys = got.flatMap((g) => ('lease' in g ? g.lease.keys : []));
    expect(keys).toHaveLength(10);
    expect(new Set(keys).size).toBe(10);
    expect(got.filter((g) => 'full' in g)).toEqual([{ full: 'host:burst' }]);
  });
});

describe('the fair slot queue', () => {
  it('serves waiters in the order they queued under contention, and skips a dead waiter and a timed-out one', async () => {
    const LIMIT = 2;
    const scopes = [{ scope: 'host:busy', limit: LIMIT }];
    const all: ReturnType<typeof waiter>[] = [];
    // Two holders first; then twelve VMs queue one after the other, each finding the host full.
    for (let i = 0; i < 14; i++) {
      const w = waiter(job('run-q', `vm-${String(i).padStart(2, '0')}`, scopes), i === 5 ? { timeoutSeconds: 1 } : {});
      await acquireSlot(w.job, w.token, deps);
      all.push(w);
    }
    // vm-07's execution dies while it waits (its token now answers TaskDoesNotExist); vm-05's wait times out (TaskTimedOut).
    const dying = new AbortController();
    const dead = waiter(job('run-q', 'vm-dead', scopes), { signal: dying.signal });
    await acquireSlot(dead.job, dead.token, deps);
    dying.abort();
    await new Promise((r) => setTimeout(r, 1100)); // vm-05's wait runs out
    const order: string[] = [];
    // Every VM that gets its slots backs up for a few ms and releases; the releases race one another and two late VMs queueing.
    const work = all
      .filter((_, i) => i !== 5)
      .map(async (w) => {
        const j = await w.granted;
        order.push(j.vmId);
        await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 15)));
        await releaseSlot(j, deps);
      });
    const late = [waiter(job('run-q', 'vm-late-1', scopes)), waiter(job('run-q', 'vm-late-2', scopes))];
    await acquireSlot(late[0]!.job, late[0]!.token, deps);
    await acquireSlot(late[1]!.job, late[1]!.token, deps);
    for (const w of late)
      work.push(
        w.granted.then(async (j) => {
          order.push(j.vmId);
          await releaseSlot(j, deps);
        }),
      );
    await Promise.all(work);
    await expect(all[5]!.granted).rejects.toMatchObject({ name: 'States.Timeout' });
    const queued = [...all.filter((_, i) => i !== 5).map((w) => w.job.vmId), 'vm-late-1', 'vm-late-2'];
    expect(order.sort()).toEqual([...queued].sort()); // everyone but the dead and the timed-out got slots
    // In order: with two slots, a VM is served at most one place off its place in line (two releases at once).
    const served = [...order];
    for (const [place, vmId] of queued.entries()) expect(Math.abs(served.indexOf(vmId) - place), `${vmId}: ${served.join(' ')}`).toBeLessThan(LIMIT);
    // The dead and the timed-out keep their places a while (a wait that ran out queues again a moment later), skipped.
    expect((await deps.queue.waiter('run-q/vm-dead'))?.deadSince).toBeDefined();
    clock += REQUEUE_GRACE_MS;
    await serve('host:busy', deps);
    // Nothing is left behind: no slot held, nobody in line.
    expect(await deps.queue.slotsOf('host:busy')).toEqual([]);
    expect((await deps.queue.entries('host:busy')).entries).toEqual([]);
    expect(await deps.queue.waiter('run-q/vm-dead')).toBeUndefined();
  });

  it('serves exactly in line order while releases race, one walker per line (the others leave their change to it)', async () => {
    const scopes = [{ scope: 'host:race', limit: 3 }];
    // A slow catalog: every claim of a waiter takes a while, so concurrent releases overlap their serves.
    const slow = Object.create(deps.queue) as SlotQueueCatalog;
    let walks = 0;
    slow.claim = async (...args) => {
      await new Promise((r) => setTimeout(r, 20));
      return deps.queue.claim(...args);
    };
    slow.entries = async (...args) => {
      walks++;
      return deps.queue.entries(...args);
    };
    const d = { ...deps, queue: slow };
    const all = Array.from({ length: 15 }, (_, i) => waiter(job('run-r', `vm-${String(i).padStart(2, '0')}`, scopes)));
    for (const w of all) await acquireSlot(w.job, w.token, d);
    const order: string[] = [];
    walks = 0;
    // Three hold the slots; each VM served backs up a few ms and releases, racing the others' releases.
    await Promise.all(
      all.map(async (w) => {
        const j = await w.granted;
        order.push(j.vmId);
        await new Promise((r) => setTimeout(r, 2 + Math.floor(Math.random() * 6)));
        await releaseSlot(j, d);
      }),
    );
    expect(order).toEqual(all.map((w) => w.job.vmId));
    // Far fewer walks than releases: a release finding the line locked leaves its change to the walker (concurrent walkers took one each).
    expect(walks).toBeLessThan(all.length / 2);
    expect(await deps.queue.slotsOf('host:race')).toEqual([]);
    expect((await deps.queue.entries('host:race')).entries).toEqual([]);
  });

  it('a waiter whose wait ran out as a slot freed keeps its place when it queues again, ahead of those who queued after it', async () => {
    const scopes = [{ scope: 'host:requeue', limit: 1 }];
    const holder = waiter(job('run-t', 'holder', scopes));
    await acquireSlot(holder.job, holder.token, deps);
    await holder.granted;
    const a = waiter(job('run-t', 'a', scopes), { timeoutSeconds: 1 });
    await acquireSlot(a.job, a.token, deps);
    const b = waiter(job('run-t', 'b', scopes));
    await acquireSlot(b.job, b.token, deps);
    const c = waiter(job('run-t', 'c', scopes));
    await acquireSlot(c.job, c.token, deps);
    await expect(a.granted).rejects.toMatchObject({ name: 'States.Timeout' });
    // The slot frees before a's retry queues it again: a's token is refused, b is served.
    await releaseSlot(holder.job, deps);
    expect((await b.granted).vmId).toBe('b');
    const again = waiter(a.job);
    await acquireSlot(a.job, again.token, deps);
    await releaseSlot(b.job, deps);
    expect((await again.granted).vmId).toBe('a'); // not c, who queued after a
    await releaseSlot(a.job, deps);
    expect((await c.granted).vmId).toBe('c');
    await releaseSlot(c.job, deps);
    expect(await deps.queue.slotsOf('host:requeue')).toEqual([]);
    expect((await deps.queue.entries('host:requeue')).entries).toEqual([]);
  });

  it('a waiter that queues again (its wait timed out) keeps its place, and takes a slot whose holder died once the lease runs out', async () => {
    const scopes = [{ scope: 'host:lease', limit: 1 }];
    const leased = { ...deps, leaseMs: 1000 };
    const holder = waiter(job('run-l', 'holder', scopes));
    await acquireSlot(holder.job, holder.token, leased);
    await holder.granted; // ... and its execution dies without ReleaseSlot
    const first = waiter(job('run-l', 'first', scopes));
    await acquireSlot(first.job, first.token, leased);
    const second = waiter(job('run-l', 'second', scopes));
    await acquireSlot(second.job, second.token, leased);
    clock += 2000; // the dead holder's lease runs out; nobody announces it
    // second's wait times out first and it queues again: the line is served, first in line first.
    const again = waiter(second.job);
    await acquireSlot(second.job, again.token, leased);
    expect((await first.granted).slot?.holder).toBe('run-l/first');
    await releaseSlot(first.job, leased);
    expect((await again.granted).slot?.holder).toBe('run-l/second');
    await releaseSlot(second.job, leased);
    expect(await deps.queue.slotsOf('host:lease')).toEqual([]);
  });
});
