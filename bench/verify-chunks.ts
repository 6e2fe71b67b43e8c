/**
 * Verify's work per chunk, HEADs aside: format-3 manifest pieces decoded, each batch's
 * referenced packs found, chunks counted once (RecentIds), as functions/backup/verify.ts
 * does. Pieces of 65,536 entries, 512 KiB chunks in 8 MiB packs (16 chunks a pack).
 * Usage: npx node bench/verify-chunks.ts (BENCH_PIECES, default 16: 1,048,576 chunks;
 * BENCH_ROOT, another checkout's root, to measure its code). Prints one JSON line: the CPU
 * of the verify loop alone (the pieces are built first).
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type * as PieceModule from '../repository/manifest/piece.ts';
import type * as FormatModule from '../repository/format.ts';
import type * as ReferencedModule from '../repository/referenced.ts';
import type * as RecentModule from '../repository/manifest/recent.ts';

const root = process.env.BENCH_ROOT ?? fileURLToPath(new URL('..', import.meta.url));
const { Piece, PieceBuilder, MAX_PIECE_ENTRIES } = (await import(`${root}/repository/manifest/piece.ts`)) as typeof PieceModule;
const { objectKeys } = (await import(`${root}/repository/format.ts`)) as typeof FormatModule;
const { referencedObjects } = (await import(`${root}/repository/referenced.ts`)) as typeof ReferencedModule;
const { RecentIds } = (await import(`${root}/repository/manifest/recent.ts`)) as typeof RecentModule;
const pieces = Number(process.env.BENCH_PIECES ?? 16);
const per = 16;
const built: Buffer[] = [];
for (let p = 0; p < pieces; p++) {
  const b = new PieceBuilder(p * MAX_PIECE_ENTRIES);
  const sizes: number[] = [];
  let packId = '';
  for (let i = 0; i < MAX_PIECE_ENTRIES; i++) {
    if (i % per === 0) {
      packId = randomBytes(16).toString('hex');
      sizes.push(8 * 1024 * 1024 + 1000);
    }
    b.add(randomBytes(32).toString('hex'), packId, (i % per) * 524288, 524288);
  }
  built.push(b.encode(sizes));
}
const t0 = performance.now();
const cpu0 = process.cpuUsage();
let chunks = 0,
  objects = 0;
const recent = new RecentIds();
for (const bytes of built) {
  const piece = Piece.decode(bytes, 'x');
  const batch = {
    firstChunk: piece.firstChunk,
    count: piece.count,
    packs: piece.packs,
    id: (i: number) => piece.id(i),
    location: (i: number) => {
      const w = piece.where(i);
      if (!w) return undefined;
      const pack = piece.packs[w.pack]!;
      return { pack, key: objectKeys.pack(pack.id), offset: w.offset, length: w.length };
    },
  };
  const refs = referencedObjects(batch, (id) => recent.fresh(id));
  chunks += refs.chunks;
  objects += refs.objects.length;
}
const cpu = process.cpuUsage(cpu0);
console.log(
  JSON.stringify({
    root,
    load: (await import('node:os')).loadavg()[0],
    chunks,
    objects,
    wallMs: Math.round(performance.now() - t0),
    cpuMs: Math.round((cpu.user + cpu.system) / 1000),
    nsPerChunk: Math.round(((cpu.user + cpu.system) * 1000) / chunks),
  }),
);
