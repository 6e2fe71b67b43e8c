/**
 * Bench disk images: a base image like a real VM disk (~35% zero runs, ~35% compressible
 * text, ~30% random, runs of 1–64 MiB) and a changed copy (~2% of 4 KiB blocks rewritten
 * in ~200 clusters). Cached under .lifeboat/bench/ by size, seed and kind. A sparse image
 * leaves its zero runs as holes (a tool may skip them unread); a thick one writes them as
 * data, as a thick-provisioned disk or a raw copy of one has them, so every byte is read.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runContent, seededRng, type Rng } from '../local/demo/vm-image.ts';

const MiB = 1024 * 1024;
const PIECE = 8 * MiB;
const WORDS =
  'backup restore volume snapshot chunk manifest tenant invoice order customer request latency error warning info debug session cache index page row column table service deploy commit kernel systemd nginx postgres select update where from'.split(
    ' ',
  );

/** Log-like text from a seeded generator (runContent's text uses crypto.randomInt per word: too slow for GiBs). */
function fastText(bytes: number, rng: Rng): Buffer {
  const out = Buffer.allocUnsafe(bytes + 512);
  let at = 0;
  while (at < bytes) {
    const n = rng(0, 1 << 30);
    let line = `2026-11-23T${String(n % 24).padStart(2, '0')}:${String((n >> 5) % 60).padStart(2, '0')}:${String((n >> 11) % 60).padStart(2, '0')}.${n % 1000}Z host-${n % 17} pid=${1000 + (n % 3000)}`;
    const words = 5 + rng(0, 10);
    for (let i = 0; i < words; i++) line += ' ' + WORDS[rng(0, WORDS.length)];
    line += ` id=${rng(0, 1 << 30).toString(16)} ms=${rng(0, 5000)}\n`;
    at += out.write(line, at, 'latin1');
  }
  return out.subarray(0, bytes);
}

type Kind = 'zero' | 'text' | 'random';
function content(kind: Kind, bytes: number, rng: Rng): Buffer {
  return kind === 'text' ? fastText(bytes, rng) : runContent(kind, bytes);
}

export interface BenchImages {
  base: string;
  changed: string;
  sizeBytes: number;
  changedBytes: number;
  mix: Record<Kind, number>;
}

export async function benchImages(dir: string, sizeMiB: number, o: { seed?: number; thick?: boolean } = {}): Promise<BenchImages> {
  await mkdir(dir, { recursive: true });
  const seed = o.seed ?? 42;
  const name = `disk-${sizeMiB}m${seed === 42 ? '' : `-s${seed}`}${o.thick ? '-thick' : ''}`;
  const base = join(dir, `${name}-base.raw`);
  const changed = join(dir, `${name}-changed.raw`);
  const metaPath = join(dir, `${name}.json`);
  if (existsSync(metaPath) && existsSync(base) && existsSync(changed)) return JSON.parse(await readFile(metaPath, 'utf8')) as BenchImages;
  const sizeBytes = sizeMiB * MiB;
  const rng = seededRng(seed);
  const mix: Record<Kind, number> = { zero: 0, text: 0, random: 0 };
  const fh = await open(base, 'w');
  try {
    let offset = 0;
    while (offset < sizeBytes) {
      const len = Math.min(sizeBytes - offset, rng(1, 65) * MiB);
      const r = rng(0, 100);
      const kind: Kind = r < 35 ? 'zero' : r < 70 ? 'text' : 'random';
      mix[kind] += len;
      if (kind !== 'zero')
        for (let p = 0; p < len; p += PIECE) {
          const n = Math.min(PIECE, len - p);
          await fh.write(content(kind, n, rng), 0, n, offset + p);
        }
      offset += len;
    }
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
  if (o.thick) {
    // Zero runs written as data: the copy is made thick, then put in the base's place.
    execFileSync('cp', ['--sparse=never', '--', base, changed]);
    execFileSync('mv', ['--', changed, base]);
  }
  execFileSync('cp', [o.thick ? '--sparse=never' : '--sparse=always', '--', base, changed]);
  // ~2% of 4 KiB blocks, in ~200 clusters of 4 KiB-aligned blocks (a cluster spans up to 4x its size, with gaps).
  const blocks = sizeBytes / 4096;
  const target = Math.round(blocks * 0.02);
  const clusters = Math.max(1, Math.min(200, target));
  const perCluster = Math.max(1, Math.floor(target / clusters));
  const ch = await open(changed, 'r+');
  let changedBytes = 0;
  try {
    for (let c = 0; c < clusters; c++) {
      let blk = rng(0, blocks - perCluster * 4);
      for (let i = 0; i < perCluster; i++) {
        await ch.write(content(c % 4 === 3 ? 'random' : 'text', 4096, rng), 0, 4096, blk * 4096);
        changedBytes += 4096;
        blk += rng(0, 4) === 0 ? 1 + rng(1, 8) : 1;
      }
    }
  } finally {
    await ch.close();
  }
  const meta: BenchImages = { base, changed, sizeBytes, changedBytes, mix };
  await writeFile(metaPath, JSON.stringify(meta, null, 2));
  return meta;
}
