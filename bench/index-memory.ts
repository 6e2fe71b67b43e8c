/**
 * Memory and build time of a mover's repository index (IndexCache and the RepositoryIndex
 * it builds), its listings in memory and in a local folder (as a mover keeps them,
 * repository/index-spill.ts): index objects as a PackWriter writes them (32 packs each,
 * `BENCH_INDEX_PER_PACK` chunks per pack, random ids) in a memory store, then one refresh.
 * Reports bytes per chunk kept (heap + external, after GC, what the cache and the index
 * hold), the refresh time, the time to build the index from the cached objects, and the
 * time of a lookup that finds its chunk and of one that does not.
 * Usage: node --expose-gc bench/index-memory.ts [chunks]   (default 2,000,000)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { objectKeys } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { Repository } from '../repository/open.ts';
import type { PackContents } from '../repository/packs.ts';
import type { IndexCache } from '../repository/types.ts';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
/** Heap and external memory in use, after collecting (ArrayBuffers are freed a moment after their GC). */
const used = async () => {
  for (let n = 0; n < 3; n++) {
    gc();
    await new Promise((ok) => setTimeout(ok, 50));
  }
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
};

const chunks = Number(process.argv[2] ?? 2_000_000);
const perPack = Number(process.env.BENCH_INDEX_PER_PACK ?? 16);
const packsPerIndex = 32;
const masterKey = randomBytes(32);
const store = new MemoryObjectStore();
const repository = new Repository(store, masterKey);

let made = 0;
while (made < chunks) {
  const packs: PackContents[] = [];
  for (let p = 0; p < packsPerIndex && made < chunks; p++) {
    const n = Math.min(perPack, chunks - made);
    const ids = randomBytes(32 * n);
    packs.push({
      pack: { id: randomBytes(16).toString('hex'), size: n * 530_000 + 1000 },
      chunks: Array.from({ length: n }, (_, c) => ({ id: ids.toString('hex', 32 * c, 32 * c + 32), offset: c * 530_000, length: 520_000 + c })),
    });
    made += n;
  }
  await repository.putIndexObject(packs);
}

// Kept reachable to the end (a suspended module body keeps only the variables it uses later).
(globalThis as { store?: unknown }).store = store;
/** Some ids the index lists (from the stored objects), and some it does not. */
const someIds = async (): Promise<{ present: string[]; absent: string[] }> => {
  const present: string[] = [];
  for (const [key, sealed] of [...store.objects].filter(([k]) => k.startsWith('index/')).slice(0, 20)) {
    const indexId = key.slice('index/'.length);
    for (const p of await repository.decodeIndexObject(sealed, indexId)) for (const c of p.chunks) present.push(c.id);
  }
  return { present, absent: present.map(() => randomBytes(32).toString('hex')) };
};
const { present, absent } = await someIds();

async function measure(dir: string | undefined) {
  let cache: IndexCache | undefined = new Repository(store, masterKey, dir ? { indexDir: dir } : {}).index;
  const before = await used();
  let t = performance.now();
  let index = await cache.refresh();
  const refreshMs = performance.now() - t;
  const after = await used();
  // A refresh after one more (small) index object was stored: the index is built again over every listing kept.
  const extra: PackContents[] = [
    { pack: { id: randomBytes(16).toString('hex'), size: 600_000 }, chunks: [{ id: randomBytes(32).toString('hex'), offset: 0, length: 520_000 }] },
  ];
  const { indexId: extraId } = await repository.putIndexObject(extra);
  t = performance.now();
  index = await cache.refresh();
  const rebuildMs = performance.now() - t;
  store.objects.delete(objectKeys.index(extraId));
  if (index.size !== chunks + 1) throw new Error(`index lists ${index.size} chunks, expected ${chunks + 1}`);
  /** Microseconds per lookup, the best of 5 rounds over `ids` (a shared machine stalls a round now and then). */
  const perLookup = (ids: string[]) => {
    let best = Number.POSITIVE_INFINITY;
    for (let round = 0; round < 5; round++) {
      const t0 = performance.now();
      for (const id of ids) index.get(id);
      best = Math.min(best, (performance.now() - t0) / ids.length);
    }
    return Math.round(best * 1e6) / 1e3;
  };
  const hitMicros = perLookup(present);
  const missMicros = perLookup(absent);
  // And what dropping them frees: the same figure, measured the other way.
  const objects = index.objects;
  const held = await used();
  cache = undefined;
  (index as unknown) = undefined;
  const freed = held - (await used());
  console.log(
    JSON.stringify({
      listings: dir ? 'in a local folder' : 'in memory',
      chunks,
      chunksPerPack: perPack,
      objects,
      bytesPerChunk: Math.round(((after - before) / chunks) * 10) / 10,
      bytesPerChunkFreed: Math.round((freed / chunks) * 10) / 10,
      refreshMs: Math.round(refreshMs),
      rebuildMs: Math.round(rebuildMs),
      hitMicros,
      missMicros,
    }),
  );
}

await measure(undefined);
const dir = await mkdtemp(join(tmpdir(), 'lifeboat-index-memory-'));
try {
  await measure(dir);
} finally {
  await rm(dir, { recursive: true, force: true });
}
