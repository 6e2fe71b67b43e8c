/** The warm standby replica (mover/recovery/standby.ts): only changed chunks are written; a half-done update is repaired. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKeys, objectKeys } from '../repository/format.ts';
import { Repository } from '../repository/open.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { chunkLocation } from '../repository/packs.ts';
import type { ReplicateJob } from '../contracts/recovery-jobs.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import { standbyPaths, updateStandbyDisk } from '../mover/recovery/standby.ts';
import { bufferReader } from './helpers/buffer-disk.ts';

const CHUNK = 64 * 1024;
const store = new MemoryObjectStore();
const keys = deriveKeys(randomBytes(32));
const repository = new Repository(store, keys);
let dir: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const job = (backupId: string): ReplicateJob => ({
  replicationId: 'r',
  vmId: 'vm',
  backupId,
  moverGroup: 'dr',
  source: { bucket: 's' },
  target: { bucket: 't' },
  disks: [],
  replicaDir: dir,
  recoveryPoint: '2026-11-23T00:00:00Z',
});
async function backup(backupId: string, data: Buffer) {
  const reader = bufferReader(data);
  await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: { diskId: 'disk0', path: 'mem', sizeBytes: data.length },
    backupId,
    chunkSize: CHUNK,
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-standby-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('updateStandbyDisk', () => {
  it('creates the replica, then writes only the chunks a newer backup changed, and repairs a half-done update', async () => {
    const v1 = Buffer.concat([randomBytes(4 * CHUNK), Buffer.alloc(2 * CHUNK), randomBytes(2 * CHUNK)]);
    await backup('b1', v1);
    const first = await updateStandbyDisk(job('b1'), { diskId: 'disk0' }, { repository });
    expect(first).toMatchObject({ fromBackupId: null, chunksWritten: 6, chunksUnchanged: 2, sha256: sha(v1) }); // holes stay holes
    const path = standbyPaths(dir, 'vm', 'disk0').disk;
    expect(sha(await readFile(path))).toBe(sha(v1));

    const v2 = Buffer.from(v1);
    randomBytes(10).copy(v2, 1 * CHUNK + 5);
    randomBytes(10).copy(v2, 4 * CHUNK + 5); // data into a former hole
    v2.fill(0, 7 * CHUNK); // a chunk becomes a hole
    await backup('b2', v2);
    const second = await updateStandbyDisk(job('b2'), { diskId: 'disk0' }, { repository });
    expect(second).toMatchObject({ fromBackupId: 'b1', chunksWritten: 3, bytesWritten: 3 * CHUNK, chunksUnchanged: 5, sha256: sha(v2) });

    // An update that stopped half-way: the state says `updating` and a chunk holds stray bytes.
    const v3 = Buffer.from(v2);
    randomBytes(10).copy(v3, 0);
    await backup('b3', v3);
    await writeFile(standbyPaths(dir, 'vm', 'disk0').state, JSON.stringify({ backupId: 'b3', state: 'updating' }));
    const fh = await open(path, 'r+');
    await fh.write(randomBytes(3), 0, 3, 6 * CHUNK + 1);
    await fh.close();
    const third = await updateStandbyDisk(job('b3'), { diskId: 'disk0' }, { repository });
    expect(third).toMatchObject({ fromBackupId: null, chunksWritten: 2, sha256: sha(v3) }); // chunk 0 (new) and chunk 6 (stray)
    expect(JSON.parse(await readFile(standbyPaths(dir, 'vm', 'disk0').state, 'utf8'))).toEqual({ backupId: 'b3', state: 'current' });
  });

  it('reads chunks from their pack and names the chunk, the pack bytes, the disk and the offset of a damaged one', async () => {
    const v = randomBytes(4 * CHUNK);
    await backup('b4', v);
    const m = await decodeManifest(keys, (await store.get(objectKeys.manifest('b4', 'disk0')))!, 'b4', 'disk0', store);
    expect(m.version).toBe(3);
    const id = m.chunks[2]!;
    const at = chunkLocation(m, id);
    expect(at.key).toMatch(/^packs\//);
    const pack = store.objects.get(at.key)!;
    pack[at.offset + 40]! ^= 1;
    const other = job('b4');
    other.vmId = 'vm-damaged'; // a fresh replica: every chunk is compared and read
    await expect(updateStandbyDisk(other, { diskId: 'disk0' }, { repository })).rejects.toThrow(
      `chunk ${id} in ${at.key} bytes ${at.offset}+${at.length} (disk 'disk0', offset ${2 * CHUNK}) is damaged in the DR repository`,
    );
    pack[at.offset + 40]! ^= 1;
    const ok = await updateStandbyDisk(other, { diskId: 'disk0' }, { repository });
    expect(ok).toMatchObject({ fromBackupId: null, chunksWritten: 2, chunksUnchanged: 2, sha256: sha(v) }); // chunks 0 and 1 landed before the failure
  });
});
