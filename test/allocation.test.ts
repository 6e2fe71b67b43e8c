/**
 * Mapping a disk image's holes: the parser of `qemu-img map` output, the extent lookup,
 * and the real qemu-img on real sparse files through the folder driver (.ci/run installs
 * qemu-utils; without it those cases are skipped and every byte is read).
 */
import { Repository } from '../repository/open.ts';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { deriveKeys } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDisk } from '../mover/pipeline/restore-disk.ts';
import { parseQemuImgMap, rawImageExtents } from '../mover/sources/allocation.ts';
import { holdsData } from '../mover/sources/source.ts';
import { FolderDriver } from '../mover/sources/folder.ts';

const MiB = 1024 * 1024;
const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const tempDir = async () => {
  const d = await mkdtemp(join(tmpdir(), 'lifeboat-alloc-'));
  dirs.push(d);
  return d;
};
async function* lines(text: string) {
  yield* text.split('\n');
}
const entry = (start: number, length: number, data: boolean, zero = !data) =>
  `{ "start": ${start}, "length": ${length}, "depth": 0, "present": true, "zero": ${zero}, "data": ${data}, "offset": ${start}}`;
const mapOf = (...entries: string[]) => `[${entries.join(',\n')}]\n`;

describe('qemu-img map output', () => {
  it('keeps the data extents, merging neighbours; holes and known-zero extents hold no data', async () => {
    const text = mapOf(entry(0, 4096, true), entry(4096, 8192, true), entry(12288, 4096, false), entry(16384, 4096, true, true), entry(20480, 4096, true));
    expect(await parseQemuImgMap(lines(text), 24576, 'x')).toEqual([
      { offset: 0, length: 12288 },
      { offset: 20480, length: 4096 },
    ]);
    expect(await parseQemuImgMap(lines(mapOf(entry(0, 1 << 30, false))), 1 << 30, 'x')).toEqual([]);
  });

  it('refuses a map with a gap, an overlap, a bad line or too little coverage, naming the image', async () => {
    await expect(parseQemuImgMap(lines(mapOf(entry(0, 4096, true), entry(8192, 4096, true))), 12288, 'disk0.raw')).rejects.toThrow(
      /qemu-img map of disk0.raw: entry .* does not follow on from byte 4096/,
    );
    await expect(parseQemuImgMap(lines(mapOf(entry(0, 4096, true), entry(2048, 4096, true))), 6144, 'disk0.raw')).rejects.toThrow(
      /does not follow on from byte 4096/,
    );
    await expect(parseQemuImgMap(lines('[{ "start": 0,\n'), 4096, 'disk0.raw')).rejects.toThrow(
      'qemu-img map of disk0.raw printed a line that is not a map entry: \'{ "start": 0\'',
    );
    await expect(parseQemuImgMap(lines(mapOf(entry(0, 4096, true))), 8192, 'disk0.raw')).rejects.toThrow(
      'qemu-img map of disk0.raw covers 4096 of its 8192 bytes',
    );
  });

  it('gives up the map (undefined: read every byte) past the most extents it keeps', async () => {
    const entries = Array.from({ length: 10 }, (_, i) => entry(i * 4096, 4096, i % 2 === 0));
    expect(await parseQemuImgMap(lines(mapOf(...entries)), 40960, 'x', 5)).toHaveLength(5);
    expect(await parseQemuImgMap(lines(mapOf(...entries)), 40960, 'x', 4)).toBeUndefined();
  });
});

describe('holdsData', () => {
  const extents = [
    { offset: 100, length: 50 },
    { offset: 1000, length: 1 },
  ];
  it.each([
    [0, 100, false],
    [0, 101, true],
    [149, 1, true],
    [150, 850, false],
    [150, 851, true],
    [1001, 5000, false],
    [0, 5000, true],
  ])('[%i, +%i) holds data: %s', (offset, length, expected) => {
    expect(holdsData(extents, offset, length)).toBe(expected);
  });
  it('is false everywhere on a disk with no extents', () => expect(holdsData([], 0, 1 << 30)).toBe(false));
});

describe.skipIf(!hasQemuImg)('the real qemu-img on sparse files (install qemu-utils to run these)', () => {
  it('maps the data of a sparse raw image, and the folder driver backs up only that, restoring it identical', async () => {
    const dir = await tempDir();
    const image = join(dir, 'disk0.raw');
    const size = 64 * MiB;
    const data = Buffer.alloc(size);
    randomBytes(MiB).copy(data, 3 * MiB);
    randomBytes(4096).copy(data, 40 * MiB);
    const fh = await open(image, 'w');
    await fh.write(data, 3 * MiB, MiB, 3 * MiB);
    await fh.write(data, 40 * MiB, 4096, 40 * MiB);
    await fh.truncate(size);
    await fh.close();
    const extents = await rawImageExtents(image, size);
    expect(extents).toBeDefined();
    // The filesystem may round to its blocks; every written byte is covered, and most of the disk is not.
    for (const [offset, length] of [
      [3 * MiB, MiB],
      [40 * MiB, 4096],
    ] as const)
      expect(extents!.some((e) => e.offset <= offset && e.offset + e.length >= offset + length)).toBe(true);
    expect(extents!.reduce((n, e) => n + e.length, 0)).toBeLessThan(8 * MiB);

    await writeFile(join(dir, 'vm.json'), JSON.stringify({ name: 'thin', disks: [{ id: 'disk0', file: 'disk0.raw' }] }));
    const driver = new FolderDriver();
    const snap = await driver.snapshot({ source: dir, backupId: 'b1' });
    const reader = await driver.openDisk(snap.disks[0]!);
    const store = new MemoryObjectStore();
    const keys = deriveKeys(randomBytes(32));
    const r = await backupDisk({ repository: new Repository(store, keys), reader, disk: snap.disks[0]!, backupId: 'b1', chunkSize: MiB });
    await reader.close();
    await driver.release({ source: dir }, snap);
    expect(r.stats.bytesUnallocated).toBeGreaterThanOrEqual(size - 3 * MiB);
    expect(r.stats.uploadedChunks).toBe(2);
    const target = join(await tempDir(), 'restored.raw');
    await restoreDisk({ repository: new Repository(store, keys), backupId: 'b1', diskId: 'disk0', target });
    expect((await readFile(target)).equals(data)).toBe(true);
  });

  it('fails naming the image and what qemu-img said when it cannot map it', async () => {
    const dir = await tempDir();
    await expect(rawImageExtents(join(dir, 'missing.raw'), 4096)).rejects.toThrow(/qemu-img map of .*missing\.raw failed \(exit 1\): .*No such file/);
  });
});

describe('without qemu-img', () => {
  it('maps nothing (every byte is read), and a driver told not to map never asks', async () => {
    const dir = await tempDir();
    const image = join(dir, 'disk0.raw');
    await writeFile(image, Buffer.alloc(4096));
    expect(await rawImageExtents(image, 4096, join(dir, 'no-such-qemu-img'))).toBeUndefined();
    const reader = await new FolderDriver({ qemuImg: false }).openDisk({ diskId: 'disk0', path: image, sizeBytes: 4096 });
    expect(await reader.allocated?.()).toBeUndefined();
    await reader.close();
  });
});
