/**
 * The fair slot queue: semaphores of leased slots in the catalog, one per host and one per
 * limited datastore, with a waiting line per scope. A VM's backup takes a slot in each of
 * its scopes or none. Its AcquireSlot task waits on a task token (`.waitForTaskToken`):
 * AcquireSlot puts the VM in line and serves the line; ReleaseSlot gives slots back and
 * serves the lines of their scopes, first come, first served. One server walks a line at a
 * time (a short lock per scope): the others count their change and leave it to the server,
 * which serves again when the count moved while it served. So a line is walked once per
 * burst of changes, not once per change, and nobody behind a waiter being granted jumps it
 * (concurrent walkers each skipping the waiter the other had claimed let later VMs through
 * first, and cost a walk of the line per release: with hundreds of VMs per line, serves
 * that outlived their function's timeout). Serving a waiter takes its
 * slots for it and sends them with SendTaskSuccess; a token Step Functions refuses
 * (TaskTimedOut, TaskDoesNotExist: the waiter's execution died, or its wait timed out and
 * AcquireSlot queued it again with a new token) gets its slots back and is skipped, so a
 * dead waiter never blocks the line; it keeps its place for {@link REQUEUE_GRACE_MS} (skipped),
 * since a wait that ran out queues again a moment later with a new token (dropping it there
 * sent a VM to the back of the line: served after VMs that queued minutes later). A waiter whose wait times out queues again in its
 * place: that also covers a slot freed only by its lease running out (its holder died
 * without ReleaseSlot), which nobody announces.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { SlotLease, SlotScope, VmJob } from '../../contracts/jobs.ts';
import { Catalog } from '../catalog/catalog.ts';
import type { SlotQueueCatalog, SlotWaiter } from '../catalog/slot-queue-catalog.ts';

/** A slot held by an execution that died is free again after this long. */
export const SLOT_LEASE_MS = 6 * 3600_000;
/** How long one server may take to grant a waiter it claimed before another may. */
const CLAIM_MS = 30_000;
/** How long one server may hold a line before another may take it over (it died, or its function timed out). */
const SERVE_LOCK_MS = 60_000;
/** Walks of a line by one server while its count keeps moving (each walk ends at the first waiter the scope cannot take). */
const MAX_PASSES = 20;
/** Tries of a waiter another scope's server is granting (a VM in line for a host and a datastore) before the walk goes past it. */
const BUSY_TRIES = 5;
const BUSY_WAIT_MS = 100;

/** Answers a waiting task (Step Functions' SendTaskSuccess). */
export interface TaskCallbacks {
  /** Sends `output` as the task's result; false when Step Functions refuses the token as dead (TaskTimedOut, TaskDoesNotExist, InvalidToken). */
  succeed(token: string, output: unknown): Promise<boolean>;
}

export interface SlotQueueDeps {
  catalog: Pick<Catalog, 'takeSlot' | 'releaseSlot'>;
  queue: SlotQueueCatalog;
  tasks: TaskCallbacks;
  now: () => number;
  leaseMs?: number;
  /** See {@link REQUEUE_GRACE_MS}. */
  requeueGraceMs?: number;
}

const keyOf = (scope: string, i: number) => {
  const k = Catalog.slotKey(scope, i);
  return `${k.pk}|${k.sk}`;
};
const parseKey = (key: string) => {
  const [pk, sk] = key.split('|') as [string, string];
  return { pk, sk };
};

export const holderOf = (job: Pick<VmJob, 'runId' | 'vmId'>) => `${job.runId}/${job.vmId}`;

/**
 * The order in which `holder` tries a scope's free slots: its own, by a hash of the holder and
 * the slot (rendezvous hashing). VMs that read the same free slots at once (a host's first
 * VMs, started together) then mostly try different slots, where in index order all of them
 * raced for the lowest one and each loser tried the next: n VMs made n(n+1)/2 conditional
 * writes for n slots instead of about 2n. Any order is as safe: every take is the same
 * single-item conditional write.
 */
export function probeOrder(holder: string, free: readonly number[]): number[] {
  const rank = new Map(free.map((i) => [i, createHash('sha256').update(`${holder}#${i}`).digest().readUInt32BE(0)]));
  return [...free].sort((a, b) => rank.get(a)! - rank.get(b)! || a - b);
}

/**
 * Takes a slot for `holder` in every scope, or none: a slot it already holds counts (a grant
 * whose answer was lost). Returns the lease, or the first scope that is full.
 */
export async function takeSlots(holder: string, scopes: SlotScope[], deps: SlotQueueDeps): Promise<{ lease: SlotLease } | { full: string }> {
  const now = deps.now();
  const expiresAt = now + (deps.leaseMs ?? SLOT_LEASE_MS);
  const taken: string[] = [];
  for (const { scope, limit } of scopes) {
    const held = await deps.queue.slotsOf(scope);
    const mine = held.find((s) => s.holder === holder);
    let got = mine ? keyOf(scope, mine.index) : undefined;
    const busy = new Set(held.filter((s) => s.expiresAt >= now).map((s) => s.index));
    const free = Array.from({ length: limit }, (_, i) => i).filter((i) => !busy.has(i));
    for (const i of got ? [] : probeOrder(holder, free)) {
      if (await deps.catalog.takeSlot(scope, i, holder, now, expiresAt)) {
        got = keyOf(scope, i);
        break;
      }
    }
    if (!got) {
      for (const key of taken) await deps.catalog.releaseSlot(parseKey(key), holder);
      return { full: scope };
    }
    taken.push(got);
  }
  return { lease: { keys: taken, holder } };
}

/** Gives back every slot of `scopes` that `holder` holds. */
async function releaseHeld(holder: string, scopes: SlotScope[], deps: SlotQueueDeps): Promise<void> {
  for (const { scope } of scopes) {
    for (const s of await deps.queue.slotsOf(scope)) if (s.holder === holder) await deps.catalog.releaseSlot(Catalog.slotKey(scope, s.index), holder);
  }
}

type Grant = 'granted' | 'dead' | 'dormant' | 'busy' | 'gone' | 'full' | 'waits-elsewhere';

/**
 * How long a waiter whose token Step Functions refused keeps its place (skipped meanwhile):
 * a wait that ran out is queued again by AcquireSlot's retry a second or so later, with a
 * new token, and must find its place; a waiter whose execution died is removed after.
 */
export const REQUEUE_GRACE_MS = 120_000;

/** Tries to serve one waiter of `scope`'s line. */
async function grant(scope: string, entry: { holder: string; seq: string }, server: string, deps: SlotQueueDeps): Promise<Grant> {
  for (let attempt = 0; attempt < 2; attempt++) {
    const w: SlotWaiter | undefined = await deps.queue.waiter(entry.holder);
    if (!w || w.seq !== entry.seq) {
      await deps.queue.removeEntry(scope, entry.seq);
      return 'gone';
    }
    const now = deps.now();
    if (w.deadSince !== undefined) {
      if (now - w.deadSince < (deps.requeueGraceMs ?? REQUEUE_GRACE_MS)) return 'dormant';
      return (await deps.queue.remove(w)) ? 'gone' : 'busy';
    }
    if (!(await deps.queue.claim(w, server, now, now + CLAIM_MS))) return 'busy';
    const got = await takeSlots(w.holder, w.scopes, deps);
    if ('full' in got) {
      await deps.queue.unclaim(w.holder, server);
      return got.full === scope ? 'full' : 'waits-elsewhere';
    }
    let delivered: boolean;
    try {
      delivered = await deps.tasks.succeed(w.token, got.lease);
    } catch (err) {
      await releaseHeld(w.holder, w.scopes, deps);
      await deps.queue.unclaim(w.holder, server);
      throw err;
    }
    if (!delivered) {
      await releaseHeld(w.holder, w.scopes, deps);
      // Its place stays for a while: a wait that ran out queues again (new token) a moment later.
      if (await deps.queue.markDead(w, deps.now())) return 'dead';
      continue; // it queued again with a new token while we granted the old one: try the new token
    }
    if (await deps.queue.remove(w)) return 'granted';
    // Delivered, and it queued again with a new token meanwhile (its old wait had just run out): it was served.
    await deps.queue.unclaim(w.holder, server);
    return 'granted';
  }
  return 'busy';
}

/** One walk of `scope`'s line, first in line first, until a waiter the scope cannot take; returns the waiters granted. */
async function walk(scope: string, server: string, deps: SlotQueueDeps): Promise<number> {
  let granted = 0;
  let start: Record<string, unknown> | undefined;
  do {
    const page = await deps.queue.entries(scope, start);
    for (const entry of page.entries) {
      let r = await grant(scope, entry, server, deps);
      for (let i = 1; r === 'busy' && i < BUSY_TRIES; i++) {
        await new Promise((done) => setTimeout(done, BUSY_WAIT_MS));
        r = await grant(scope, entry, server, deps);
      }
      if (r === 'granted') granted++;
      if (r === 'full') return granted;
    }
    start = page.next;
  } while (start);
  return granted;
}

/**
 * Serves `scope`'s line in order while its slots last, unless another server has the line
 * (it will see this caller's change, counted before). Stops at the first waiter the scope
 * cannot take (later ones do not jump it); walks again while the line's count moved during
 * the walk. Returns how many waiters got their slots.
 */
export async function serve(scope: string, deps: SlotQueueDeps): Promise<number> {
  const server = randomUUID();
  let granted = 0;
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    const now = deps.now();
    if (!(await deps.queue.lockLine(scope, server, now, now + SERVE_LOCK_MS))) return granted;
    let changes: number;
    try {
      changes = await deps.queue.changes(scope);
      granted += await walk(scope, server, deps);
    } finally {
      await deps.queue.unlockLine(scope, server);
    }
    // Read after giving the line back: a change counted later finds the line free and is served by its author.
    if ((await deps.queue.changes(scope)) === changes) return granted;
  }
  return granted;
}

/**
 * AcquireSlot's fast path, with no waiting list and no task token: when the VM finds a free
 * slot in each of its scopes and nobody in their lines, it keeps the slots and goes on at
 * once. Otherwise it gets nothing (its caller queues it: {@link acquireSlot}).
 *
 * Why it never overbooks: each slot is taken by the same single-item conditional write as
 * any grant ({@link takeSlots}). Why it never jumps a waiter: it takes the slots first and
 * only then reads every line (strongly consistent); it keeps them only if every line was
 * empty at that read. At that instant it holds its slots and nobody waits, so it is exactly
 * "take the slots if the lines are empty" done at one instant: any VM that queued before
 * is still in line then (a waiter leaves its line only after it got its slots) and is seen,
 * and any VM that queues after came later. When a line is not empty it gives the slots back
 * and serves the lines (a walker that found the host full because of it stopped there).
 * DynamoDB transactions would fold the take and the read into one write, but the embedded
 * catalog (dynalite) has none, and this order gives the same guarantee.
 */
export async function trySlot(job: VmJob, deps: SlotQueueDeps): Promise<{ lease: SlotLease } | { queue: string }> {
  const holder = holderOf(job);
  const got = await takeSlots(holder, job.slotScopes, deps);
  if ('full' in got) return { queue: got.full };
  for (const { scope } of job.slotScopes) {
    if (!(await deps.queue.hasWaiters(scope))) continue;
    await releaseHeld(holder, job.slotScopes, deps);
    for (const s of job.slotScopes) await deps.queue.countChange(s.scope);
    for (const s of job.slotScopes) await serve(s.scope, deps);
    return { queue: scope };
  }
  return got;
}

/** AcquireSlot: the VM queues (or, tried again, keeps its place with its new token), then its scopes' lines are served. */
export async function acquireSlot(job: VmJob, taskToken: string, deps: SlotQueueDeps): Promise<void> {
  await deps.queue.enqueue(holderOf(job), job.slotScopes, taskToken, deps.now());
  for (const { scope } of job.slotScopes) await deps.queue.countChange(scope);
  for (const { scope } of job.slotScopes) await serve(scope, deps);
}

/** ReleaseSlot: the VM's slots go back (and its place in line, if it still had one), and the next in line are served. */
export async function releaseSlot(job: VmJob, deps: SlotQueueDeps): Promise<void> {
  const holder = holderOf(job);
  await deps.queue.forget(holder);
  await releaseHeld(holder, job.slotScopes, deps);
  // Slots named by key in the job's lease: the reconciler's plan names the slots it found held
  // by a killed run (it knows their keys, not the VM's scopes).
  const named = (job.slot?.keys ?? []).map((k) => {
    const [pk = '', sk = ''] = k.split('|');
    return { pk, sk };
  });
  for (const key of named) await deps.catalog.releaseSlot(key, holder);
  const scopes = new Set([...job.slotScopes.map((s) => s.scope), ...named.map((k) => k.pk.slice('SLOT#'.length))]);
  for (const scope of scopes) await deps.queue.countChange(scope);
  for (const scope of scopes) await serve(scope, deps);
}
