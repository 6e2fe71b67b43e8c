/**
 * The merge of a replica's retired points (mover/recovery/replica-vm.ts): real qcow2 chains
 * made with qemu-img and qemu-io, merged with the mover's own `mergeRetired`.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import type { ReplicaPoint } from '../contracts/dr.ts';
import { mergeRetired, readReplicaState, replicaPaths, type ReplicaState } from '../mover/recovery/replica-vm.ts';

const run = promisify(execFile);
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** The disk a qcow2 image reads as (its whole backing chain), hashed. */
async function reads(image: string, dir: string): Promise<string> {
  const raw = join(dir, 'read.raw');
  await run('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
  const h = createHash('sha256')
    .update(await readFile(raw))
    .digest('hex');
  await rm(raw);
  return h;
}

const backingOf = async (image: string) =>
  (JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', image])).stdout) as { 'backing-filename'?: string })['backing-filename'];

describe.skipIf(!existsSync('/usr/bin/qemu-img') || !existsSync('/usr/bin/qemu-io'))("merging a replica's retired points", () => {
  it('folds the retired layers into the oldest in one commit; every listed point and the active disk read as before, the layers between go', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lbmerge-'));
    dirs.push(dir);
    const paths = replicaPaths(dir, 'vm-1');
    await mkdir(paths.layers, { recursive: true });
    await mkdir(paths.active, { recursive: true });
    // Seven points, each writing its own pattern; some overlap the ones below (the newest write wins).
    const writes = ['0 1M', '512k 512k', '1M 512k', '1536k 512k', '0 256k', '2M 512k', '3M 64k'];
    const points: ReplicaPoint[] = [];
    for (const [i, at] of writes.entries()) {
      const layer = join(paths.layers, `vda-${String(i + 1).padStart(4, '0')}-b${i + 1}.qcow2`);
      const below = points.at(-1)?.layers.vda;
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', ...(below ? ['-b', below, '-F', 'qcow2'] : []), layer, '4M']);
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${i + 1} ${at}`, layer]);
      points.push({ backupId: `b${i + 1}`, recoveryPoint: `2026-12-0${i + 1}T00:00:00.000Z`, createdAt: '2026-12-07T00:00:00.000Z', layers: { vda: layer } });
    }
    const active = join(paths.active, 'vda.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', points[6]!.layers.vda!, '-F', 'qcow2', active]);
    const state: ReplicaState = {
      vmId: 'vm-1',
      domain: 'vm-1-replica',
      uuid: 'u',
      sourceXml: '<domain/>',
      networkMap: {},
      points: points.slice(5),
      retired: points.slice(0, 5),
    };
    const before = { b6: await reads(points[5]!.layers.vda!, dir), b7: await reads(points[6]!.layers.vda!, dir), active: await reads(active, dir) };

    const merged = await mergeRetired(dir, state);

    expect(merged.points).toEqual(state.points);
    expect(merged.retired).toEqual([{ ...points[4], layers: { vda: points[0]!.layers.vda } }]);
    expect(await readReplicaState(dir, 'vm-1')).toEqual(merged);
    expect(await backingOf(points[5]!.layers.vda!)).toBe(points[0]!.layers.vda);
    for (const p of points.slice(1, 5)) expect(existsSync(p.layers.vda!), p.backupId).toBe(false);
    expect({ b6: await reads(points[5]!.layers.vda!, dir), b7: await reads(points[6]!.layers.vda!, dir), active: await reads(active, dir) }).toEqual(before);
    // The oldest layer now holds the newest retired point's disk: b5's writes over b1's.
    const { stdout } = await run('qemu-io', [
      '-f',
      'qcow2',
      '-r',
      '-c',
      'read -P 5 0 256k',
      '-c',
      'read -P 2 768k 256k',
      '-c',
      'read -P 4 1536k 512k',
      points[0]!.layers.vda!,
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
  }, 120_000);
});
