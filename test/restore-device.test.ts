/** Restoring a disk onto a device (written in place, holes written as zeros, never truncated). */
import { Repository } from '../repository/open.ts';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys } from '../repository/format.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { RecoveryRequestInvalid } from '../contracts/recovery-errors.ts';
import type { RestoreJob } from '../contracts/recovery-jobs.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { restoreDiskTask } from '../mover/recovery/restore-tasks.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));
const store = new MemoryObjectStore();
const data = Buffer.concat([randomBytes(2 * CHUNK), Buffer.alloc(3 * CHUNK), randomBytes(CHUNK + 777)]);
const job: RestoreJob = {
  restoreId: 'r',
  vmId: 'vm',
  backupId: 'b1',
  moverGroup: 'g',
  repository: { bucket: 'b' },
  target: '/dev/null',
  diskId: 'disk0',
  disks: [],
};
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-device-'));
  const reader = bufferReader(data);
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
    backupId: 'b1',
    chunkSize: CHUNK,
  });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('restoreDiskTask onto a device', () => {
  it('overwrites old contents (holes become zeros), keeps the device size, and re-hashes only the disk', async () => {
    const path = join(dir, 'device.img');
    const old = randomBytes(data.length + 5 * CHUNK); // a larger device full of old data
    await writeFile(path, old);
    const r = await restoreDiskTask(
      job,
      { diskId: 'disk0', sizeBytes: data.length, path },
      { repository: new Repository(store, keys), parallelism: 2, targetKind: 'device' },
    );
    const now = await readFile(path);
    expect(now.length).toBe(old.length);
    expect(now.subarray(0, data.length).equals(data)).toBe(true);
    expect(now.subarray(data.length).equals(old.subarray(data.length))).toBe(true);
    expect(r.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(r.chunksVerified).toBe(Math.ceil(data.length / CHUNK));
  });

  it('refuses a device smaller than the disk, naming it, before writing', async () => {
    const path = join(dir, 'small.img');
    await writeFile(path, Buffer.alloc(CHUNK));
    const p = restoreDiskTask(
      job,
      { diskId: 'disk0', sizeBytes: data.length, path },
      { repository: new Repository(store, keys), parallelism: 2, targetKind: 'device' },
    );
    await expect(p).rejects.toBeInstanceOf(RecoveryRequestInvalid);
    await expect(
      restoreDiskTask(
        job,
        { diskId: 'disk0', sizeBytes: data.length, path },
        { repository: new Repository(store, keys), parallelism: 2, targetKind: 'device' },
      ),
    ).rejects.toThrow(`restore target ${path} is smaller than the disk (${data.length} bytes)`);
    expect((await stat(path)).size).toBe(CHUNK);
  });
});
