/**
 * The instant recovery's move (mover/recovery/block-copy.ts) against a stand-in for virsh:
 * the edge cases of watching a libvirt copy job that a real guest makes slow to reach
 * (test/instant.e2e.test.ts runs the real thing): a copy slower than the guest's writes
 * fails naming disk, target and cap and cancels the job; a job already pivoted (its mover
 * died after the pivot) is done; a job in step is pivoted; a stopped task leaves the job
 * running for the resumed task.
 */
import { describe, expect, it } from 'vitest';
import { CopyStalled, StallWatch, watchCopy } from '../mover/recovery/block-copy.ts';
import type { Virsh } from '../mover/sources/libvirt/virsh.ts';

const MiB = 1024 * 1024;

/** A virsh whose block job reports `jobs` in turn (the last one repeating; null: no job). */
function fakeVirsh(jobs: ({ cur: number; end: number } | null)[], source = '/overlay.qcow2') {
  const calls: string[][] = [];
  let i = 0;
  const virsh = {
    uri: 'test:///fake',
    run: async (args: string[]) => {
      calls.push(args);
      if (args[0] === 'blockjob' && args.includes('--info')) {
        const j = jobs[Math.min(i++, jobs.length - 1)];
        return j ? ` type=Block Copy\n bandwidth=0\n cur=${j.cur}\n end=${j.end}\n` : '';
      }
      if (args[0] === 'domblklist') return ` Target   Source\n------------------------\n vda      ${source}\n`;
      return '';
    },
  } as unknown as Virsh;
  return { virsh, calls };
}

describe('StallWatch', () => {
  it('sees progress while the remaining bytes reach new lows, and a stall once they have not for the window', () => {
    const w = new StallWatch(1000);
    expect(w.sample(100, 0)).toBeUndefined();
    expect(w.sample(90, 500)).toBeUndefined();
    expect(w.sample(95, 1200)).toBeUndefined(); // up again, but 700 ms since the low
    expect(w.sample(90, 1499)).toBeUndefined();
    expect(w.sample(92, 1500)).toBe(1000);
    expect(w.lowest).toBe(90);
    expect(w.sample(10, 1600)).toBeUndefined();
  });
});

describe('watchCopy', () => {
  it('fails a copy whose remaining bytes stop shrinking, naming disk, target and cap, and cancels the job', async () => {
    // The guest dirties as much as the capped copy copies: 8 MiB to go, pass after pass.
    const { virsh, calls } = fakeVirsh([
      { cur: 0, end: 16 * MiB },
      { cur: 8 * MiB, end: 16 * MiB },
      { cur: 16 * MiB, end: 24 * MiB },
      { cur: 24 * MiB, end: 33 * MiB },
      { cur: 33 * MiB, end: 41 * MiB },
    ]);
    const err = await watchCopy(virsh, 'dom', 'vda', '/target/vda.qcow2', { format: 'qcow2', bandwidthMiBs: 0.5, stallSeconds: 0.05, pollMs: 5 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CopyStalled);
    expect((err as Error).message).toMatch(
      /the move of disk vda to \/target\/vda\.qcow2 makes no progress: 8\.0 MiB still to copy and no less than 8\.0 MiB for \d+ s, with the move capped at 0\.5 MiB\/s: the guest writes faster than that; resume with a higher cap \(--move-bandwidth\) or none/,
    );
    expect(calls.at(-1)).toEqual(['blockjob', '--domain', 'dom', '--path', 'vda', '--abort']);
  });

  it('is done when the job is gone and the disk already runs on the target (the pivot came before its mover died)', async () => {
    const { virsh, calls } = fakeVirsh([null], '/target/vda.qcow2');
    await watchCopy(virsh, 'dom', 'vda', '/target/vda.qcow2', { format: 'qcow2', pollMs: 5 });
    expect(calls.some((c) => c.includes('--abort') || c.includes('--pivot'))).toBe(false);
  });

  it('fails when the job is gone and the disk is not on the target (QEMU ended the mirror)', async () => {
    const { virsh } = fakeVirsh([{ cur: 1, end: 10 }, null]);
    await expect(watchCopy(virsh, 'dom', 'vda', '/target/vda.qcow2', { format: 'qcow2', pollMs: 5 })).rejects.toThrow(
      /the block copy of disk vda to \/target\/vda\.qcow2 stopped without finishing/,
    );
  });

  it('pivots once the copy is in step', async () => {
    const { virsh, calls } = fakeVirsh([
      { cur: 1, end: 10 },
      { cur: 10, end: 10 },
    ]);
    await watchCopy(virsh, 'dom', 'vda', '/target/vda.qcow2', { format: 'qcow2', pollMs: 5 });
    expect(calls.at(-1)).toEqual(['blockjob', '--domain', 'dom', '--path', 'vda', '--pivot']);
  });

  it('leaves the job running when its task is stopped, for the resumed task to take up', async () => {
    const { virsh, calls } = fakeVirsh([{ cur: 1, end: 10 }]);
    const stop = new AbortController();
    setTimeout(() => stop.abort(new Error('drain')), 30);
    await expect(watchCopy(virsh, 'dom', 'vda', '/target/vda.qcow2', { format: 'qcow2', pollMs: 5, signal: stop.signal })).rejects.toThrow(/drain/);
    expect(calls.some((c) => c.includes('--abort'))).toBe(false);
  });
});
