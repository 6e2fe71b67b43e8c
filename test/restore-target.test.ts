/** The restore's target: aligned runs written around the page cache (O_DIRECT), everything else through it, the bytes the same either way. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ChunkPool } from '../mover/pipeline/chunk-pool.ts';
import { RestoreTarget } from '../mover/pipeline/restore-target.ts';

const pool = new ChunkPool(1);
const dirs: string[] = [];
afterAll(async () => {
  await pool.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const KiB = 1024;

async function targetIn(name: string): Promise<{ path: string; target: RestoreTarget }> {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-target-'));
  dirs.push(dir);
  const path = join(dir, name);
  return { path, target: await RestoreTarget.open(path, 'file', `disk '${name}'`) };
}

describe('RestoreTarget', () => {
  it('writes page-aligned runs of aligned memory with O_DIRECT, and the file reads back the same bytes', async () => {
    const slot = pool.shareAligned(1024 * KiB);
    expect(slot.aligned).toBe(true);
    const data = randomBytes(1024 * KiB);
    data.copy(slot.bytes);
    const { path, target } = await targetIn('aligned.raw');
    await target.write(slot.bytes.subarray(512 * KiB, 1024 * KiB), 0, slot.aligned);
    await target.write(slot.bytes.subarray(0, 512 * KiB), 4096 * KiB, slot.aligned);
    await target.truncate(4608 * KiB);
    await target.flushed();
    await target.close();
    pool.unshare(slot);
    // The test folder is on a file system that takes O_DIRECT (ext4 here); tmpfs before Linux 6.6 does not.
    expect(target.directBytes).toBe(1024 * KiB);
    const back = await readFile(path);
    expect(back.subarray(0, 512 * KiB).equals(data.subarray(512 * KiB))).toBe(true);
    expect(back.subarray(512 * KiB, 4096 * KiB).every((b) => b === 0)).toBe(true);
    expect(back.subarray(4096 * KiB).equals(data.subarray(0, 512 * KiB))).toBe(true);
  });

  it('writes unaligned runs, and runs of ordinary memory, through the page cache', async () => {
    const aligned = pool.shareAligned(64 * KiB);
    const plain = pool.share(64 * KiB);
    const a = randomBytes(64 * KiB);
    const b = randomBytes(64 * KiB);
    a.copy(aligned.bytes);
    b.copy(plain.bytes);
    const { path, target } = await targetIn('unaligned.raw');
    await target.write(aligned.bytes.subarray(0, 3 * KiB), 512, aligned.aligned); // offset and length not whole pages
    await target.write(aligned.bytes.subarray(512, 8704), 8 * KiB, aligned.aligned); // memory not on a page boundary
    await target.write(plain.bytes, 64 * KiB, plain.aligned); // not from aligned memory at all
    await target.flushed();
    await target.close();
    pool.unshare(aligned);
    pool.unshare(plain);
    expect(target.directBytes).toBe(0);
    const back = await readFile(path);
    expect(back.length).toBe(128 * KiB);
    expect(back.subarray(512, 512 + 3 * KiB).equals(a.subarray(0, 3 * KiB))).toBe(true);
    expect(back.subarray(8 * KiB, 16 * KiB).equals(a.subarray(512, 8704))).toBe(true);
    expect(back.subarray(64 * KiB).equals(b)).toBe(true);
  });

  it('takes many writes asked for at once, and the file holds every one of them once the target is flushed', async () => {
    const slot = pool.shareAligned(8 * 256 * KiB);
    const data = randomBytes(8 * 256 * KiB);
    data.copy(slot.bytes);
    const { path, target } = await targetIn('many.raw');
    // Asked for back to front and none awaited: more than WRITES_IN_FLIGHT at once, each its own range.
    const writes = [7, 6, 5, 4, 3, 2, 1, 0].map((k) => target.write(slot.bytes.subarray(k * 256 * KiB, (k + 1) * 256 * KiB), k * 256 * KiB, slot.aligned));
    await target.flushed();
    await Promise.all(writes);
    await target.close();
    pool.unshare(slot);
    expect(target.writes).toBe(8);
    expect(target.directBytes).toBe(8 * 256 * KiB);
    expect((await readFile(path)).equals(data)).toBe(true);
  });

  it('writes through the page cache from then on when an O_DIRECT write is refused (EINVAL), the refused run too', async () => {
    // A SharedArrayBuffer of 1 MiB comes from malloc, whose large blocks start 16 bytes past
    // a page: claimed aligned, its runs are offered to O_DIRECT and refused by ext4 (EINVAL).
    const unaligned = pool.share(1024 * KiB);
    const data = randomBytes(1024 * KiB);
    data.copy(unaligned.bytes);
    const { path, target } = await targetIn('refused.raw');
    expect(target.writesDirect).toBe(true);
    await Promise.all([target.write(unaligned.bytes.subarray(0, 512 * KiB), 0, true), target.write(unaligned.bytes.subarray(512 * KiB), 512 * KiB, true)]);
    expect(target.writesDirect).toBe(false);
    await target.write(unaligned.bytes.subarray(0, 64 * KiB), 1024 * KiB, true);
    await target.flushed();
    await target.close();
    pool.unshare(unaligned);
    expect(target.directBytes).toBe(0);
    const back = await readFile(path);
    expect(back.subarray(0, 1024 * KiB).equals(data)).toBe(true);
    expect(back.subarray(1024 * KiB).equals(data.subarray(0, 64 * KiB))).toBe(true);
  });
});
