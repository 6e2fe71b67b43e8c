/**
 * What a test failover makes on the DR host, and its removal. Every domain and network of
 * run R is named `lbtf-<key of R>[-…]` and its overlays live in
 * `<replicaDir>/.test-failovers/<key>/` (contracts/dr.ts `testRunKey`), so the cleanup
 * touches nothing without the key: after a success, in a Catch after a failure, and again
 * by hand, with the same result. The sweep at the start of every test failover, and hourly
 * from the Discover workflow on every DR mover group (all the libvirt hosts it serves),
 * removes what a run whose cleanup never ran (its mover died, the cleanup failed) left
 * behind: the runs whose folder is older than any TestFailover execution can be (the
 * workflow's 24 h timeout, and an hour).
 *
 * The folders are in the replica folder, not in a mover's work folder: the overlays are
 * backed by the replica's layers and booted by the DR site's libvirt host, so they belong on
 * the storage every mover of the DR group and that host already share. Whichever mover of
 * the group runs a sweep then sees every run's folder. Runs of before lived in the mover's
 * `<workDir>/test-failovers/`: that folder is swept too.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TEST_FAILOVER_PREFIX, testRunKey } from '../../contracts/dr.ts';
import { Virsh } from '../sources/libvirt/virsh.ts';
import type { Logger } from '../worker.ts';
import { removeDomain } from './define-domain.ts';

/** Age past which a test failover's folder belongs to an execution no longer running: the TestFailover workflow's timeout and an hour. */
export const TEST_FAILOVER_LEFTOVER_SECONDS = 25 * 3600;

/** The folder of test failover runs' folders in a replica folder. */
export const TEST_FAILOVERS = '.test-failovers';
export const testFailoverRoot = (replicaDir: string, runId: string) => join(replicaDir, TEST_FAILOVERS, testRunKey(runId));

/** The folders that hold test failover runs' folders: each replica folder's, and the mover's own of before (see the file's comment). */
export function testFailoverRoots(workDir: string, replicaDirs: readonly string[]): string[] {
  return [...new Set([join(workDir, 'test-failovers'), ...replicaDirs.map((r) => join(r, TEST_FAILOVERS))])];
}
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

/** Removes the domains and the network of the test failover run whose key is `key` on every libvirt host of `virshes`, then its folder in each of `roots`. */
async function cleanupKey(key: string, virshes: Virsh[], roots: readonly string[]): Promise<CleanedUp> {
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
  for (const root of roots) {
    const folder = join(root, key);
    if ((await readdir(folder).catch(() => null)) !== null) out.folders.push(folder);
    // Retried: after a failure, a VM task of the run may still be writing into it as the cleanup starts.
    await rm(folder, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
  return out;
}

/** Removes what test failover `runId` made on this host (see the file's comment). */
export async function cleanupTestFailover(runId: string, uri: string, d: { roots: readonly string[]; logger?: Logger | undefined }): Promise<CleanedUp> {
  const out = await cleanupKey(testRunKey(runId), [new Virsh(uri)], d.roots);
  d.logger?.info('testfailover.cleaned', { runId, ...out });
  return out;
}

/**
 * Removes the leftovers of test failover runs other than `runId` whose folder in one of
 * `roots` (testFailoverRoots) is older than `maxAgeSeconds` (their executions have ended: the
 * workflow times out before): their domains and networks on every libvirt host of `uris`
 * (the scheduled sweep names every host the DR group serves), then the folder. A younger
 * run is left alone: it may still be running.
 */
export async function sweepTestFailovers(
  runId: string,
  uris: readonly string[],
  d: { roots: readonly string[]; logger?: Logger | undefined },
  o: { maxAgeSeconds?: number; now?: number } = {},
): Promise<CleanedUp> {
  const now = o.now ?? Date.now();
  const maxAgeMs = (o.maxAgeSeconds ?? TEST_FAILOVER_LEFTOVER_SECONDS) * 1000;
  const swept: CleanedUp = { domains: [], networks: [], folders: [] };
  const virshes = [...new Set(uris)].map((u) => new Virsh(u));
  const seen = new Set<string>();
  for (const root of d.roots)
    for (const key of await readdir(root).catch(() => [] as string[])) {
      if (seen.has(key) || key === testRunKey(runId) || !/^[0-9a-z]{7}$/.test(key)) continue;
      const at = await stat(join(root, key)).catch(() => undefined);
      if (!at || now - at.mtimeMs <= maxAgeMs) continue;
      seen.add(key);
      const out = await cleanupKey(key, virshes, d.roots);
      d.logger?.info('testfailover.swept', { runId, key, ageSeconds: Math.round((now - at.mtimeMs) / 1000), ...out });
      for (const k of ['domains', 'networks', 'folders'] as const) swept[k].push(...out[k]);
    }
  return swept;
}
