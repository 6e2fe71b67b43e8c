/** RecentIds: the last `limit` distinct ids, the oldest forgotten first, in constant time per id. */
import { describe, expect, it } from 'vitest';
import { RecentIds } from '../repository/manifest/recent.ts';
import { prng } from './helpers/prng.ts';

/** The plain model: a list of the remembered ids, oldest first. */
function model(limit: number) {
  const ids: string[] = [];
  return (id: string) => {
    if (ids.includes(id)) return false;
    ids.push(id);
    if (ids.length > limit) ids.shift();
    return true;
  };
}

describe('RecentIds', () => {
  it('answers fresh once per id while remembered, and again once the id was forgotten', () => {
    const r = new RecentIds(2);
    expect([r.fresh('a'), r.fresh('a'), r.fresh('b'), r.fresh('c'), r.fresh('b'), r.fresh('a')]).toEqual([true, false, true, true, false, true]);
  });

  it('agrees with a list of the last distinct ids on random streams with many repeats', () => {
    for (const [seed, limit] of [
      [1, 1],
      [2, 3],
      [3, 17],
      [4, 64],
    ] as const) {
      const random = prng(seed);
      const r = new RecentIds(limit);
      const m = model(limit);
      for (let i = 0; i < 5_000; i++) {
        const id = `c${random(limit * 3)}`;
        expect(r.fresh(id), `seed ${seed}, limit ${limit}, step ${i}, id ${id}`).toBe(m(id));
      }
    }
  });

  it('refuses a limit below 1', () => {
    expect(() => new RecentIds(0)).toThrow(/RecentIds limit 0/);
  });
});
