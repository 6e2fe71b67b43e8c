/**
 * File-level restore end to end on the embedded stack: a folder-driver VM whose disk holds
 * a GPT with an ext4 partition (made from a source tree at test time) is backed up by the
 * Backup workflow (a real mover process, s3rver); then `lifeboat files ls` and `lifeboat
 * files get` run the Files workflow, whose `files` task on the mover of the VM's host reads
 * the disk straight from the repository. The listing and the extracted tree equal the
 * source; asking for a backup, disk, partition or path that is not there says which.
 */
import { execFile } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runExecution } from '../local/client.ts';
import { createVmFolder } from '../local/demo/vm-image.ts';
import { extImage, makeExtTree, missingTools, partitionedDisk, readTree } from './helpers/guest-disks.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
/** Each CLI call is a Node process and a workflow run: on a loaded shared machine one took a minute. */
const CLI_TIMEOUT = 300_000;
const missing = missingTools();
let t: TestStack;
let endpointsFile = '';
let tree: ReturnType<typeof readTree>;

const cli = (args: string[]) =>
  promisify(execFile)(process.execPath, ['cli/lifeboat.ts', ...args, '--endpoints', endpointsFile]).then(
    (r) => ({ code: 0, ...r }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );

describe.skipIf(missing.length > 0 && !process.env.CI)('lifeboat files ls / get through the Files workflow', () => {
  beforeAll(async () => {
    t = await startTestStack({ movers: 1 });
    endpointsFile = join(t.dir, 'endpoints.json');
    await writeFile(endpointsFile, JSON.stringify(t.stack.endpoints));
    const src = join(t.dir, 'guest-tree');
    makeExtTree(src, { bigMiB: 2 });
    tree = readTree(src);
    const vmDir = join(t.dir, 'vms', 'vm-f');
    await createVmFolder(vmDir, { name: 'vm-f', disks: [{ id: 'vda', sizeBytes: MiB }] });
    extImage(join(t.dir, 'part.img'), src, 56);
    await rm(join(vmDir, 'vda.raw'));
    partitionedDisk(join(vmDir, 'vda.raw'), 64, 'label: gpt\nstart=2048, size=114688, type=L\n', { 1: join(t.dir, 'part.img') });
    await rm(join(t.dir, 'part.img'));
    await t.stack.catalog.putVm({ vmId: 'vm-f', host: 'esx-01', source: vmDir });
    await t.stack.catalog.putPolicy({ policyId: 'p-f', vmIds: ['vm-f'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });
    const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-f' });
    if (d.status !== 'SUCCEEDED') throw new Error(`backup failed: ${d.error} ${d.cause}`);
  }, 600_000);
  afterAll(async () => {
    await t?.close();
  });

  it(
    'ls prints the directory as stored; --json gives every entry with its metadata',
    async () => {
      const r = await cli(['files', 'ls', 'vm-f', '/']);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/disk 'vda' partition 1 \(ext4\): \/, \d+ entries/);
      expect(r.stdout).toMatch(/^-rw------- +\d+ +\d+ +9 2024-02-29 12:34:56 secret$/m);
      expect(r.stdout).toMatch(/^lrwxrwxrwx .* link -> docs\/readme\.txt$/m);
      const j = await cli(['files', 'ls', 'vm-f:vda', '/docs', '--json', '--partition', '1']);
      const listing = JSON.parse(j.stdout) as { fs: string; entries: { name: string; type: string; size: number; mode: number }[] };
      expect(listing.fs).toBe('ext4');
      expect(listing.entries.map((e) => e.name).sort()).toEqual(
        [...tree.keys()]
          .filter((k) => /^docs\/[^/]+$/.test(k))
          .map((k) => k.slice(5))
          .sort(),
      );
      for (const e of listing.entries)
        expect({ n: e.name, type: e.type, mode: e.mode }).toEqual({
          n: e.name,
          type: tree.get(`docs/${e.name}`)!.type,
          mode: tree.get(`docs/${e.name}`)!.mode,
        });
    },
    CLI_TIMEOUT,
  );

  it(
    "get extracts the whole tree on the mover's host, equal to the source: bytes, modes, times, links, holes",
    async () => {
      const to = join(t.dir, 'restored');
      const r = await cli(['files', 'get', 'vm-f', '/', '--to', to]);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/→ .*restored\n {2}\d+ file\(s\), \d+ folder\(s\), 3 symbolic link\(s\)/);
      const got = readTree(to);
      got.delete('lost+found');
      expect([...got.keys()].sort()).toEqual([...tree.keys()].sort());
      for (const [p, w] of tree) expect({ p, ...got.get(p), blocks: 0 }).toEqual({ p, ...w, blocks: 0 });
    },
    CLI_TIMEOUT,
  );

  it(
    'names what is not there: the backup, the disk, the partition, the path',
    async () => {
      const files = async (input: Record<string, unknown>) => {
        const d = await runExecution(t.sfn, t.stack.endpoints.stateMachines['Files']!, { vmId: 'vm-f', op: 'ls', path: '/', ...input });
        return `${d.status} ${d.error ?? ''}: ${d.cause ?? ''}`;
      };
      expect(await files({ backupId: 'nope' })).toMatch(/FAILED .*VM 'vm-f' has no backup 'nope'/);
      expect(await files({ diskId: 'vdz' })).toMatch(/FAILED .*has no disk 'vdz'; it has 'vda'/);
      expect(await files({ partition: 2 })).toMatch(
        /FAILED Files\.NotFound: backup \S+ disk 'vda' partition 2: the disk has no partition 2; it has: partition 1 \(56 MiB\): ext4/,
      );
      const r = await cli(['files', 'get', 'vm-f', '/docs/missing.txt', '--to', join(t.dir, 'nothing')]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/Files\.NotFound.*\/docs\/missing\.txt does not exist on the ext4 file system/);
    },
    CLI_TIMEOUT,
  );
});
