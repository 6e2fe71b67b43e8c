/**
 * ListDrSites, the Discover workflow's step before its sweep of test failover leftovers: every
 * DR site that keeps replica VMs (a policy's DR repository with `replicaVms`), as its DR mover
 * group, every libvirt URI that group serves (the replica VMs' URI and the catalog's
 * libvirt hosts of the group) and its replica folders, where test failovers keep their
 * overlays (any mover of the group sweeps them all: mover/recovery/test-failover-cleanup.ts). A test failover whose cleanup never ran (its mover died, the
 * cleanup failed) is then swept within the hour, not only when the next test failover starts.
 */
import { z } from 'zod';
import type { FailoverRun } from '../../contracts/dr.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

export const listDrSitesInput = z.object({ runId: z.string().min(1) }).strict();

/** One DR site to sweep: the `sweepTestFailovers` task's `run` (on the group and its first URI) and the group's other URIs. */
export interface DrSweepSite {
  moverGroup: string;
  run: FailoverRun;
  uris: string[];
}

export async function listDrSites(
  input: z.output<typeof listDrSitesInput>,
  deps: { catalog: Pick<Catalog, 'listPolicies' | 'listHosts'> },
): Promise<{ sites: DrSweepSite[] }> {
  const groups = new Map<string, Set<string>>();
  const dirs = new Map<string, Set<string>>();
  for (const p of await deps.catalog.listPolicies()) {
    const dr = p.replicateTo;
    if (!dr?.replicaVms || !dr.moverGroup) continue;
    groups.set(dr.moverGroup, (groups.get(dr.moverGroup) ?? new Set()).add(dr.replicaVms.uri));
    if (dr.standbyPath) dirs.set(dr.moverGroup, (dirs.get(dr.moverGroup) ?? new Set()).add(dr.standbyPath));
  }
  for (const h of await deps.catalog.listHosts())
    if (h.hypervisor?.driver === 'libvirt' && groups.has(h.moverGroup)) groups.get(h.moverGroup)!.add(h.hypervisor.uri);
  const sites = [...groups].map(([moverGroup, set]) => {
    const [uri, ...uris] = [...set];
    const replicaDirs = [...(dirs.get(moverGroup) ?? [])].sort();
    return { moverGroup, run: { runId: input.runId, test: true, uri: uri!, moverGroup, vms: [], replicaDirs }, uris };
  });
  return { sites: sites.sort((a, b) => a.moverGroup.localeCompare(b.moverGroup)) };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return { listDrSitesHandler: lambdaHandler('ListDrSites', listDrSitesInput, (input) => listDrSites(input, { catalog: c.catalog })) };
}

/** The Lambda entry: the handler with clients built from the environment, once per container. */
export const { listDrSitesHandler } = fromEnvironment(makeHandlers);
