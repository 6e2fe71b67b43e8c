import { describe, expect, it } from 'vitest';
import { RecentIds } from '../mover/pipeline/backup-entries.ts';

const at = (n: number) => ({ pack: { id: `p${n}` }, offset: n, length: 1 });

describe("a backup's RecentIds (two generations)", () => {
  it('always remembers the last limit/2 distinct ids, never holds more than the limit, and answers where each was stored', () => {
    const recent = new RecentIds(1000);
    for (let i = 0; i < 10_000; i++) {
      recent.remember(`id${i}`, at(i));
      expect(recent.size).toBeLessThanOrEqual(1000);
      if (i % 97 === 0) for (let j = Math.max(0, i - 499); j <= i; j++) expect(recent.get(`id${j}`)?.offset).toBe(j);
    }
    // Long forgotten: more than the limit of newer ids came after it.
    expect(recent.get('id0')).toBeUndefined();
    expect(recent.get('id8000')).toBeUndefined();
  });

  it('keeps an id that is used again, however many others pass', () => {
    const recent = new RecentIds(1000);
    recent.remember('hot', at(-1));
    for (let i = 0; i < 20_000; i++) {
      recent.remember(`id${i}`, at(i));
      if (i % 400 === 0) {
        const seen = recent.get('hot');
        expect(seen?.offset).toBe(-1);
        recent.remember('hot', seen!);
      }
    }
    expect(recent.get('hot')?.offset).toBe(-1);
  });

  it('refuses a limit it cannot split in two generations', () => {
    expect(() => new RecentIds(1)).toThrow(/at least 2/);
  });
});
