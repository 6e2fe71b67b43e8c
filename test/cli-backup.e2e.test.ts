/**
 * The operator's path on the command line against a running stack: check the
 * configuration, add a VM to the inventory, back up its policy, see the figures.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let endpointsFile: string;

const cli = (args: string[]) =>
  promisify(execFile)(process.execPath, ['cli/lifeboat.ts', ...args]).then(
    (r) => ({ code: 0, ...r }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );

beforeAll(async () => {
  t = await startTestStack({ movers: 1 });
  endpointsFile = join(t.dir, 'endpoints.json');
  await writeFile(endpointsFile, JSON.stringify(t.stack.endpoints));
}, 120_000);
afterAll(async () => t?.close());

describe('lifeboat config check', () => {
  it('summarises a valid file', async () => {
    const r = await cli(['config', 'check', 'lifeboat.config.json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('valid: 2 site(s), 3 mover group(s), 4 host(s), 2 repositories, 2 policies');
    expect(r.stdout).toContain('  group dr (site site-dr): no hosts (restore and replication only)');
  });

  it('lists every bad key and value and exits 1', async () => {
    const bad = join(t.dir, 'bad.json');
    await writeFile(bad, JSON.stringify({ sites: [{ id: 'A' }], moverGroups: [], hosts: [], repositories: [], policies: [] }));
    const r = await cli(['config', 'check', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${bad} is not a valid Lifeboat configuration:`);
    expect(r.stderr).toContain('sites[0].id = "A": must be 1–39 lowercase letters');
    expect(r.stderr).toContain('moverGroups = []: configure at least one mover group');
  });
});

describe('lifeboat vm add / backup', () => {
  it('refuses a host the configuration does not have', async () => {
    const r = await cli(['vm', 'add', 'vm-x', '--host', 'esx-77', '--source', t.dir, '--endpoints', endpointsFile]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("lifeboat: host 'esx-77' is not in the configuration");
  });

  it('adds a VM, backs up its policy and prints the figures', async () => {
    const vmDir = join(t.dir, 'vms', 'vm-cli');
    await createVmFolder(vmDir, { name: 'vm-cli', disks: [{ id: 'disk0', sizeBytes: 8 * MiB }] }, seededRng(5));
    const add = await cli(['vm', 'add', 'vm-cli', '--host', 'esx-02', '--source', vmDir, '--endpoints', endpointsFile]);
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout).toContain("VM vm-cli is on host esx-02: mover group 'site-a' backs it up.");
    await t.stack.catalog.putPolicy({ policyId: 'p-cli', vmIds: ['vm-cli'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1 });

    const r = await cli(['backup', 'p-cli', '--endpoints', endpointsFile]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Backup of policy 'p-cli': 1 VM\(s\) committed, 0 failed/);
    expect(r.stdout).toContain('  scanned     8.0 MiB');
    expect((await t.stack.catalog.latestCommitted('vm-cli'))?.status).toBe('committed');
  });

  it('exits 1 naming the policy when it does not exist', async () => {
    const r = await cli(['backup', 'no-such-policy', '--endpoints', endpointsFile]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('Backup FAILED: Catalog.PolicyNotFound');
    expect(r.stderr).toContain('no-such-policy');
  });
});
