/** A mover's progress objects (mover/progress-reporter.ts → contracts/progress.ts): what is written, how often, and that a failed write never fails the task. */
import { describe, expect, it } from 'vitest';
import { parseProgress, progressKey, rateAndEta } from '../contracts/progress.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { ProgressReporter } from '../mover/progress-reporter.ts';

const logger = { info: () => {}, error: (event: string, f?: Record<string, unknown>) => void errors.push({ event, ...f }) };
const errors: Record<string, unknown>[] = [];
const task = { vmId: 'vm-1', backupId: 'b-1', diskId: 'disk0', segment: 2, mover: 'm-1', bytesTotal: 1000 };

describe('ProgressReporter', () => {
  it('writes at the start, at most every everyMs while bytes move, and done at the end', async () => {
    const store = new MemoryObjectStore();
    const puts: string[] = [];
    const counting = {
      put: async (key: string, body: Uint8Array) => {
        puts.push(key);
        await store.put(key, body);
      },
    };
    let clock = Date.parse('2026-12-06T10:00:00Z');
    const r = new ProgressReporter({ store: counting, logger, task, everyMs: 60_000, now: () => new Date(clock) });
    await r.start();
    for (let i = 1; i <= 50; i++) r.update(i * 10, i * 5); // within everyMs: no write
    clock += 10_000;
    await r.finish('done');
    expect(puts).toEqual(['progress/b-1/disk0.2.json', 'progress/b-1/disk0.2.json']);
    expect(progressKey(task)).toBe('progress/b-1/disk0.2.json');
    const p = parseProgress((await store.get(progressKey(task)))!)!;
    expect(p).toMatchObject({
      phase: 'done',
      bytesDone: 1000,
      bytesTotal: 1000,
      bytesStored: 250,
      segment: 2,
      mover: 'm-1',
      startedAt: '2026-12-06T10:00:00.000Z',
      updatedAt: '2026-12-06T10:00:10.000Z',
    });
    expect(rateAndEta(p)).toEqual({ bytesPerSecond: 100, etaSeconds: 0 });
  });

  it('logs a failed write and goes on; the task is not failed by it', async () => {
    const r = new ProgressReporter({
      store: {
        put: async () => {
          throw new Error('503 SlowDown');
        },
      },
      logger,
      task: { ...task, segment: undefined },
      everyMs: 0,
    });
    await r.start();
    r.update(500, 100);
    await r.finish('failed');
    expect(errors.filter((e) => e.event === 'progress.write_failed').map((e) => [e.key, e.error])).toEqual(
      Array(3).fill(['progress/b-1/disk0.json', '503 SlowDown']),
    );
  });

  it("a restore's objects are named by the restore; a change of phase is written at once, and rate and ETA are of the phase", async () => {
    const store = new MemoryObjectStore();
    let clock = Date.parse('2026-12-06T10:00:00Z');
    const restore = { operation: 'restore' as const, operationId: 'r-9', vmId: 'vm-1', backupId: 'b-1', diskId: 'disk0', mover: 'm-1', bytesTotal: 1000 };
    const r = new ProgressReporter({ store, logger, task: restore, everyMs: 60_000, now: () => new Date(clock) });
    await r.start();
    clock += 10_000;
    r.update(1000, 0, 'transfer'); // within everyMs: not written
    clock += 1_000;
    r.update(0, 0, 'rehash'); // a new phase: written at once
    clock += 4_000;
    r.update(400, 0, 'rehash'); // within everyMs again
    await r.finish('done');
    const key = progressKey(restore);
    expect(key).toBe('progress/r-9/disk0.json');
    const p = parseProgress((await store.get(key))!)!;
    expect(p).toMatchObject({
      operation: 'restore',
      operationId: 'r-9',
      backupId: 'b-1',
      phase: 'done',
      bytesDone: 1000,
      phaseStartedAt: '2026-12-06T10:00:11.000Z',
      updatedAt: '2026-12-06T10:00:15.000Z',
    });
    expect(rateAndEta({ ...p, bytesDone: 400 }).bytesPerSecond).toBe(100); // 400 bytes in the 4 s of the rehash, not in the 15 s of the task
  });

  it("takes a total learnt after the start (a verification's selected chunks)", async () => {
    const store = new MemoryObjectStore();
    const verify = { operation: 'verify' as const, operationId: 'v-1', vmId: 'vm-1', backupId: 'b-1', diskId: 'disk0', mover: 'm-1', bytesTotal: 8000 };
    const r = new ProgressReporter({ store, logger, task: verify, everyMs: 0 });
    await r.start('read');
    r.update(0, 0, 'read', 3000);
    await r.finish('done');
    expect(parseProgress((await store.get(progressKey(verify)))!)).toMatchObject({ phase: 'done', bytesDone: 3000, bytesTotal: 3000 });
  });

  it('reads nothing that is not a progress object', () => {
    expect(parseProgress(Buffer.from('{"format":"other"}'))).toBeUndefined();
    expect(parseProgress(Buffer.from('not json'))).toBeUndefined();
    expect(rateAndEta({ bytesDone: 0, bytesTotal: 10, startedAt: '2026-12-06T10:00:00Z', updatedAt: '2026-12-06T10:00:05Z' }).etaSeconds).toBeUndefined();
  });
});
