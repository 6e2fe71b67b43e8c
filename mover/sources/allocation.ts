/**
 * Where a disk image holds data: a thin disk's holes read as zeros, so a backup need not
 * read them at all (a 1 TiB thin disk with 100 GiB written is read as 100 GiB). The map
 * comes from `qemu-img map` (Debian: qemu-utils), which asks the filesystem
 * (SEEK_DATA/SEEK_HOLE) for a raw image; without qemu-img every byte is read, which is
 * always correct, only slower.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { SourceUnavailable } from '../../contracts/errors.ts';
import type { Extent } from './source.ts';

/**
 * More data extents than this and the map is not used (the disk is read whole): it would
 * cost more memory than it saves reading (each extent is ~50 bytes; 100k is ~5 MiB).
 */
export const MAX_EXTENTS = 100_000;

/** One entry of `qemu-img map --output=json` (one per line). */
interface MapEntry {
  start: number;
  length: number;
  zero?: boolean;
  data?: boolean;
}

/**
 * Reads `qemu-img map --output=json` output line by line into the extents that may hold
 * data (adjacent ones merged); undefined when there are more than `maxExtents`. Throws
 * when the map does not cover [0, sizeBytes) in order, entry after entry.
 */
export async function parseQemuImgMap(lines: AsyncIterable<string>, sizeBytes: number, what: string, maxExtents = MAX_EXTENTS): Promise<Extent[] | undefined> {
  const extents: Extent[] = [];
  let covered = 0;
  let tooMany = false;
  for await (const raw of lines) {
    const line = raw
      .trim()
      .replace(/^\[/, '')
      .replace(/[\],]+$/, '');
    if (line === '') continue;
    let e: MapEntry;
    try {
      e = JSON.parse(line) as MapEntry;
    } catch {
      throw new SourceUnavailable(`qemu-img map of ${what} printed a line that is not a map entry: '${line.slice(0, 120)}'`);
    }
    if (!Number.isSafeInteger(e.start) || !Number.isSafeInteger(e.length) || e.length <= 0 || e.start !== covered) {
      throw new SourceUnavailable(`qemu-img map of ${what}: entry ${JSON.stringify(e)} does not follow on from byte ${covered}`);
    }
    covered += e.length;
    // Known zeros (a hole, or an extent the filesystem says reads as zeros) hold no data.
    if (e.data !== true || e.zero === true || tooMany) continue;
    const last = extents[extents.length - 1];
    if (last && last.offset + last.length === e.start) last.length += e.length;
    else if (extents.length === maxExtents) tooMany = true;
    else extents.push({ offset: e.start, length: e.length });
  }
  if (covered < sizeBytes) throw new SourceUnavailable(`qemu-img map of ${what} covers ${covered} of its ${sizeBytes} bytes`);
  return tooMany ? undefined : extents;
}

/**
 * The data extents of the raw image at `path` (a frozen snapshot: it must not change while
 * it is read), by `qemu-img map` (`-U`: it takes no lock, so an image a VM has open is
 * mapped too); undefined when `qemuImg` is not installed, or the map has more than
 * MAX_EXTENTS extents.
 */
export async function rawImageExtents(path: string, sizeBytes: number, qemuImg = 'qemu-img'): Promise<Extent[] | undefined> {
  const child = spawn(qemuImg, ['map', '--output=json', '-f', 'raw', '-U', '--', path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<{ code: number | null; missing: boolean }>((resolve) => {
    child.once('error', (err: NodeJS.ErrnoException) => resolve({ code: null, missing: err.code === 'ENOENT' }));
    child.once('close', (code) => resolve({ code, missing: false }));
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
  let parsed: Extent[] | undefined;
  let failure: unknown;
  try {
    parsed = await parseQemuImgMap(createInterface({ input: child.stdout, crlfDelay: Infinity }), sizeBytes, path);
  } catch (err) {
    failure = err;
    child.kill();
  }
  const { code, missing } = await exited;
  if (missing) return undefined;
  if (code !== 0 && code !== null) throw new SourceUnavailable(`qemu-img map of ${path} failed (exit ${code}): ${stderr.trim() || 'no message'}`);
  if (failure) throw failure;
  return parsed;
}
