import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ChunkIdSet } from '../repository/maintenance/chunk-id-set.ts';

describe('ChunkIdSet (GC counts ids in 8 bytes each)', () => {
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
});
