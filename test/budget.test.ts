/** core/concurrency.ts Budget: units taken and given back, first come first served. */
import { describe, expect, it } from 'vitest';
import { Budget } from '../core/concurrency.ts';

describe('Budget', () => {
  it('hands out units while they last, then in the order asked, a large taker not overtaken', async () => {
    const b = new Budget(10);
    expect(await b.take(6)).toBe(6);
    const order: string[] = [];
    const large = b.take(8).then((n) => order.push(`large ${n}`));
    const small = b.take(1).then((n) => order.push(`small ${n}`));
    await new Promise((ok) => setImmediate(ok));
    expect(order).toEqual([]); // 4 free: the large one waits, and the small one behind it
    b.give(6);
    await Promise.all([large, small]);
    expect(order).toEqual(['large 8', 'small 1']);
    expect(b.available).toBe(1);
  });

  it('gives a taker asking for more than the capacity all of it, once everything is free', async () => {
    const b = new Budget(4);
    await b.take(1);
    let got = 0;
    const all = b.take(100).then((n) => (got = n));
    await new Promise((ok) => setImmediate(ok));
    expect(got).toBe(0);
    b.give(1);
    await all;
    expect(got).toBe(4);
    expect(b.available).toBe(0);
  });

  it('refuses units given back twice and bad counts', async () => {
    const b = new Budget(2);
    const n = await b.take(2);
    b.give(n);
    expect(() => b.give(n)).toThrow(/given back twice/);
    await expect(b.take(-1)).rejects.toThrow(RangeError);
    expect(() => new Budget(0)).toThrow(RangeError);
  });
});
