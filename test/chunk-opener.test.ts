/** The restore's chunk opener: chunks opened on a real worker and on this thread, each checked and placed. */
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { chunkId, deriveKeys, seal } from '../repository/format.ts';
import { ChunkOpener } from '../mover/pipeline/chunk-opener.ts';
import { ChunkPool } from '../mover/pipeline/chunk-pool.ts';

const keys = deriveKeys(randomBytes(32));
const pool = new ChunkPool(1);
afterAll(() => pool.close());

const CHUNK = 64 * 1024;
/** `n` distinct compressible chunks, sealed back to back in one shared slot (a downloaded run of a pack). */
async function sealedRun(n: number) {
  const plains = Array.from({ length: n }, (_, i) => Buffer.from(`chunk ${i} of the run: some log text\n`.repeat(CHUNK)).subarray(0, CHUNK));
  const ids = plains.map((p) => chunkId(keys, p));
  const sealed = await Promise.all(plains.map((p, i) => seal(keys, p, ids[i]!)));
  const body = pool.share(sealed.reduce((s, b) => s + b.length, 0));
  const at: number[] = [];
  let offset = 0;
  for (const s of sealed) {
    at.push(offset);
    s.copy(body.bytes, offset);
    offset += s.length;
  }
  const into = pool.share(n * CHUNK);
  return { plains, ids, sealed, body, at, into };
}

describe('ChunkOpener', () => {
  it('opens chunks on the worker and on this thread, keeping each worker at most its queue deep, and places each beside its neighbours', async () => {
    const r = await sealedRun(16);
    const counted = { here: 0, worker: 0, deepest: 0 };
    const openHere = pool.openHere.bind(pool);
    const openSlot = pool.openSlot.bind(pool);
    pool.openHere = (...a) => (counted.here++, openHere(...a));
    pool.openSlot = (...a) => {
      counted.worker++;
      const p = openSlot(...a);
      counted.deepest = Math.max(counted.deepest, pool.backlog);
      return p;
    };
    try {
      const opener = new ChunkOpener(pool, keys, 2);
      const opened = await Promise.all(
        r.ids.map((id, i) =>
          opener.open({ body: r.body, bodyOffset: r.at[i]!, bodyLength: r.sealed[i]!.length, id, length: CHUNK, into: { slot: r.into, offset: i * CHUNK } }),
        ),
      );
      expect(opened.every((o) => o.ok)).toBe(true);
      expect(r.into.bytes.equals(Buffer.concat(r.plains))).toBe(true);
      expect(counted.here + counted.worker).toBe(16);
      expect(counted.here).toBeGreaterThan(0);
      expect(counted.worker).toBeGreaterThan(0);
      expect(counted.deepest).toBeLessThanOrEqual(2);
    } finally {
      pool.openHere = openHere;
      pool.openSlot = openSlot;
      pool.unshare(r.body);
      pool.unshare(r.into);
    }
  });

  it('fails only the damaged chunk and reports a chunk of another id as a mismatch, wherever each is opened', async () => {
    const r = await sealedRun(8);
    try {
      r.body.bytes[r.at[5]! + 40]! ^= 1; // damaged: fails authentication
      const opener = new ChunkOpener(pool, keys, 1);
      const outcomes = await Promise.allSettled(
        r.ids.map((id, i) =>
          opener.open({
            body: r.body,
            bodyOffset: r.at[i]!,
            bodyLength: r.sealed[i]!.length,
            id,
            length: i === 3 ? CHUNK - 1 : CHUNK, // chunk 3 is not the length the manifest says
            into: { slot: r.into, offset: i * CHUNK },
          }),
        ),
      );
      expect(outcomes[5]).toMatchObject({ status: 'rejected', reason: { name: 'Mover.Corrupt', message: expect.stringMatching(/failed authentication/) } });
      expect(outcomes[3]).toEqual({ status: 'fulfilled', value: { ok: false, reason: 'mismatch' } });
      for (const i of [0, 1, 2, 4, 6, 7]) {
        expect(outcomes[i]).toEqual({ status: 'fulfilled', value: { ok: true } });
        expect(r.into.bytes.subarray(i * CHUNK, (i + 1) * CHUNK).equals(r.plains[i]!)).toBe(true);
      }
    } finally {
      pool.unshare(r.body);
      pool.unshare(r.into);
    }
  });
});
