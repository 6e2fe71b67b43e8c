/**
 * Demo VM disks with content like a real VM's: runs of zeros (unallocated space), of
 * compressible text (logs, configs, code) and of random bytes (compressed or encrypted
 * files), in runs of 1–8 MiB, written without holding more than one run in memory.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const MiB = 1024 * 1024;

/** A small seeded generator (mulberry32): the same seed gives the same disk layout. */
export type Rng = (min: number, max: number) => number;
export function seededRng(seed = randomInt(2 ** 31)): Rng {
  let a = seed >>> 0;
  return (min, max) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return min + Math.floor(r * (max - min));
  };
}
const WORDS =
  'backup restore volume snapshot chunk manifest tenant invoice order customer request latency error warning info debug session cache index page row column table service deploy commit'.split(
    ' ',
  );

function textBlock(bytes: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  let n = randomInt(1e6);
  while (size < bytes) {
    const words = Array.from({ length: 6 + (n % 9) }, () => WORDS[randomInt(WORDS.length)]).join(' ');
    const line = `2026-11-23T10:${String(n % 60).padStart(2, '0')}:${String((n * 7) % 60).padStart(2, '0')}Z host-${n % 17} pid=${1000 + (n % 300)} ${words} id=${n.toString(16)}\n`;
    lines.push(line);
    size += line.length;
    n++;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

export type RunKind = 'zero' | 'text' | 'random';

/** Content of one run. */
export function runContent(kind: RunKind, bytes: number): Buffer {
  if (kind === 'zero') return Buffer.alloc(bytes);
  if (kind === 'text') return textBlock(bytes);
  return randomBytes(bytes);
}

function pickKind(rng: Rng): RunKind {
  const r = rng(0, 100);
  return r < 35 ? 'zero' : r < 70 ? 'text' : 'random';
}

/** Writes a raw disk image of `sizeBytes` with mixed runs; zero runs stay holes. */
export async function writeDiskImage(path: string, sizeBytes: number, rng: Rng = seededRng()): Promise<void> {
  const fh = await open(path, 'w');
  try {
    let offset = 0;
    while (offset < sizeBytes) {
      const len = Math.min(sizeBytes - offset, rng(1, 9) * MiB);
      const kind = pickKind(rng);
      if (kind !== 'zero') await fh.write(runContent(kind, len), 0, len, offset);
      offset += len;
    }
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
}

/**
 * Rewrites about `fraction` of a disk in a few extents of 4 KiB-aligned blocks, as a
 * guest writing files would: mostly text-like data, a quarter random. Returns bytes changed.
 */
export async function changeDisk(path: string, sizeBytes: number, fraction: number, extents = 4, rng: Rng = seededRng()): Promise<number> {
  const total = Math.floor((sizeBytes * fraction) / 4096) * 4096;
  const per = Math.floor(total / extents / 4096) * 4096;
  const fh = await open(path, 'r+');
  try {
    for (let i = 0; i < extents; i++) {
      const at = rng(0, Math.floor((sizeBytes - per) / 4096)) * 4096;
      await fh.write(runContent(i % 4 === 3 ? 'random' : 'text', per), 0, per, at);
    }
  } finally {
    await fh.close();
  }
  return per * extents;
}

export interface DemoVmSpec {
  name: string;
  disks: { id: string; sizeBytes: number }[];
}

/** Creates a VM folder (vm.json + raw disks) for the folder driver. */
export async function createVmFolder(dir: string, spec: DemoVmSpec, rng: Rng = seededRng()): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const d of spec.disks) await writeDiskImage(join(dir, `${d.id}.raw`), d.sizeBytes, rng);
  const config = {
    name: spec.name,
    cpus: 2,
    memoryMiB: 4096,
    firmware: 'uefi',
    disks: spec.disks.map((d) => ({ id: d.id, file: `${d.id}.raw`, bus: 'virtio' })),
  };
  await writeFile(join(dir, 'vm.json'), JSON.stringify(config, null, 2));
}
