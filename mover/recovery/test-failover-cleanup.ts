/**
 * What a test failover makes on the DR host, and its removal. Every domain and network of
 * run R is named `lbtf-<key of R>[-…]` and its overlays live in `<workDir>/test-failovers/<key>/`
 * (contracts/dr.ts `testRunKey`), so the cleanup touches nothing without the key: after a
 * success, in a Catch after a failure, and again by hand, with the same result. The sweep
 * at the start of every test failover, and hourly from the Discover workflow on every DR
 * mover group (all the libvirt hosts it serves), removes what a run whose cleanup never ran
 * (its mover died, the cleanup failed) left behind: the runs whose folder is older than any
 * TestFailover execution can be (the workflow's 24 h timeout, and an hour).
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TEST_FAILOVER_PREFIX, testRunKey } from '../../contracts/dr.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { removeDomain } from './define-domain.ts';

/** Age past which a test failover's folder belongs to an execution no longer running: the TestFailover workflow's timeout and an hour. */
export const TEST_FAILOVER_LEFTOVER_SECONDS = 25 * 3600;

const root = (workDir: string) => join(workDir, 'test-failovers');
export const testFailoverRoot = (workDir: string, runId: string) => join(root(workDir), testRunKey(runId));
export const testNetwork = (runId: string) => `${TEST_FAILOVER_PREFIX}${testRunKey(runId)}`;
export const testDomain = (runId: string, name: string) => `${TEST_FAILOVER_PREFIX}${testRunKey(runId)}-${name.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 40)}`;

export interface CleanedUp {
  domains: string[];
  networks: string[];
  folders: string[];
}

const names = (out: string) =>
  out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);

/** Removes the domains and the network of the test failover run whose key is `key` on every libvirt host of `virshes`, then its folder. */
async function cleanupKey(key: string, virshes: Virsh[], workDir: string): Promise<CleanedUp> {
  const network = `${TEST_FAILOVER_PREFIX}${key}`;
  const out: CleanedUp = { domains: [], networks: [], folders: [] };
  for (const virsh of virshes) {
    const domains = names(await virsh.run(['list', '--all', '--name'])).filter((n) => n.startsWith(`${network}-`));
    for (const name of domains) await removeDomain(virsh, name);
    const networks = names(await virsh.run(['net-list', '--all', '--name'])).filter((n) => n === network);
    for (const n of networks) {
      await virsh.run(['net-destroy', '--', n]).catch(() => {});
      await virsh.run(['net-undefine', '--', n]).catch(() => {});
    }
    out.domains.push(...domains);
    out.networks.push(...networks);
  }
  const folder = join(root(workDir), key);
  if ((await readdir(folder).catch(() => null)) !== null) out.folders.push(folder);
  // Retried: after a failure, a VM task of the run may still be writing into it as the cleanup starts.
  await rm(folder, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  return out;
}

/** Removes what test failover `runId` made on this host (see the file's comment). */
export async function cleanupTestFailover(runId: string, uri: string, d: { workDir: string; logger?: Logger | undefined }): Promise<CleanedUp> {
  const out = await cleanupKey(testRunKey(runId), [new Virsh(uri)], d.workDir);
  d.logger?.info('testfailover.cleaned', { runId, ...out });
  return out;
}

/**
 * Removes the leftovers of test failover runs other than `runId` whose folder in this
 * mover's work folder is older than `maxAgeSeconds` (their executions have ended: the
 * workflow times out before): their domains and networks on every libvirt host of `uris`
 * (the scheduled sweep names every host the DR group serves), then the folder. A run of
 * another mover's work folder, or one younger, is left alone: it may still be running.
 */
export async function sweepTestFailovers(
  runId: string,
  uris: readonly string[],
  d: { workDir: string; logger?: Logger | undefined },
  o: { maxAgeSeconds?: number; now?: number } = {},
): Promise<CleanedUp> {
  const now = o.now ?? Date.now();
  const maxAgeMs = (o.maxAgeSeconds ?? TEST_FAILOVER_LEFTOVER_SECONDS) * 1000;
  const swept: CleanedUp = { domains: [], networks: [], folders: [] };
  const virshes = [...new Set(uris)].map((u) => new Virsh(u));
  for (const key of await readdir(root(d.workDir)).catch(() => [] as string[])) {
    if (key === testRunKey(runId) || !/^[0-9a-z]{7}$/.test(key)) continue;
    const at = await stat(join(root(d.workDir), key)).catch(() => undefined);
    if (!at || now - at.mtimeMs <= maxAgeMs) continue;
    const out = await cleanupKey(key, virshes, d.workDir);
    d.logger?.info('testfailover.swept', { runId, key, ageSeconds: Math.round((now - at.mtimeMs) / 1000), ...out });
    for (const k of ['domains', 'networks', 'folders'] as const) swept[k].push(...out[k]);
  }
  return swept;
}
