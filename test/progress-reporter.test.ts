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
    const counting = { put: async (key: string, body: Uint8Array) => { puts.push(key); await store.put(key, body); } };
    let clock = Date.parse('2026-12-06T10:00:00Z');
    const r = new ProgressReporter({ store: counting, logger, task, everyMs: 60_000, now: () => new Date(clock) });
    await r.start();
    for (let i = 1; i <= 50; i++) r.update(i * 10, i * 5); // within everyMs: no write
    clock += 10_000;
    await r.finish('done');
    expect(puts).toEqual(['progress/b-1/disk0.2.json', 'progress/b-1/disk0.2.json']);
    expect(progressKey(task)).toBe('progress/b-1/disk0.2.json');
    const p = parseProgress((await store.get(progressKey(task)))!)!;
    expect(p).toMatchObject({ phase: 'done', bytesDone: 1000, bytesTotal: 1000, bytesStored: 250, segment: 2, mover: 'm-1', startedAt: '2026-12-06T10:00:00.000Z', updatedAt: '2026-12-06T10:00:10.000Z' });
    expect(rateAndEta(p)).toEqual({ bytesPerSecond: 100, etaSeconds: 0 });
  });

  it('logs a failed write and goes on; the task is not failed by it', async () => {
    const r = new ProgressReporter({ store: { put: async () => { throw new Error('503 SlowDown'); } }, logger, task: { ...task, segment: undefined }, everyMs: 0 });
    await r.start();
    r.update(500, 100);
    await r.finish('failed');
    expect(errors.filter((e) => e.event === 'progress.write_failed').map((e) => [e.key, e.error])).toEqual(Array(3).fill(['progress/b-1/disk0.json', '503 SlowDown']));
  });

  it('reads nothing that is not a progress object', () => {
    expect(parseProgress(Buffer.from('{"format":"other"}'))).toBeUndefined();
    expect(parseProgress(Buffer.from('not json'))).toBeUndefined();
    expect(rateAndEta({ bytesDone: 0, bytesTotal: 10, startedAt: '2026-12-06T10:00:00Z', updatedAt: '2026-12-06T10:00:05Z' }).etaSeconds).toBeUndefined();
  });
});
