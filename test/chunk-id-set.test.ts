import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ChunkIdSet } from '../repository/maintenance/chunk-id-set.ts';

describe('ChunkIdSet (GC counts ids in ~10-16 bytes each)', () => {
  it('agrees with a Set over random ids, repeats and ids whose first 32 bits are 0, across growth', () => {
    const ids = Array.from({ length: 20_000 }, (_, i) => (i % 50 === 0 ? '00000000' + randomBytes(28).toString('hex') : randomBytes(32).toString('hex')));
    const set = new ChunkIdSet();
    const naive = new Set<string>();
    for (const id of ids.slice(0, 10_000)) {
      set.add(id).add(id);
      naive.add(id);
    }
    expect(set.size).toBe(naive.size);
    for (const id of ids) expect(set.has(id)).toBe(naive.has(id));
    set.clear();
    expect(set.size).toBe(0);
    expect(set.has(ids[0]!)).toBe(false);
  });

  it('takes an id as hex or as its bytes in place, alike (an index object is read in place, a manifest gives hex)', () => {
    const set = new ChunkIdSet();
    const bytes = randomBytes(32 * 5000 + 7);
    const at = (i: number) => 7 + 32 * i;
    for (let i = 0; i < 5000; i += 2) set.addAt(bytes, at(i));
    for (let i = 1; i < 5000; i += 4) set.add(bytes.toString('hex', at(i), at(i) + 32));
    expect(set.size).toBe(2500 + 1250);
    for (let i = 0; i < 5000; i++) {
      const inSet = i % 2 === 0 || i % 4 === 1;
      expect(set.hasAt(bytes, at(i)), `id ${i} by bytes`).toBe(inSet);
      expect(set.has(bytes.toString('hex', at(i), at(i) + 32)), `id ${i} by hex`).toBe(inSet);
    }
    expect(set.has('not an id')).toBe(false);
    expect(set.add('zz'.repeat(32)).size).toBe(3750);
  });
});
