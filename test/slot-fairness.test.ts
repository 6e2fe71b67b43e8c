/**
 * The scale bench's slot wait (bench/slot-fairness.ts): from the moment a slot of its host was
 * free for a VM to the moment it held one, so the time before a VM's own execution started
 * counts, and the time its host's earlier VMs held the slots does not.
 */
import { expect, it } from 'vitest';
import { eligibleWaits, firstWaveParts, waitsByWave, type VmSlotLife } from '../bench/slot-fairness.ts';

const vm = (host: string, at: Partial<VmSlotLife>): VmSlotLife => ({
  host,
  limit: 2,
  hostStarted: 0,
  started: 0,
  entered: 0,
  granted: 0,
  released: 0,
  requeued: 0,
  releaseFailed: false,
  ...at,
});

it("counts a host's first VMs from the host's start, and each later one from the release that made room for it", () => {
  const waits = eligibleWaits([
    // Host a, 2 slots: the first two start 5 s and 7 s after the host (their executions started late),
    vm('a', { hostStarted: 1000, started: 6000, entered: 6000, granted: 6000, released: 20_000 }),
    vm('a', { hostStarted: 1000, started: 8000, entered: 8000, granted: 8000, released: 30_000 }),
    // the third is granted 4 s after the first release (20 s), though its AcquireSlot took 1 s of that,
    vm('a', { hostStarted: 1000, started: 23_000, entered: 23_000, granted: 24_000, released: 40_000 }),
    // the fourth 2 s after the second release (30 s).
    vm('a', { hostStarted: 1000, started: 31_000, entered: 31_000, granted: 32_000, released: 50_000 }),
    // Host b, 1 slot, granted at once.
    vm('b', { limit: 1, hostStarted: 2000, started: 2000, entered: 2000, granted: 2000, released: 9000 }),
    vm('b', { limit: 1, hostStarted: 2000, started: 9000, entered: 9000, granted: 9500, released: 12_000 }),
  ]);
  expect(waits).toEqual([5, 7, 4, 2, 0, 0.5]);
});

it('never counts a negative wait: a VM granted before its host was seen to start waited 0 s', () => {
  expect(eligibleWaits([vm('a', { hostStarted: 5000, granted: 4000, released: 6000 })])).toEqual([0]);
});

it("splits the waits into each host's first VMs (its start-up) and the later ones (each after a release)", () => {
  const w = waitsByWave([
    vm('a', { hostStarted: 1000, granted: 6000, released: 20_000 }),
    vm('a', { hostStarted: 1000, granted: 8000, released: 30_000 }),
    vm('a', { hostStarted: 1000, granted: 24_000, released: 40_000 }),
    vm('b', { limit: 1, hostStarted: 2000, granted: 2000, released: 9000 }),
    vm('b', { limit: 1, hostStarted: 2000, granted: 9500, released: 12_000 }),
  ]);
  expect(w).toEqual({ first: [5, 7, 0], later: [4, 0.5] });
});

it("cuts the first wave's waits at the VM execution's start and at AcquireSlot, and leaves the later VMs out", () => {
  const parts = firstWaveParts([
    // Host a, 2 slots: its execution starts 2 s and 4 s after the host's, enters AcquireSlot 1 s later, holds the slot 3 s and 5 s after that.
    vm('a', { hostStarted: 1000, started: 3000, entered: 4000, granted: 7000, released: 20_000 }),
    vm('a', { hostStarted: 1000, started: 5000, entered: 6000, granted: 11_000, released: 30_000 }),
    // Its third VM came after a release: not in the first wave.
    vm('a', { hostStarted: 1000, started: 21_000, entered: 40_000, granted: 90_000, released: 95_000 }),
  ]);
  expect(parts).toEqual({ childStart: 3, beforeAcquire: 1, acquire: 4 });
});
